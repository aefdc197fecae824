"""Epoch checkpoints: model, optimizer, scheduler, epoch, every worker's RNG states and the config, in one file.

Everything is stored as tensors and plain Python values so that loading works with `torch.load(weights_only=True)`
(no arbitrary pickle is ever executed when resuming).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from calm_study.config import RESUMABLE, ROLE, RUNTIME, TrialConfig, fields_with_role, under
from calm_study.configio import config_differences, to_dict
from calm_study.models.clip_family import FROZEN_KEPT  # the one backbone tensor that trains under model.frozen
from calm_study.names import CHECKPOINT_FILE as STATE_FILE

# Keys that may differ between a checkpoint and the config resuming from it: the settings of how a trial runs and
# those with which a checkpoint stays a valid start (config.py marks each field once).
RESUMABLE_DIFFERENCES = fields_with_role(RUNTIME[ROLE]) + fields_with_role(RESUMABLE[ROLE])


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)),
             "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(states: list[dict], rank: int, world_size: int) -> None:
    """Restore this worker's RNG states (only when the worker count is unchanged; otherwise keep the fresh seeds)."""
    if len(states) != world_size:
        return
    s = states[rank]
    version, mt, gauss = s["python"]
    random.setstate((version, tuple(mt), gauss))
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def frozen_encoder_key(name: str) -> bool:
    """A state-dict key of the fixed CLIP encoders under model.frozen (left out of checkpoints)."""
    return name.startswith("backbone.") and name != FROZEN_KEPT


def save_checkpoint(folder: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    epoch: int, rng: list[dict], cfg: TrialConfig, frozen_weights: str | None = None) -> Path:
    """Write folder/state.pt (epoch = number of completed epochs) and return the folder.

    `frozen_weights` (model.frozen): the fingerprint of the fixed encoders, stored instead of their weights. They never
    change and the trial rebuilds them identically (the pretrained weights, or the seeded initialisation), so a frozen
    trial's checkpoint holds only what trains: megabytes instead of CLIP's 600 MB per epoch at ViT-B/32."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = model.state_dict()
    if frozen_weights is not None:
        weights = {k: v for k, v in weights.items() if not frozen_encoder_key(k)}
    torch.save({"model": weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "rng": rng, "config": to_dict(cfg), "frozen_weights": frozen_weights},
               folder / STATE_FILE)
    return folder


def load_checkpoint(folder: Path, cfg: TrialConfig, map_location: torch.device | str = "cpu") -> dict:
    """Load folder/state.pt safely; refuse a checkpoint written for a different configuration."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    diffs = [d for d in config_differences(state["config"], cfg) if not under(d.split(":")[0], RESUMABLE_DIFFERENCES)]
    if diffs:
        raise ValueError(f"checkpoint {str(path)!r} was written for a different configuration: {'; '.join(diffs)}")
    state["model"] = {LEGACY_MODULES.get(k.split(".", 1)[0], "") + k: v for k, v in state["model"].items()}
    return state


# Checkpoints written before CALM became an add-on (calm_study 0.1) kept the anchor bank and the VAE at the top of
# the model; they now live in the CALM head.
LEGACY_MODULES = {"anchors": "calm.", "vae": "calm."}


def restore(folder: Path, cfg: TrialConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            rank: int, world_size: int, device: torch.device | str, frozen_weights: str | None = None) -> int:
    """Load a checkpoint into model, optimizer, scheduler and this worker's RNGs; returns the epochs it completed.
    `frozen_weights`: the fingerprint of the encoders this trial built (model.frozen), which must be the ones the
    checkpoint was trained on, since it does not hold them."""
    state = load_checkpoint(folder, cfg, map_location=device)
    saved = state.get("frozen_weights")
    if saved is not None:
        if saved != frozen_weights:
            raise ValueError(f"checkpoint {str(folder)!r} was trained on frozen CLIP encoders with weights "
                             f"{str(saved)[:12]}..., but this trial built {str(frozen_weights)[:12]}... (did the "
                             "model.pretrained file change?); it cannot be resumed with these encoders")
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or not all(frozen_encoder_key(k) for k in missing):
            raise ValueError(f"checkpoint {str(folder)!r} does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    else:
        model.load_state_dict(state["model"])
    names = [g.get("name") for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, name in zip(optimizer.param_groups, names):  # older checkpoints' groups have no names
        group["name"] = name
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], rank, world_size)
    return int(state["epoch"])
