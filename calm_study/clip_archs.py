"""open_clip architecture facts that need no model: calm_study's tiny architectures, an architecture's input size and
widths, whether `model.pretrained` names a file or a tag, and whether a tag's weights are on this machine or can be
downloaded.

A leaf (it imports nothing from calm_study), so data/ and validate.py can ask these questions without importing
models/. The architectures and their sizes are read from open_clip's model config files (and calm_study's own)
the way open_clip reads them, without importing open_clip: that import (with torch and torchvision, about 3 s) is
left to the processes that build a model, so that `validate` and a study's driver start in a second
(tests/test_clip_archs.py checks the two readings agree). `calm-tiny` (calm_study/models/configs/calm-tiny.json: 32²
images, 2-layer towers, width 64) is registered with open_clip so demos and tests run the real open_clip code on CPU
without downloading weights.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from importlib import resources
from pathlib import Path

TINY_MODELS = ("calm-tiny",)
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")  # a config file open_clip registers has all three


def _config_folders() -> list[Path]:
    """open_clip's model_configs folder (found without importing the package), then calm_study's."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    return [*folders, Path(str(resources.files("calm_study") / "models" / "configs"))]


@functools.cache
def _model_configs() -> dict[str, dict]:
    """Architecture name -> its config, as open_clip's registry holds them once calm_study's are added (a later
    folder's file of the same name wins, as with open_clip.add_model_config)."""
    configs: dict[str, dict] = {}
    for folder in _config_folders():
        for path in sorted(folder.glob("*.json")):
            cfg = json.loads(path.read_text(encoding="utf-8"))
            if all(key in cfg for key in _REQUIRED_KEYS):
                configs[path.stem] = cfg
    return dict(sorted(configs.items(), key=lambda item: _natural_key(item[0])))  # open_clip's order


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_archs() -> list[str]:
    """Every architecture `model.clip` may name: open_clip.list_models() with calm_study's tiny ones."""
    return list(_model_configs())


def model_config(arch: str) -> dict | None:
    """open_clip.get_model_config(arch) for a registered architecture (None for any other name)."""
    cfg = _model_configs().get(arch)
    return json.loads(json.dumps(cfg)) if cfg is not None else None  # a copy, as open_clip returns


def register_tiny_models() -> None:
    """Add calm_study's small architectures to open_clip's model registry (idempotent); for building a model."""
    import open_clip

    if all(name in open_clip.list_models() for name in TINY_MODELS):
        return
    open_clip.add_model_config(_config_folders()[-1])


def image_size(arch: str) -> int:
    """The input resolution S of an open_clip architecture (S x S frames), without building the model."""
    size = (model_config(arch) or {}).get("vision_cfg", {}).get("image_size", 224)
    return side(size)


def embed_width(arch: str) -> int | None:
    """The embedding width D of an open_clip architecture (its image and text features, what the temporal fusion and
    the text-conditioned pooling work in), without building the model; None for an architecture open_clip does not
    know."""
    width = (model_config(arch) or {}).get("embed_dim")
    return int(width) if width else None


def text_width(arch: str) -> int | None:
    """The width of an architecture's text transformer (of its token embedding, what the caption decoder works in);
    None where open_clip does not know the architecture or its text tower is not its own (a Hugging Face model)."""
    width = (model_config(arch) or {}).get("text_cfg", {}).get("width")
    return int(width) if width else None


def side(size: int | tuple | list) -> int:
    """The side S of an open_clip image size, given as S or (S, S)."""
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def looks_like_path(pretrained: str) -> bool:
    """A checkpoint path rather than an open_clip tag (tags have no path separator and no file extension)."""
    return "/" in pretrained or "\\" in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors")


def missing_weights(arch: str, tag: str, timeout_s: float = 5.0) -> str | None:
    """None when open_clip can load the weights of pretrained tag `tag` of `arch` here: they are in the local cache,
    or their source answers now (one request of at most `timeout_s` seconds; nothing is downloaded). Otherwise why
    not, in words, naming where they were looked for. Asked before any work (validation knows the tag exists)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg, has_hf_hub

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg or cfg.get("file"):
        return None
    hub, url = cfg.get("hf_hub", "") if has_hf_hub() else "", cfg.get("url", "")
    if hub:  # open_clip prefers the Hub: the safetensors file, else the named one (open_clip/pretrained.py)
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError

        repo, name = os.path.split(hub)
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if name in ("", HF_WEIGHTS_NAME) else [name]
        if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
            return None
        where = f"Hugging Face repository {repo} (cache {constants.HF_HUB_CACHE})"
        if constants.HF_HUB_OFFLINE:
            return f"{where}: not cached, and HF_HUB_OFFLINE is set"
        for n in names:
            try:
                get_hf_file_metadata(hf_hub_url(repo, n), timeout=timeout_s)
                return None
            except EntryNotFoundError:  # the repository has not this one of the names
                continue
            except Exception as e:  # noqa: BLE001 - any failure to reach the Hub means "cannot be downloaded now"
                return f"{where}: not cached, and the Hub does not answer ({_first_line(e)})"
        return f"{where}: not cached, and the repository has none of {', '.join(names)}"
    if not url:
        return None
    import urllib.request

    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)  # open_clip's download folder
    if cached.is_file():
        return None
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()  # noqa: S310
        return None
    except Exception as e:  # noqa: BLE001 - as above
        return f"{url}: not cached in {cached.parent}, and it does not answer ({_first_line(e)})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
