"""The composed CALM model on the real open_clip code (calm-tiny, no download)."""

import pytest
import torch

from calm_study.models.backbone import CLIPBackbone
from calm_study.models.calm.labels import list_label_sources, load_labels, pick_labels
from calm_study.models.families import build_model
from calm_study.models.temporal import build_temporal_fusion
from calm_study.validate import trial_from_dict

from .conftest import SHARED_DATA


def test_label_sources_are_complete():
    charades = load_labels("charades")
    assert len(charades) == 157  # all of them, not a hand-typed subset
    assert charades[0] == "Holding some clothes" and charades[-1] == "Someone is eating something"
    assert len(load_labels("coco80")) == 80 and len(load_labels("coco91")) == 91
    assert load_labels("coco91")[11] == "street sign"  # paper-only id 12
    assert load_labels("charades+coco") == charades + load_labels("coco91")
    assert list_label_sources() == ["charades", "charades+coco", "coco80", "coco91"]


def test_packaged_labels_equal_the_shared_reference_files():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    for source, name in (("charades", "charades_v1_classes.txt"), ("coco80", "coco_80.txt"), ("coco91", "coco_91.txt")):
        assert load_labels(source) == load_labels(str(SHARED_DATA / "anchors" / name))


def test_label_subsets_are_seeded_and_ordered(tmp_path):
    a, b = pick_labels("charades", 50, seed=1), pick_labels("charades", 50, seed=1)
    assert a == b and len(set(a)) == 50 and pick_labels("charades", 50, seed=2) != a
    everything = load_labels("charades")
    assert [everything.index(x) for x in a] == sorted(everything.index(x) for x in a)
    f = tmp_path / "labels.txt"
    f.write_text("c000 Jumping\n\nc001 Reading a book\n")
    assert load_labels(str(f)) == ["Jumping", "Reading a book"]
    with pytest.raises(ValueError, match="neither a known label source"):
        load_labels("imagenet")


def forward(model, b=3, t=4):
    torch.manual_seed(0)
    frames = torch.randn(b, t, 3, 32, 32)
    tokens = model.tokenize(["a red circle moves left"] * b)
    return model({"frames": frames, "mask": torch.ones(b, t, dtype=torch.bool), "tokens": tokens})


def test_forward_shapes_and_distributions(tiny_doc):
    model = build_model(trial_from_dict(tiny_doc))
    out = forward(model)
    assert out["video"].shape == out["text"].shape == (3, 64)
    assert out["v_logp"].shape == out["s_logp"].shape == (3, 20)
    assert torch.allclose(out["v_logp"].exp().sum(-1), torch.ones(3))
    assert out["vae"]["mu"].shape == (3, 256) and out["vae"]["recon_logits"].shape == (3, 20)


def test_baseline_has_no_anchor_modules(tiny_doc):
    tiny_doc["anchors"]["count"] = 0
    tiny_doc["loss"] = {"align": "none"}
    model = build_model(trial_from_dict(tiny_doc))
    assert model.calm is None and "v_logp" not in forward(model)
    assert model.extra_terms(forward(model)) == {} and model.term_weights() == {}


def test_every_step_anchors_train_the_text_encoder_once_does_not(tiny_doc):
    for encode, reaches in (("every_step", True), ("once", False)):
        tiny_doc["anchors"]["encode"] = encode
        model = build_model(trial_from_dict(tiny_doc))
        out = forward(model)
        out["s_logp"].detach()  # only the anchor path below
        # Gradient of the video-side distribution (which sees the text tower only through P).
        out["v_logp"].sum(-1).mul(torch.arange(3.0)).sum().backward()
        text_grad = model.backbone.clip.token_embedding.weight.grad
        assert (text_grad is not None and text_grad.abs().sum() > 0) == reaches
        assert model.calm.anchors.embedding.grad.abs().sum() > 0


def test_param_groups_split_clip_from_new_modules(tiny_doc):
    tiny_doc["model"]["temporal"] = "transformer"
    tiny_doc["model"]["temporal_heads"] = 4
    model = build_model(trial_from_dict(tiny_doc))
    groups = model.param_groups()
    assert list(groups) == ["clip", "new"]
    assert {id(p) for p in groups["clip"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups["new"]} == {id(p) for m in (model.fusion, model.calm) for p in m.parameters()}


def test_transformer_fusion_ignores_padded_frames():
    torch.manual_seed(0)
    fusion = build_temporal_fusion("transformer", 16, 6, layers=1, heads=2, dropout=0.0).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    y = x.clone()
    y[0, 3:] = 99.0  # garbage in padded positions must not matter
    assert torch.allclose(fusion(x, mask)[0], fusion(y, mask)[0], atol=1e-5)
    mean = build_temporal_fusion("mean", 16, 6, 0, 1, 0.0)
    assert torch.allclose(mean(x, mask)[0], x[0, :3].mean(0))
    with pytest.raises(ValueError, match="valid: mean, transformer"):
        build_temporal_fusion("lstm", 16, 6, 1, 1, 0.0)


def test_pretrained_loading_from_a_local_checkpoint(tmp_path):
    a = CLIPBackbone("calm-tiny", None)
    path = tmp_path / "tiny.pt"
    torch.save(a.clip.state_dict(), path)
    b = CLIPBackbone("calm-tiny", str(path))
    for (name, pa), pb in zip(a.clip.state_dict().items(), b.clip.state_dict().values()):
        assert torch.equal(pa, pb), name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPBackbone("calm-tiny", str(tmp_path / "missing.pt"))
    with pytest.raises(RuntimeError, match="valid tags for this architecture"):
        CLIPBackbone("calm-tiny", "laion2b")
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        CLIPBackbone("ViT-Q-99", None)
