"""Each equation against hand-computed values, and each alignment variant."""

import math

import pytest
import torch

from calm_study.config import LossConfig, TrialConfig
from calm_study.models.calm.head import anchor_log_probs
from calm_study.models.calm.vae import AnchorVAE
from calm_study.models.calm.variants import ALIGN_VARIANTS
from calm_study.models.families import build_model
from calm_study.models.losses import symmetric_cross_entropy
from calm_study.tasks.base import weighted_total
from calm_study.tasks.retrieval.task import RetrievalTask
from calm_study.validate import trial_from_dict


def align_terms(align: str, out: dict, cfg: LossConfig) -> dict:
    """The registered variant's terms; none (the baseline) has none."""
    return ALIGN_VARIANTS[align].terms(out, cfg) if align != "none" else {}


def align_weights(cfg: LossConfig) -> dict:
    return ALIGN_VARIANTS[cfg.align].weights(cfg) if cfg.align != "none" else {}


S_P = torch.tensor([[0.25, 0.75]])
V_P = torch.tensor([[0.5, 0.5]])


def outputs(**extra):
    return {"s_logp": S_P.log(), "v_logp": V_P.log(), **extra}


def test_anchor_distribution_is_softmax_of_scaled_cosine():
    feats = torch.tensor([[3.0, 4.0]])  # cos with (1,0) = 0.6, with (0,2) = 0.8
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    tau = 10.0
    expected = torch.tensor([math.exp(6.0), math.exp(8.0)])
    expected = expected / expected.sum()
    assert torch.allclose(anchor_log_probs(feats, anchors, tau).exp(), expected[None], atol=1e-6)


def test_discriminative_variants_by_hand():
    cfg = LossConfig(align="kl")
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert align_terms("kl", outputs(), cfg)["align"].item() == pytest.approx(kl, abs=1e-6)
    ce = -(0.25 * math.log(0.5) + 0.75 * math.log(0.5))
    assert align_terms("ce", outputs(), cfg)["align"].item() == pytest.approx(ce, abs=1e-6)
    mse = (0.5 - 0.25) ** 2 + (0.5 - 0.75) ** 2
    assert align_terms("mse", outputs(), cfg)["align"].item() == pytest.approx(mse, abs=1e-6)
    assert align_terms("none", outputs(), cfg) == {}


def test_vae_terms_by_hand():
    # Ŝ_p = softmax([0, ln 3]) = [0.25, 0.75]; μ = [1, 0], log σ² = [0, ln 2].
    vae = {"recon_logits": torch.tensor([[0.0, math.log(3.0)]]), "mu": torch.tensor([[1.0, 0.0]]),
           "logvar": torch.tensor([[0.0, math.log(2.0)]])}
    terms = align_terms("vae", outputs(vae=vae), LossConfig(align="vae"))
    rec = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    kl = 0.5 * ((1 + 1 - 0 - 1) + (0 + 2 - math.log(2.0) - 1))
    assert terms["align_rec"].item() == pytest.approx(rec, abs=1e-6)
    assert terms["align_kl"].item() == pytest.approx(kl, abs=1e-6)


def test_vae_reparameterisation():
    torch.manual_seed(0)
    vae = AnchorVAE(num_anchors=5, latent_dim=3, encoder_hidden=(4,), decoder_hidden=(), dropout=0.0).train()
    v_p = torch.softmax(torch.randn(2, 5), dim=-1)
    noise = torch.randn(2, 3)
    out = vae(v_p, noise=noise)
    z = out["mu"] + torch.exp(0.5 * out["logvar"]) * noise
    assert torch.allclose(out["recon_logits"], vae.to_logits(vae.decoder(z)))
    eval_out = vae.eval()(v_p)  # eval: z = μ
    assert torch.allclose(eval_out["recon_logits"], vae.to_logits(vae.decoder(eval_out["mu"])))


def test_vae_parameter_count_matches_the_papers_half_million():
    """K=157, d=256, one 512-wide encoder layer: 383,901 VAE parameters (+80,384 anchor embeddings ≈ 0.46M)."""
    vae = AnchorVAE(157, 256, (512,), ())
    assert sum(p.numel() for p in vae.parameters()) == 383_901


def test_infonce_matches_manual_computation_and_clamps_the_scale(tiny_doc):
    torch.manual_seed(0)
    tiny_doc["anchors"]["count"], tiny_doc["loss"] = 0, {"align": "none", "logit_scale_max": 100.0}
    model = build_model(trial_from_dict(tiny_doc))
    text, video = torch.randn(4, 8), torch.randn(4, 8)
    t = text / text.norm(dim=-1, keepdim=True)
    v = video / video.norm(dim=-1, keepdim=True)
    for log_scale, scale in ((math.log(20.0), 20.0), (math.log(500.0), 100.0)):
        logits = scale * t @ v.t()
        rows = [-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(4)]
        cols = [-(logits[i, i] - torch.logsumexp(logits[:, i], 0)) for i in range(4)]
        manual = 0.5 * (sum(rows) / 4 + sum(cols) / 4)
        with torch.no_grad():
            model.backbone.clip.logit_scale.fill_(log_scale)
        got = symmetric_cross_entropy(model.batch_logits({"text": text, "video": video}))
        assert got.item() == pytest.approx(manual.item(), rel=1e-5)


@pytest.mark.parametrize("align", ["none", "kl", "ce", "mse", "vae"])
def test_total_is_the_weighted_sum_of_named_terms(align):
    torch.manual_seed(0)
    cfg = LossConfig(align=align, align_weight=0.7, alpha=0.3, task_weight=1.5)
    out = outputs()
    out["s_logp"] = out["s_logp"].expand(3, 2)
    out["v_logp"] = out["v_logp"].expand(3, 2)
    out["vae"] = {"recon_logits": torch.randn(3, 2), "mu": torch.randn(3, 5), "logvar": torch.randn(3, 5)}
    terms = {"task": symmetric_cross_entropy(torch.randn(3, 3)), **align_terms(align, out, cfg)}
    weights = {**RetrievalTask(TrialConfig(loss=cfg)).term_weights(), **align_weights(cfg)}
    expected = {"task": 1.5, "align": 0.7, "align_rec": 0.7, "align_kl": 0.3}
    assert {k: weights[k] for k in terms} == {k: expected[k] for k in terms}
    assert set(terms) == {"none": set(), "vae": {"align_rec", "align_kl"}}.get(align, {"align"}) | {"task"}
    total = weighted_total(terms, weights)
    assert total.item() == pytest.approx(sum(expected[k] * v.item() for k, v in terms.items()))
    with pytest.raises(KeyError, match="without a weight"):
        weighted_total({**terms, "extra": total}, weights)


@pytest.mark.parametrize("align", ["kl", "ce", "mse", "vae"])
def test_detach_target_stops_gradients_through_s_p(align):
    for detach in (False, True):
        s_logits = torch.randn(2, 3, requires_grad=True)
        v_logits = torch.randn(2, 3, requires_grad=True)
        recon = torch.randn(2, 3, requires_grad=True)
        out = {"s_logp": torch.log_softmax(s_logits, -1), "v_logp": torch.log_softmax(v_logits, -1),
               "vae": {"recon_logits": recon, "mu": torch.randn(2, 4), "logvar": torch.randn(2, 4)}}
        terms = align_terms(align, out, LossConfig(align=align, detach_target=detach))
        sum(terms.values()).backward()
        assert (s_logits.grad is None or s_logits.grad.abs().sum() == 0) == detach
