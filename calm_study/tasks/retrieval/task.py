"""Task `retrieval`: (video, caption) pairs, a symmetric cross-entropy over the model's batch logits, R@K/MdR/MnR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, TrainPairs
from calm_study.data.records import VideoRecord
from calm_study.models.families import VideoTextModel
from calm_study.models.losses import symmetric_cross_entropy
from calm_study.names import RETRIEVAL_METRICS
from calm_study.tasks.base import Terms, caption_pair_inputs
from calm_study.tasks.retrieval.metrics import retrieval_metrics
from calm_study.tasks.retrieval.scoring import similarity


class RetrievalTask:
    name = "retrieval"
    metric_names = RETRIEVAL_METRICS

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg

    def train_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        return TrainPairs(records, **video)  # every caption of every video is one pair

    def eval_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        return EvalVideos(records, **video)  # every video once; every caption is a query

    def inputs(self, model: VideoTextModel, batch: dict, device: torch.device) -> dict:
        return caption_pair_inputs(model, batch, device)  # video, tokens (and cached text features, frozen)

    def loss_terms(self, model: VideoTextModel, out: dict) -> Terms:
        return {"task": symmetric_cross_entropy(model.batch_logits(out))}

    def term_weights(self) -> dict[str, float]:
        return {"task": self.cfg.loss.task_weight}

    def evaluate(self, model: VideoTextModel, items: EvalVideos, device: torch.device, batch_size: int
                 ) -> dict[str, float]:
        """t2v/v2t R@1/5/10, MdR, MnR (definitions: calm_study/tasks/retrieval/metrics.py, docs/metrics.md)."""
        e = self.cfg.evaluation
        sim = similarity(model, items, device, batch_size, e.text_chunk, e.protocol)  # (N_text, N_video)
        if e.dsl:  # T-MASS's DSL: each score re-weighted by its softmax over all queries (off by default)
            sim = sim * torch.softmax(100.0 * sim, dim=0)
        return retrieval_metrics(sim, items.text_to_video)
