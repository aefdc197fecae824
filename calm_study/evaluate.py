"""Evaluation: embed every video and every text once, score every (text, video) pair, compute retrieval metrics.

Video features do not depend on the query text, so each pair's score uses exactly that text and that video (the
T-MASS leak, pooling a candidate video with its own ground-truth caption, cannot happen here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from calm_study.data.dataset import EvalVideos, collate
from calm_study.metrics import retrieval_metrics
from calm_study.models.calm import CALMModel


@torch.no_grad()
def embed(model: CALMModel, eval_set: EvalVideos, device: torch.device, batch_size: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(text features (N_text, D), video features (N_video, D)), L2-normalised, on the CPU."""
    was_training = model.training
    model.eval()
    videos = []
    for batch in DataLoader(eval_set, batch_size=batch_size, shuffle=False, collate_fn=collate):
        video, _ = model.encode_video(batch["frames"].to(device), batch["mask"].to(device))  # (B, D)
        videos.append(F.normalize(video.float(), dim=-1).cpu())
    texts = []
    for i in range(0, len(eval_set.texts), batch_size):
        tokens = model.backbone.tokenize(eval_set.texts[i:i + batch_size]).to(device)
        texts.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(texts), torch.cat(videos)


def evaluate(model: CALMModel, eval_set: EvalVideos, device: torch.device, batch_size: int = 32) -> dict[str, float]:
    """t2v/v2t R@1/5/10, MdR, MnR on one evaluation set (see calm_study.metrics for the definitions)."""
    text, video = embed(model, eval_set, device, batch_size)
    sim = text @ video.t()  # (N_text, N_video)
    return retrieval_metrics(sim, eval_set.text_to_video)
