"""Task `captioning`: (video, caption) pairs, a label-smoothed next-token cross-entropy, decoded captions scored
against every reference of each video.

Training uses every caption of every video as one pair (as for retrieval); evaluation decodes one caption per video
from the video alone and scores it with caption_metrics. Each evaluation also reports trivial_CIDEr, the CIDEr of
always answering the most frequent training caption: a trained model must clear it by far.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from calm_study.config import TrialConfig
from calm_study.data.dataset import EvalVideos, TrainPairs, collate
from calm_study.data.records import VideoRecord
from calm_study.external import require_java
from calm_study.models.captioner import IGNORE, CaptionModel
from calm_study.names import CAPTIONING_METRICS, FRAME_FEATURES, SAMPLES
from calm_study.tasks.base import Terms, caption_pair_inputs, video_inputs
from calm_study.tasks.captioning.metrics import caption_metrics


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed loss over the caption tokens, mean over the real tokens: logits (B, L, V), labels (B, L),
    IGNORE = padding. CoCap's form (`mm_video/modeling/compressed_video/loss_function.py:19-48`): per token, KL(q || p)
    with q = 1 - ε on the true token and ε / (V - 1) on every other token of the vocabulary (torch's label_smoothing
    would give ε / V to every token, the true one included). KL = Σ q log q - Σ q log p; the first term is constant."""
    eps, vocab = label_smoothing, logits.shape[-1]
    keep = labels.flatten() != IGNORE
    logp = F.log_softmax(logits.flatten(0, 1)[keep].float(), dim=-1)  # (N, V), N real tokens
    true = logp.gather(1, labels.flatten()[keep][:, None])[:, 0]  # (N,)
    other = eps / (vocab - 1)
    cross = -(1 - eps) * true - other * (logp.sum(-1) - true)  # (N,): -Σ_v q_v log p_v
    entropy = sum(w * math.log(w) * n for w, n in ((1 - eps, 1), (other, vocab - 1)) if w > 0)  # Σ_v q_v log q_v
    return (cross + entropy).mean()


def most_frequent_caption(records: Sequence[VideoRecord]) -> str:
    """The caption that occurs most often over all training pairs (the first seen among ties)."""
    counts = Counter(c.strip() for r in records for c in r.captions)
    return counts.most_common(1)[0][0] if counts else ""


class CaptioningTask:
    name = "captioning"
    metric_names = CAPTIONING_METRICS

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.trivial_caption = ""
        self._trivial: dict[int, float] = {}  # id(eval items) -> trivial CIDEr, computed once per set
        require_java()  # before any training: METEOR and the PTB tokenizer are Java programs

    def train_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        self.trivial_caption = most_frequent_caption(records)
        return TrainPairs(records, **video)

    def eval_items(self, records: Sequence[VideoRecord], **video) -> Dataset:
        return EvalVideos(records, **video)  # every video once, with all its reference captions

    def inputs(self, model: CaptionModel, batch: dict, device: torch.device) -> dict:
        return caption_pair_inputs(model, batch, device)  # the tokens are the decoder's input and its targets

    def loss_terms(self, model: CaptionModel, out: dict) -> Terms:
        return {"task": caption_loss(out["logits"], out["labels"], self.cfg.caption.label_smoothing)}

    def term_weights(self) -> dict[str, float]:
        return {"task": self.cfg.loss.task_weight}

    def evaluate(self, model: CaptionModel, items: EvalVideos, device: torch.device, batch_size: int) -> dict:
        """Decode every video, score against all its references; plus trivial_CIDEr and a few decoded samples."""
        loader = DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate)
        was_training = model.training
        model.eval()
        hypotheses: dict[str, str] = {}
        for batch in loader:
            v = video_inputs(batch, device)  # pixels, or cached frame features (frozen-feature mode)
            ids = model.generate(v.get("frames"), v["mask"], v.get(FRAME_FEATURES))
            for i, tokens in zip(batch["video_index"].tolist(), ids):
                hypotheses[str(i)] = model.detokenize(tokens)
        model.train(was_training)
        references = {str(i): list(r.captions) for i, r in enumerate(items.records)}
        metrics: dict = caption_metrics(references, hypotheses)
        if id(items) not in self._trivial:
            self._trivial[id(items)] = caption_metrics(
                references, dict.fromkeys(references, self.trivial_caption or "a"))["CIDEr"]
        metrics["trivial_CIDEr"] = self._trivial[id(items)]
        # A JSON string, not a list: every reported value stays a scalar for Ray Tune's loggers.
        metrics[SAMPLES] = json.dumps([{"video": r.video_id, "caption": hypotheses[str(i)],
                                        "references": list(r.captions[:3])}
                                       for i, r in enumerate(items.records[: self.cfg.caption.samples])])
        return metrics
