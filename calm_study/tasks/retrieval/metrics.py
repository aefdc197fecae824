"""Retrieval metrics: the one definition calm_study uses everywhere (docs/metrics.md explains the conventions).

Input: a similarity matrix sim (N_text, N_video), every (text, video) pair scored with that text (no query-dependent
pooling from another caption, so no T-MASS-style leak), and text_to_video (N_text,): the video each text describes.
A video may have several texts; a video may have none (a distractor).

Ranks are 1-based. Ties count against the query (pessimistic): a correct item's rank is 1 + the number of *wrong*
candidates scoring >= it. A model that gives every pair the same score therefore ranks last, never first, and the
result does not depend on the order of candidates.

- text->video: every text is a query; rank of its video among all N_video videos.
- video->text: every video with at least one text is a query; rank of its best-ranked correct text among all N_text
  texts (its other correct texts are not counted as wrong).
- R@K = 100 * fraction of queries with rank <= K; MdR = median rank (numpy median: the mean of the two middle ranks
  for an even count, as in T-MASS); MnR = mean rank.
"""

from __future__ import annotations

import numpy as np
import torch

from calm_study.names import RECALL_KS


def _summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}_R{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out[f"{prefix}_MdR"] = float(np.median(ranks))
    out[f"{prefix}_MnR"] = float(np.mean(ranks))
    return out


def t2v_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """1-based rank of each text's video: 1 + #{other videos scoring >= the correct one}. (N_text,)"""
    correct = sim.gather(1, text_to_video[:, None])  # (N_text, 1)
    ge = (sim >= correct).sum(dim=1)  # counts the correct video itself once
    return ge  # = 1 + wrong videos scoring >= correct


def v2t_ranks(sim: torch.Tensor, text_to_video: torch.Tensor) -> torch.Tensor:
    """1-based rank of each captioned video's best correct text among all texts. (N_queried_videos,)"""
    n_text, n_video = sim.shape
    is_correct = text_to_video[:, None] == torch.arange(n_video, device=sim.device)[None, :]  # (N_text, N_video)
    queried = is_correct.any(dim=0)  # videos with at least one text
    best = sim.masked_fill(~is_correct, float("-inf")).max(dim=0).values  # (N_video,) best correct score
    wrong_ge = ((sim >= best[None, :]) & ~is_correct).sum(dim=0)  # (N_video,)
    return (1 + wrong_ge)[queried]


def retrieval_metrics(sim: torch.Tensor | np.ndarray, text_to_video: torch.Tensor | np.ndarray | list[int]
                      ) -> dict[str, float]:
    """t2v_* and v2t_* R@1/5/10, MdR, MnR for a (N_text, N_video) similarity matrix."""
    sim = torch.as_tensor(sim, dtype=torch.float64).nan_to_num(nan=float("-inf"))  # a NaN score is the worst score
    t2v = torch.as_tensor(text_to_video, dtype=torch.long)
    if sim.ndim != 2 or t2v.shape != (sim.shape[0],):
        raise ValueError(f"sim must be (N_text, N_video) and text_to_video (N_text,), got {tuple(sim.shape)} and "
                         f"{tuple(t2v.shape)}")
    if len(t2v) and (t2v.min() < 0 or t2v.max() >= sim.shape[1]):
        raise ValueError(f"text_to_video has indices outside [0, {sim.shape[1]})")
    return {**_summary(t2v_ranks(sim, t2v).numpy(), "t2v"), **_summary(v2t_ranks(sim, t2v).numpy(), "v2t")}
