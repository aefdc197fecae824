"""Leak-free scoring of every (text, video) pair of an evaluation set through the model's own `score`.

The text and video banks are built once; `score` is then called for one chunk of texts against every video at a
time, so a family that conditions the video on the query text never holds N_text × N_video × D at once. Pair (i, j)
is scored from text i and video j only: no candidate video is ever pooled with another caption (the T-MASS leak,
docs/metrics.md#the-t-mass-evaluation-leak).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from calm_study.data.dataset import EvalVideos, collate
from calm_study.models.families import VideoTextModel

TEXT_CHUNK = 1024  # texts scored against every video per `score` call


@torch.no_grad()
def banks(model: VideoTextModel, eval_set: EvalVideos, device: torch.device, batch_size: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(text bank, video bank) of every text and every video of the set, on the evaluation device."""
    videos = []
    for batch in DataLoader(eval_set, batch_size=batch_size, shuffle=False, collate_fn=collate):
        videos.append(model.video_bank(batch["frames"].to(device), batch["mask"].to(device)))
    texts = []
    for i in range(0, len(eval_set.texts), batch_size):
        texts.append(model.text_bank(model.tokenize(eval_set.texts[i:i + batch_size]).to(device)))
    return torch.cat(texts), torch.cat(videos)


@torch.no_grad()
def similarity(model: VideoTextModel, eval_set: EvalVideos, device: torch.device, batch_size: int = 32,
               text_chunk: int = TEXT_CHUNK) -> torch.Tensor:
    """(N_text, N_video) scores on the CPU, the model in eval mode (its training mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        text_bank, video_bank = banks(model, eval_set, device, batch_size)
        rows = [model.score(text_bank[i:i + text_chunk], video_bank).float().cpu()
                for i in range(0, len(text_bank), text_chunk)]
    finally:
        model.train(was_training)
    return torch.cat(rows)  # (N_text, N_video)
