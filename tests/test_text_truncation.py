"""Exact text truncation: the text tower runs only up to the batch's longest text, with the full-context features."""

import pytest
import torch

from calm_study.models.backbone import CLIPBackbone

TEXTS = ["The content of Holding some clothes", "a", "The content of Sitting in a chair while watching television"]


@pytest.mark.parametrize("arch", ["calm-tiny", "ViT-B-32-quickgelu"])
def test_truncated_features_and_gradients_equal_open_clips_full_context(arch):
    torch.manual_seed(0)
    backbone = CLIPBackbone(arch, None).eval()
    tokens = backbone.tokenize(TEXTS)  # (3, context)
    assert int((tokens != 0).sum(dim=1).max()) < tokens.shape[1]  # padding to cut
    full = backbone.clip.encode_text(tokens)  # open_clip's own full-context path
    fast = backbone.encode_text(tokens)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    grads = []
    for out in (full, fast):
        backbone.zero_grad()
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, want in grads[0].items():  # fp32 sums in another order: tolerance relative to the largest entry
        scale = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(grads[1][name], want, atol=2e-6 * scale, rtol=1e-4, msg=name)


def test_a_text_that_fills_the_context_uses_the_full_path():
    backbone = CLIPBackbone("calm-tiny", None).eval()
    tokens = backbone.tokenize([" ".join(["word"] * 60), "a"])  # truncated by the tokenizer to the whole context
    torch.testing.assert_close(backbone.encode_text(tokens), backbone.clip.encode_text(tokens))
