"""train.precision bf16: autocast works for every family and both tasks; the loss terms stay fp32."""

import copy
import math

import pytest
import torch

from calm_study.models.families import FAMILIES, build_model, list_families
from calm_study.tasks import build_task
from calm_study.training.fit import fit, step_terms
from calm_study.validate import trial_from_dict


def doc_for(tiny_doc, family):
    doc = copy.deepcopy(tiny_doc)
    doc["model"]["family"] = family
    doc["task"] = FAMILIES[family].task
    doc["train"].update(precision="bf16", epochs=1)
    if doc["task"] == "captioning":
        doc["caption"] = {"max_length": 10}
    return doc


@pytest.mark.parametrize("family", list_families())
def test_bf16_autocast_step_keeps_fp32_loss_terms(tiny_doc, family):
    from calm_study.data.dataset import TrainPairs, collate
    from calm_study.data.sources import load_records

    cfg = trial_from_dict(doc_for(tiny_doc, family))
    model, task = build_model(cfg), build_task(cfg)
    records = load_records(cfg.data.train, cfg.data)[:4]
    items = TrainPairs(records, cfg.data.num_frames, model.image_size, model.normalisation)
    batch = collate([items[i] for i in range(4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = step_terms(task, model, model(task.inputs(model, batch, torch.device("cpu"))),
                           {**task.term_weights(), **model.term_weights()})
    terms["total"].backward()
    assert all(t.dtype == torch.float32 and math.isfinite(float(t.detach())) for t in terms.values()), \
        {k: (t.dtype, float(t.detach())) for k, t in terms.items()}
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tmass", "captioner"])
def test_bf16_trial_trains_and_evaluates(tiny_doc, family):
    metrics = fit(trial_from_dict(doc_for(tiny_doc, family)), lambda m, c: None)
    assert metrics["status"] == "completed" and math.isfinite(metrics["loss_total"])
