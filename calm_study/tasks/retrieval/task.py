"""Task `retrieval`: (video, caption) pairs, a symmetric cross-entropy over the model's batch logits, R@K/MdR/MnR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, TrainPairs
from calm_study.data.records import VideoRecord
from calm_study.models.families import VideoTextModel
from calm_study.names import RETRIEVAL_METRICS
from calm_study.tasks.base import Terms
from calm_study.tasks.retrieval.metrics import retrieval_metrics
from calm_study.tasks.retrieval.scoring import similarity


def symmetric_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """InfoNCE both ways over (N, N) logits whose diagonal holds the matching pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class RetrievalTask:
    name = "retrieval"
    metric_names = RETRIEVAL_METRICS

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg

    def train_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        return TrainPairs(records, **video)  # every caption of every video is one pair

    def eval_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        return EvalVideos(records, **video)  # every video once; every caption is a query

    def loss_terms(self, model: VideoTextModel, out: dict) -> Terms:
        return {"task": symmetric_cross_entropy(model.batch_logits(out))}

    def term_weights(self) -> dict[str, float]:
        return {"task": self.cfg.loss.task_weight}

    def evaluate(self, model: VideoTextModel, items: EvalVideos, device: torch.device, batch_size: int
                 ) -> dict[str, float]:
        """t2v/v2t R@1/5/10, MdR, MnR (definitions: calm_study/tasks/retrieval/metrics.py, docs/metrics.md)."""
        sim = similarity(model, items, device, batch_size)  # (N_text, N_video)
        return retrieval_metrics(sim, items.text_to_video)
