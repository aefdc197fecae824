"""CLIP through open_clip: image encoder for frames, text encoder for captions and anchor prompts.

calm_study's tiny architectures (`calm-tiny`), an architecture's input size and the tag-or-file test of
`model.pretrained` live in calm_study/clip_archs.py, which needs no model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from calm_study.clip_archs import TINY_MODELS, looks_like_path, register_tiny_models, side


class CLIPBackbone(nn.Module):
    """Wraps an open_clip CLIP model. `pretrained`: an open_clip tag for `arch`, a local checkpoint path, or None."""

    def __init__(self, arch: str, pretrained: str | None):
        super().__init__()
        # open_clip (with torchvision, about 2 s) is imported where a model is built: validation and a study's driver
        # read architecture facts from clip_archs, which needs neither
        import open_clip

        register_tiny_models()
        if arch not in open_clip.list_models():
            raise ValueError(f"model.clip: {arch!r} is not an open_clip architecture; see open_clip.list_models() "
                             f"(calm_study adds {', '.join(TINY_MODELS)})")
        if pretrained and looks_like_path(pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model.pretrained: checkpoint file {pretrained!r} does not exist")
            pretrained = str(path)
        try:
            self.clip = open_clip.create_model(arch, pretrained=pretrained or None)
        except RuntimeError as e:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise RuntimeError(f"model.pretrained: could not load {pretrained!r} for {arch!r} ({e}); valid tags for "
                               f"this architecture: {', '.join(tags) or 'none'}, or a local checkpoint file") from e
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_size = side(self.clip.visual.image_size)
        self.embed_dim = int(self.clip.visual.output_dim)
        # The pixel normalisation this model was trained with (set by open_clip from the pretrained tag).
        preprocess = open_clip.get_model_preprocess_cfg(self.clip)
        self.normalisation = (tuple(preprocess["mean"]), tuple(preprocess["std"]))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)  # (N, L) token ids, truncated to the model's context length

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)  # (N, 3, S, S) -> (N, D), projected, not normalised

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) -> (N, D): the EOT token's projected feature, computed only up to the batch's longest text.

        CLIP's text tower is causal and pools the EOT token, so the padding after the longest text never reaches any
        pooled feature: running the tower on tokens[:, :L'] gives the same features as the full context (a test checks
        it on open_clip's own encode_text) at a fraction of the cost (anchor prompts: 14 of 77 tokens). Models whose
        text tower is not the plain causal CLIP one get the full context."""
        clip = self.clip
        exact = (getattr(clip, "attn_mask", None) is not None and getattr(clip, "text_pool_type", "argmax")
                 in ("argmax", "eos") and hasattr(clip, "positional_embedding") and hasattr(clip, "token_embedding"))
        used = int((tokens != 0).any(dim=0).nonzero().max()) + 1 if bool((tokens != 0).any()) else tokens.shape[1]
        if not exact or used >= tokens.shape[1]:
            return clip.encode_text(tokens)
        text = tokens[:, :used]  # (N, L')
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(text).to(cast) + clip.positional_embedding[:used].to(cast)  # (N, L', W)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:used, :used]))
        from open_clip.transformer import text_global_pool  # imported with the model, in __init__

        x = text_global_pool(x, text, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))  # (N, W)
        if clip.text_projection is None:
            return x
        return clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
