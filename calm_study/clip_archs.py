"""open_clip architecture facts that need no model: calm_study's tiny architectures, an architecture's input size, and
whether `model.pretrained` names a file or a tag.

A leaf (it imports open_clip and nothing from calm_study), so data/ and validate.py can ask these questions without
importing models/. `calm-tiny` (calm_study/models/configs/calm-tiny.json: 32² images, 2-layer towers, width 64) is
registered with open_clip so demos and tests run the real open_clip code on CPU without downloading weights.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import open_clip

TINY_MODELS = ("calm-tiny",)


def register_tiny_models() -> None:
    """Add calm_study's small architectures to open_clip's model registry (idempotent)."""
    if all(name in open_clip.list_models() for name in TINY_MODELS):
        return
    open_clip.add_model_config(Path(str(resources.files("calm_study") / "models" / "configs")))


def image_size(arch: str) -> int:
    """The input resolution S of an open_clip architecture (S x S frames), without building the model."""
    register_tiny_models()
    size = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("image_size", 224)
    return side(size)


def side(size: int | tuple | list) -> int:
    """The side S of an open_clip image size, given as S or (S, S)."""
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def looks_like_path(pretrained: str) -> bool:
    """A checkpoint path rather than an open_clip tag (tags have no path separator and no file extension)."""
    return "/" in pretrained or "\\" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")
