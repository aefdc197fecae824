"""A fourth retrieval family written here and registered from the test, with no edit to calm_study: validation
knows it, and the whole contract (tests/contract.py) runs on it with every alignment variant."""

import pytest
import torch
import torch.nn.functional as F

from calm_study.configio import ConfigError
from calm_study.distributed import gather_with_grad
from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.head import build_calm_head
from calm_study.models.calm.variants import ALIGN_VARIANTS, AlignVariant, list_align_losses
from calm_study.models.clip_family import CLIPFamily
from calm_study.models.families import FAMILIES
from calm_study.models.registry import Family
from calm_study.models.temporal import masked_mean
from calm_study.validate import trial_from_dict
from tests.contract import check_all


class MaxPool(CLIPFamily):
    """The video is the element-wise max of its valid frame features; score = cosine (text-independent)."""

    def __init__(self, backbone, calm, logit_scale_max):
        super().__init__(backbone, logit_scale_max)
        self.proj = torch.nn.Linear(backbone.embed_dim, backbone.embed_dim)  # a new module, for the "new" group
        self.calm = calm

    def pool(self, h, mask):  # (B, T, D), (B, T) -> (B, D)
        return self.proj(h.masked_fill(~mask.bool()[..., None], float("-inf")).amax(dim=1))

    def forward(self, batch, vae_noise=None):
        h = self.batch_frame_features(batch)  # (B, T, D)
        out = {"video": self.pool(h, batch["mask"]), "text": self.caption_features(batch)}
        if self.calm is not None:
            out.update(self.calm(masked_mean(h, batch["mask"]), out["text"], self.backbone.encode_text, vae_noise))
        return out

    def batch_logits(self, out):
        t = F.normalize(gather_with_grad(out["text"]), dim=-1)
        v = F.normalize(gather_with_grad(out["video"]), dim=-1)
        return self.scale() * t @ v.t()

    def text_bank(self, tokens, features=None):
        return F.normalize(self.text_features(tokens, features).float(), dim=-1)

    def video_bank(self, frames, mask, features=None):
        h = self.frame_features(frames, features)
        mask = torch.ones(h.shape[:2], dtype=torch.bool) if mask is None else mask
        return F.normalize(self.pool(h, mask).float(), dim=-1)

    def score(self, text_bank, video_bank, pool_with=None):
        return text_bank @ video_bank.t()


def build_maxpool(cfg):
    backbone = CLIPBackbone(cfg.model.clip, cfg.model.pretrained)
    calm = build_calm_head(cfg, backbone.tokenize, backbone.encode_text, backbone.embed_dim)
    return MaxPool(backbone, calm, cfg.loss.logit_scale_max)


SCRATCH = Family(name="maxpool", build=build_maxpool, task="retrieval", summary="max over frames (a test family)")


@pytest.fixture
def registered(monkeypatch):
    """Registered for one test only (the registry is a plain dict), so no other test sees a fifth family."""
    monkeypatch.setitem(FAMILIES, SCRATCH.name, SCRATCH)


@pytest.mark.parametrize("align", list_align_losses())
def test_a_family_registered_from_a_test_gets_the_contract(registered, tiny_doc, tmp_path, align):
    check_all(tiny_doc, "maxpool", align, tmp_path)


def test_validation_knows_the_registered_family_and_its_knobs(registered, tiny_doc):
    tiny_doc["model"]["family"] = "maxpool"
    assert trial_from_dict(tiny_doc).model.family == "maxpool"
    tiny_doc["model"]["trials"] = 5
    with pytest.raises(ConfigError, match="model.trials: 5 is read only by family tmass; this trial "
                                          r"\(family maxpool"):
        trial_from_dict(tiny_doc)


def test_without_registration_the_family_is_unknown(tiny_doc):
    tiny_doc["model"]["family"] = "maxpool"
    with pytest.raises(ConfigError, match="model.family: 'maxpool' is not valid"):
        trial_from_dict(tiny_doc)


def align_cosine(out, cfg):
    """1 − cos(V_p, S_p), mean over the batch: a variant written here, not in calm_study."""
    s_p = (out["s_logp"].detach() if cfg.detach_target else out["s_logp"]).float().exp()
    return {"align": (1 - F.cosine_similarity(out["v_logp"].exp(), s_p, dim=-1)).mean()}


SCRATCH_VARIANT = AlignVariant("cosine", align_cosine, lambda c: {"align": c.align_weight}, ("align",),
                               ("loss.align_weight", "loss.detach_target"), summary="1 − cos(V_p, S_p)")


def test_an_alignment_variant_registered_from_a_test_gets_the_contract(monkeypatch, tiny_doc, tmp_path):
    monkeypatch.setitem(ALIGN_VARIANTS, SCRATCH_VARIANT.name, SCRATCH_VARIANT)
    assert "cosine" in list_align_losses()
    for family in ("clip4clip", "tmass"):
        check_all(tiny_doc, family, "cosine", tmp_path)
    tiny_doc["loss"] = {"align": "cosine", "alpha": 0.5}  # the VAE's KL weight: not this variant's
    with pytest.raises(ConfigError, match="loss.alpha: 0.5 is read only by loss.align vae"):
        trial_from_dict(tiny_doc)
