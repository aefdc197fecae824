"""Leak-free scoring of every (text, video) pair of an evaluation set through the model's own `score`.

The text and video banks are built once; `score` is then called for one chunk of texts against every video at a
time (`evaluation.text_chunk`), so a family that pools each video by the query text never holds
N_text × N_video × D at once. Under the default protocol, pair (i, j) is scored from text i and video j only. The
opt-in `tmass_compat` protocol reproduces T-MASS's published indexing instead, pooling every candidate video by its own
ground-truth caption (docs/metrics.md, "Leak-free scoring and the T-MASS evaluation leak").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from calm_study.data.dataset import EvalVideos, collate
from calm_study.models.families import VideoTextModel
from calm_study.names import FRAME_FEATURES
from calm_study.tasks.base import video_inputs
from calm_study.tasks.retrieval import PROTOCOLS

if TYPE_CHECKING:
    from calm_study.models.registry import Bank



def cat_banks(banks: list[Bank]) -> Bank:
    """Concatenate per-batch banks (tensors, or dicts of tensors) along their first dimension."""
    if isinstance(banks[0], dict):
        return {k: torch.cat([b[k] for b in banks]) for k in banks[0]}
    return torch.cat(banks)


def bank_rows(bank: Bank, rows: slice) -> Bank:
    return {k: v[rows] for k, v in bank.items()} if isinstance(bank, dict) else bank[rows]


def bank_len(bank: Bank) -> int:
    return len(next(iter(bank.values()))) if isinstance(bank, dict) else len(bank)


@torch.no_grad()
def banks(model: VideoTextModel, eval_set: EvalVideos, device: torch.device, batch_size: int) -> tuple[Bank, Bank]:
    """(text bank, video bank) of every text and every video of the set, on the evaluation device."""
    videos = []
    for batch in DataLoader(eval_set, batch_size=batch_size, shuffle=False, collate_fn=collate):
        v = video_inputs(batch, device)  # pixels, or cached frame features (frozen-feature mode)
        videos.append(model.video_bank(v.get("frames"), v["mask"], v.get(FRAME_FEATURES)))
    cached = eval_set.text_features  # (N_text, D) in frozen-feature mode, else None
    texts = [model.text_bank(model.tokenize(eval_set.texts[i:i + batch_size]).to(device),
                             None if cached is None else cached[i:i + batch_size])
             for i in range(0, len(eval_set.texts), batch_size)]
    return cat_banks(texts), cat_banks(videos)


@torch.no_grad()
def score_banks(model: VideoTextModel, text_bank: Bank, video_bank: Bank, text_chunk: int = 64,
                protocol: str = "leakfree") -> torch.Tensor:
    """(N_text, N_video) scores on the CPU, `text_chunk` texts per `score` call.

    tmass_compat: text j is the one caption of video j (N_text == N_video), and every candidate video is pooled by
    that caption whatever the query; defined only for text-conditioned families."""
    n_text, n_video = bank_len(text_bank), bank_len(video_bank)
    pool_with = None
    if protocol == "tmass_compat":
        if n_text != n_video:
            raise ValueError(f"evaluation.protocol tmass_compat is defined only for one caption per video with as many "
                             f"texts as videos; this set has {n_text} texts and {n_video} videos (use leakfree)")
        pool_with = text_bank
    elif protocol != "leakfree":
        raise ValueError(f"evaluation.protocol {protocol!r}: valid are {', '.join(PROTOCOLS)}")
    extra = {} if pool_with is None else {"pool_with": pool_with}
    rows = [model.score(bank_rows(text_bank, slice(i, i + text_chunk)), video_bank, **extra).float().cpu()
            for i in range(0, n_text, text_chunk)]
    return torch.cat(rows)  # (N_text, N_video)


def similarity(model: VideoTextModel, eval_set: EvalVideos, device: torch.device, batch_size: int = 32,
               text_chunk: int = 64, protocol: str = "leakfree") -> torch.Tensor:
    """(N_text, N_video) scores of an evaluation set, the model in eval mode (its mode is restored afterwards)."""
    if protocol == "tmass_compat" and eval_set.text_to_video != list(range(len(eval_set))):
        raise ValueError(f"evaluation.protocol tmass_compat is defined only for one caption per video with as many "
                         f"texts as videos; this set has {len(eval_set.texts)} texts for {len(eval_set)} videos "
                         "(use leakfree)")
    was_training = model.training
    model.eval()
    try:
        return score_banks(model, *banks(model, eval_set, device, batch_size), text_chunk, protocol)
    finally:
        model.train(was_training)
