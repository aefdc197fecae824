"""X-Pool and T-MASS families: pooling against a slow oracle, leak-free pairwise scoring, the tmass_compat protocol
against a slow re-implementation of T-MASS's published indexing, padded frame slots, parameter counts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from calm_study.configio import ConfigError
from calm_study.models.families import build_model
from calm_study.models.tmass import RadiusHead
from calm_study.models.xpool import TextConditionedPool
from calm_study.tasks.retrieval.metrics import retrieval_metrics, t2v_ranks
from calm_study.tasks.retrieval.scoring import score_banks
from calm_study.validate import trial_from_dict


@torch.no_grad()
def slow_pool(pool: TextConditionedPool, text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pool(t_i, v_j) one pair at a time, one head at a time, written from the formulas (eval mode: no dropout)."""
    n_t, (n_v, n_f, d) = text.shape[0], frames.shape
    h = pool.heads
    dh = d // h
    out = torch.zeros(n_t, n_v, d)
    for i in range(n_t):
        t = F.layer_norm(text[i], (d,), pool.norm1.weight, pool.norm1.bias)
        q = pool.q_proj.weight @ t + pool.q_proj.bias
        for j in range(n_v):
            heads = []
            for head in range(h):
                sl = slice(head * dh, (head + 1) * dh)
                scores, values = [], []
                for f in range(n_f):
                    if not mask[j, f]:
                        continue
                    x = F.layer_norm(frames[j, f], (d,), pool.norm1.weight, pool.norm1.bias)
                    k = pool.k_proj.weight @ x + pool.k_proj.bias
                    v = pool.v_proj.weight @ x + pool.v_proj.bias
                    scores.append(float(k[sl] @ q[sl]) / math.sqrt(dh))
                    values.append(v[sl])
                w = torch.softmax(torch.tensor(scores), 0)
                heads.append(sum(wf * vf for wf, vf in zip(w, values)))
            a = pool.out_proj.weight @ torch.cat(heads) + pool.out_proj.bias
            a = F.layer_norm(a, (d,), pool.norm2.weight, pool.norm2.bias)
            y = a + pool.linear_proj.weight @ a + pool.linear_proj.bias
            out[i, j] = F.layer_norm(y, (d,), pool.norm3.weight, pool.norm3.bias)
    return out


@pytest.mark.parametrize("heads", [1, 4])
def test_pooling_matches_a_slow_per_pair_loop(heads):
    torch.manual_seed(0)
    pool = TextConditionedPool(16, heads=heads, dropout=0.3).eval()
    with torch.no_grad():  # away from the identity initialisation, so every weight matters
        for p in pool.parameters():
            p.add_(0.1 * torch.randn_like(p))
    text, frames = torch.randn(3, 16), torch.randn(4, 5, 16)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False  # a short video: its padding must not be attended to
    fast = pool(text, frames, mask)
    assert fast.shape == (3, 4, 16)
    assert torch.allclose(fast, slow_pool(pool, text, frames, mask), atol=1e-5)
    garbage = frames.clone()
    garbage[1, 3:] = 50.0
    assert torch.allclose(pool(text, garbage, mask)[:, 1], fast[:, 1], atol=1e-5)


def test_pooling_starts_as_identity_and_has_xpools_parameter_count():
    pool = TextConditionedPool(512)
    assert sum(p.numel() for p in pool.parameters()) == 1_316_352
    for layer in (pool.q_proj, pool.k_proj, pool.v_proj, pool.out_proj, pool.linear_proj):
        assert torch.equal(layer.weight, torch.eye(512)) and not layer.bias.any()


def family_model(tiny_doc, family, **model):
    tiny_doc["model"].update(family=family, pool_dropout=0.0, **model)
    return build_model(trial_from_dict(tiny_doc)).eval()


def banks(model, n_text=5, n_video=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = model.tokenize([f"a {c} shape number {i}" for i, c in enumerate(["red", "blue", "green", "pink",
                                                                             "grey", "cyan", "teal"][:n_text])])
    frames = torch.randn(n_video, 4, 3, 32, 32, generator=g)
    with torch.no_grad():
        return model.text_bank(tokens), model.video_bank(frames, torch.ones(n_video, 4, dtype=torch.bool))


class SpyPool(torch.nn.Module):
    """Records, for every pooled (row, video) output, the index of the text that conditioned it."""

    def __init__(self, inner, text_ids: dict):
        super().__init__()
        self.inner, self.text_ids, self.seen = inner, text_ids, set()

    def forward(self, text, frames, mask=None):
        ids = [self.text_ids[tuple(row.tolist())] for row in text]
        video_ids = [int(round(float(f[0, 0]))) for f in frames]
        self.seen |= {(i, j) for i in ids for j in video_ids}
        return self.inner(text, frames, mask)


@pytest.mark.parametrize("family", ["xpool", "tmass"])
def test_leak_free_scoring_pools_every_pair_with_its_own_query_text(tiny_doc, family):
    model = family_model(tiny_doc, family)
    text_bank, video_bank = banks(model)
    video_bank["frames"][:, 0, 0] = torch.arange(4.0)  # tag each video by its index
    spy = SpyPool(model.pool, {tuple(row.tolist()): i for i, row in enumerate(text_bank["text"])})
    model.pool = spy
    sim = score_banks(model, text_bank, video_bank, text_chunk=2)  # chunks of 2 texts: 3 calls
    assert sim.shape == (5, 4)
    assert spy.seen == {(i, j) for i in range(5) for j in range(4)}  # pair (i, j) pooled with text i, every pair

    spy.seen.clear()
    square_text = {k: v[:4] for k, v in text_bank.items()}
    score_banks(model, square_text, video_bank, text_chunk=2, protocol="tmass_compat")
    own = {(j, j) for j in range(4)}  # the leak: each candidate scored against its pooling by its own caption
    # T-MASS also pools every pair by its query, to pick the draw that is then scored against `own` (tested below).
    assert spy.seen == (own if family == "xpool" else {(i, j) for i in range(4) for j in range(4)})


@pytest.mark.parametrize("family", ["xpool", "tmass"])
def test_permuting_the_texts_permutes_the_scores_and_ranks(tiny_doc, family):
    model = family_model(tiny_doc, family)
    text_bank, video_bank = banks(model)
    sim = score_banks(model, text_bank, video_bank, text_chunk=3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = score_banks(model, {k: v[perm] for k, v in text_bank.items()}, video_bank, text_chunk=2)
    assert torch.allclose(permuted, sim[perm], atol=1e-6)
    t2v = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(t2v_ranks(permuted, t2v[perm]), t2v_ranks(sim, t2v)[perm])
    again = score_banks(model, *banks(model), text_chunk=5)  # deterministic: the same draws every evaluation
    assert torch.equal(again, score_banks(model, text_bank, video_bank, text_chunk=5))


def test_unequal_text_and_video_counts_work_and_compat_refuses_them(tiny_doc):
    model = family_model(tiny_doc, "tmass")
    text_bank, video_bank = banks(model, n_text=7, n_video=3)
    sim = score_banks(model, text_bank, video_bank)
    metrics = retrieval_metrics(sim, [0, 0, 1, 1, 2, 2, 2])
    assert sim.shape == (7, 3) and 1 <= metrics["t2v_MnR"] <= 3
    with pytest.raises(ValueError, match="one caption per video"):
        score_banks(model, text_bank, video_bank, protocol="tmass_compat")


def test_compat_protocol_inflates_recall_in_the_direction_of_the_leak():
    """Video j shows caption j's frame and a frame of caption j+1. Pooled by the query (leak-free), the previous
    video's second frame matches the query as well as its own video does; pooled by its own caption (tmass_compat),
    it does not, so the correct video wins more often than it should."""
    torch.manual_seed(0)
    d, n = 32, 6
    pool = TextConditionedPool(d, dropout=0.0).eval()
    captions = F.normalize(torch.randn(n, d), dim=-1) * 4
    frames = torch.stack([torch.stack([captions[j], captions[(j + 1) % n]]) for j in range(n)])  # (N, 2, D)
    mask = torch.ones(n, 2, dtype=torch.bool)
    with torch.no_grad():
        leakfree = F.cosine_similarity(captions[:, None], pool(captions, frames, mask), dim=-1)
        own = torch.stack([pool(captions[j:j + 1], frames[j:j + 1], mask[j:j + 1])[0, 0] for j in range(n)])
        compat = F.cosine_similarity(captions[:, None], own[None], dim=-1)
    r_leakfree = retrieval_metrics(leakfree, list(range(n)))["t2v_R1"]
    r_compat = retrieval_metrics(compat, list(range(n)))["t2v_R1"]
    assert r_compat > r_leakfree


def test_compat_protocol_is_refused_where_it_is_undefined(tiny_doc):
    tiny_doc["evaluation"] = {"protocol": "tmass_compat"}
    with pytest.raises(ConfigError, match="tmass_compat"):
        trial_from_dict(tiny_doc)  # clip4clip: no text-conditioned pooling to leak through
    tiny_doc["model"]["family"] = "tmass"
    assert trial_from_dict(tiny_doc).evaluation.protocol == "tmass_compat"


def test_tmass_training_draws_one_stochastic_text_per_caption(tiny_doc):
    model = family_model(tiny_doc, "tmass", support_weight=0.8).train()
    tokens = model.tokenize(["a red circle", "a blue square", "a green star"])
    batch = {"frames": torch.randn(3, 4, 3, 32, 32), "mask": torch.ones(3, 4, dtype=torch.bool), "tokens": tokens}
    out = model(batch)
    logits = model.batch_logits(out)
    terms = model.extra_terms(out)
    assert logits.shape == (3, 3) and set(terms) >= {"support", "align_rec", "align_kl"}
    assert model.term_weights()["support"] == 0.8
    (logits.sum() + terms["support"]).backward()
    assert model.radius.linear.weight.grad.abs().sum() > 0 and model.pool.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_calm_adds_about_half_a_million_parameters_to_tmass_on_vit_b32():
    """The paper: CALM adds 0.5M to T-MASS's 152.6M. Here: anchor embeddings 157 x 512 + the VAE 383,901."""
    base = {"model": {"family": "tmass", "clip": "ViT-B-32-quickgelu", "pretrained": None},
            "anchors": {"count": 0}, "loss": {"align": "none"}}
    plain = build_model(trial_from_dict(base))
    calm = build_model(trial_from_dict({**base, "anchors": {"count": 157}, "loss": {"align": "vae"}}))
    n_plain = sum(p.numel() for p in plain.parameters())
    n_calm = sum(p.numel() for p in calm.parameters())
    assert n_calm - n_plain == 157 * 512 + 383_901
    assert n_plain == 152_600_322 - 1  # T-MASS's count less its radius head's unused `learnable_scalar`
    pool = sum(p.numel() for p in plain.pool.parameters())
    radius = sum(p.numel() for p in plain.radius.parameters())
    assert (pool, radius) == (1_316_352, 12 * 512 + 512)


def test_tmass_inference_equals_the_draw_by_draw_maximum(tiny_doc):
    """The batched expansion of cos(t + ε_k⊙R_ij, pool(t_i, v_j)) equals T-MASS's loop over draws."""
    model = family_model(tiny_doc, "tmass", trials=7)
    with torch.no_grad():
        model.radius.linear.weight.normal_(0, 0.5)  # a radius that varies per pair and per dimension
    text_bank, video_bank = banks(model)
    t, eps = text_bank["text"], text_bank["noise"]
    with torch.no_grad():
        pooled = model.pool(t, video_bank["frames"], video_bank["mask"])  # (n, N_v, D)
        r = model.radius.all_pairs(t, video_bank["frames"])
        best = torch.full(pooled.shape[:2], -2.0)
        for i in range(len(t)):
            for j in range(pooled.shape[1]):
                for k in range(7):
                    best[i, j] = max(best[i, j], F.cosine_similarity(t[i] + eps[i, k] * r[i, j], pooled[i, j], dim=0))
        assert torch.allclose(model.score(text_bank, video_bank), best, atol=1e-5)


def perturbed_tmass(tiny_doc, **model):
    """A tmass model away from its identity initialisation, with a radius that varies per frame slot and per pair."""
    model = family_model(tiny_doc, "tmass", **model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.pool.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.radius.linear.weight.normal_(0, 0.5)
    return model


@torch.no_grad()
def slow_tmass_published(model, text_bank: dict, video_bank: dict) -> torch.Tensor:
    """T-MASS's published evaluation (trainer/trainer_stochastic.py, modules/metrics.py), one loop per index, float64.

    For every video c and every text a: the radius of (a, c) from the T text-frame cosines, then the draw whose
    normalised stochastic text is closest to video c pooled by text a; that draw is allpairs[c, a]. The sim matrix
    then scores text b against video i as <allpairs[i, b], video i pooled by text i>. The draws are the text bank's
    (T-MASS draws afresh for every video; what is compared here is the indexing)."""
    t, eps = text_bank["text"].double(), text_bank["noise"].double()  # (N, D), (N, K, D)
    frames, mask = video_bank["frames"].double(), video_bank["mask"]  # (N, T, D), (N, T): no padding here
    n, n_f = len(t), frames.shape[1]
    pooled = copy.deepcopy(model.pool).double()(t, frames, mask)  # pooled[a, c] = pool(v_c | t_a)
    w, b = model.radius.linear.weight.double(), model.radius.linear.bias.double()
    allpairs = torch.zeros(n, n, t.shape[1], dtype=torch.float64)
    for c in range(n):
        for a in range(n):
            s = torch.stack([F.cosine_similarity(t[a], frames[c, f], dim=0) for f in range(n_f)])
            radius = torch.exp(w @ s + b)
            target = pooled[a, c] / pooled[a, c].norm()
            best = -math.inf
            for k in range(eps.shape[1]):
                draw = t[a] + eps[a, k] * radius
                draw = draw / draw.norm()
                if float(draw @ target) > best:  # strictly greater: the first draw wins a tie, as torch.argmax
                    best, allpairs[c, a] = float(draw @ target), draw
    scores = torch.zeros(n, n, dtype=torch.float64)
    for query in range(n):
        for i in range(n):
            scores[query, i] = allpairs[i, query] @ (pooled[i, i] / pooled[i, i].norm())
    return scores


def test_tmass_compat_reproduces_tmass_published_indexing(tiny_doc):
    """The draw is picked against the query-pooled video, then scored against the own-caption-pooled one; the
    maximum over draws against the own-caption pooling (an earlier reading) scores every wrong pair at least as high,
    i.e. understates the leak. Random frame features: the tiny CLIP's frames of noise images are too alike to tell."""
    model = perturbed_tmass(tiny_doc, trials=7)
    g = torch.Generator().manual_seed(1)
    n, d = 6, model.backbone.embed_dim
    text_bank = {"text": torch.randn(n, d, generator=g), "noise": torch.rand(n, 7, d, generator=g)}
    video_bank = {"frames": torch.randn(n, 4, d, generator=g), "mask": torch.ones(n, 4, dtype=torch.bool)}
    compat = score_banks(model, text_bank, video_bank, text_chunk=4, protocol="tmass_compat")
    published = slow_tmass_published(model, text_bank, video_bank)
    assert torch.allclose(compat.double(), published, atol=1e-6, rtol=0)
    leakfree = score_banks(model, text_bank, video_bank, text_chunk=4)
    assert torch.allclose(compat.diagonal(), leakfree.diagonal(), atol=1e-6)  # the ground-truth pair is the same
    with torch.no_grad():
        own = F.normalize(model.pooled(text_bank["text"], video_bank, text_bank), dim=-1)
        r = model.radius.all_pairs(text_bank["text"], video_bank["frames"], video_bank["mask"])
        max_against_own = model.draw_cosines(text_bank["text"], text_bank["noise"], r, own).amax(dim=-1)
    assert (max_against_own.double() >= published - 1e-6).all() and (max_against_own.double() - published).max() > 1e-3


def test_radius_reads_the_last_real_frame_in_padded_slots():
    """R of a short clip is R of the clip with its last real frame repeated (T-MASS's decoding), whatever the padded
    slots hold; padding ahead of the first real frame reads that frame."""
    torch.manual_seed(0)
    radius = RadiusHead(5, 8)
    with torch.no_grad():
        radius.linear.weight.normal_(0, 0.5)
    text, frames = torch.randn(3, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    repeated = frames.clone()
    repeated[0, 2:] = frames[0, 1]
    repeated[1, 0], repeated[1, 3] = frames[1, 1], frames[1, 2]
    expected = radius.all_pairs(text, repeated)
    garbage = frames.masked_fill(~mask[..., None], 50.0)
    assert torch.allclose(radius.all_pairs(text, frames, mask), expected, atol=1e-6)
    assert torch.allclose(radius.all_pairs(text, garbage, mask), expected, atol=1e-6)
    assert torch.allclose(radius.paired(text[:2], garbage, mask), expected[[0, 1], [0, 1]], atol=1e-6)


def test_padded_frame_slots_change_no_score_and_no_training_output(tiny_doc):
    """Garbage in a short clip's padded slots changes nothing: not the training logits, the support and CALM terms
    or V_p, not the video bank's scores under either protocol."""
    model = perturbed_tmass(tiny_doc, support_weight=0.8)
    frames = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    garbage = frames.clone()
    garbage[1, 2:] = 50.0
    garbage[2, 1:] = -7.0 * frames[2, 1:]
    tokens = model.tokenize(["a red circle", "a blue square", "a green star"])
    noise = torch.rand(3, model.backbone.embed_dim, generator=torch.Generator().manual_seed(3))

    def training(pixels):
        torch.manual_seed(4)  # the same dropout and VAE draws for both inputs
        out = model.train()({"frames": pixels, "mask": mask, "tokens": tokens, "text_noise": noise})
        return {"logits": model.batch_logits(out), **model.extra_terms(out), "v_logp": out["v_logp"]}

    clean, dirty = training(frames), training(garbage)
    assert set(clean) >= {"logits", "support", "align_rec", "align_kl", "v_logp"}
    for name in clean:
        assert torch.allclose(clean[name], dirty[name], atol=1e-6), name

    model.eval()
    with torch.no_grad():
        text_bank = model.text_bank(tokens)
        clean_bank, dirty_bank = model.video_bank(frames, mask), model.video_bank(garbage, mask)
    assert not torch.allclose(clean_bank["frames"][1, 2:], dirty_bank["frames"][1, 2:])  # the garbage reached them
    for protocol in ("leakfree", "tmass_compat"):
        assert torch.allclose(score_banks(model, text_bank, clean_bank, protocol=protocol),
                              score_banks(model, text_bank, dirty_bank, protocol=protocol), atol=1e-6), protocol


def test_the_registry_names_what_the_family_modules_build():
    """The torch-free registry (models/families.py) spells the temporal fusions and resolves every lazy path."""
    from calm_study.lazy import Lazy
    from calm_study.models.families import FAMILIES, TEMPORAL_FUSIONS
    from calm_study.models.temporal import list_temporal_fusions

    assert sorted(TEMPORAL_FUSIONS) == list_temporal_fusions()
    for family in FAMILIES.values():
        for ref in (family.build, family.random_banks):
            if isinstance(ref, Lazy):
                assert callable(ref.resolve()), ref
    with pytest.raises(ImportError, match="registry entry 'calm_study.models.tmass:no_such'"):
        Lazy("calm_study.models.tmass:no_such")()


def test_a_lazy_entry_resolves_once_and_pickles_by_its_path():
    import pickle

    from calm_study.lazy import Lazy
    from calm_study.models.tmass import build_tmass

    ref = Lazy("calm_study.models.tmass:build_tmass")
    assert ref.resolve() is build_tmass and ref.resolve() is ref._resolved  # kept: no import lookup per call
    again = pickle.loads(pickle.dumps(ref))
    assert again == ref and again._resolved is None
