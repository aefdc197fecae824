"""The contract every registered model family keeps, with every alignment variant: checks that a test module runs
for the families it registers (tests/test_contract.py walks the registries; a scratch module registers its own).

Each check drives the real pipeline on calm-tiny (no downloads) and the tiny synthetic data of tests/conftest.py, and
compares the fast path with a slow obvious one: scores with a per-pair loop, frozen features with pixels.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch

from calm_study.config import TrialConfig, calm_enabled
from calm_study.configio import flatten, to_dict
from calm_study.data.dataset import EvalVideos, TrainPairs, collate
from calm_study.data.sources import load_records
from calm_study.models.calm.variants import list_align_losses
from calm_study.models.clip_family import FROZEN_KEPT
from calm_study.models.families import FAMILIES, build_model
from calm_study.names import loss_column
from calm_study.study.results import loss_terms
from calm_study.tasks import TASKS, build_task
from calm_study.tasks.retrieval.scoring import bank_len, bank_rows, score_banks, similarity
from calm_study.training.fit import step_terms
from calm_study.training.frozen import FrozenFeatures
from calm_study.training.optim import build_optimizer, group_lrs
from calm_study.validate import trial_from_dict

CPU = torch.device("cpu")
README = Path(__file__).resolve().parents[1] / "results" / "_README.md"


def cases() -> list[tuple[str, str]]:
    """Every registered (family, alignment variant or none), as the registries list them now."""
    return [(family, align) for family in sorted(FAMILIES) for align in list_align_losses()]


def trial(tiny_doc: dict, family: str, align: str, tmp_path: Path, frozen: bool = False) -> TrialConfig:
    """A valid tiny trial of the family with the variant (CALM's defaults for the rest), dropout-free knobs left as
    the family's defaults; frozen: model.frozen with the anchors encoded once."""
    doc = copy.deepcopy(tiny_doc)
    doc["model"]["family"] = family
    doc["task"] = FAMILIES[family].task
    doc["loss"] = {"align": align}
    if align == "none":
        doc.pop("anchors", None)
    if frozen:
        doc["model"]["frozen"] = True
        doc["data"]["feature_cache"] = str(Path(doc["data"]["cache_dir"]) / "features")  # shared: computed once
        if align != "none":
            doc.setdefault("anchors", {})["encode"] = "once"
    if doc["task"] == "captioning":
        doc["caption"] = {"max_length": 10}
    return trial_from_dict(doc, f"contract {family}/{align}")


def check_entry(family: str) -> None:
    """The registry entry is consistent: its task exists, its knobs are config keys, the knobs a config reads are
    among them, and every term it logs has a documented results column."""
    entry = FAMILIES[family]
    assert entry.task in TASKS, (family, entry.task)
    keys = set(flatten(to_dict(TrialConfig())))
    assert set(entry.knobs) <= keys, sorted(set(entry.knobs) - keys)
    assert set(entry.knobs_read(TrialConfig())) <= set(entry.knobs)
    assert entry.summary
    for term in entry.loss_terms:
        assert term in loss_terms() and documented(loss_column(term)), term


def documented(column: str) -> bool:
    return re.search(rf"`{re.escape(column)}`", README.read_text()) is not None


def batch_of(cfg: TrialConfig, model, features=None) -> dict:
    records = load_records(cfg.data.train, cfg.data)[:6]
    items = TrainPairs(records, cfg.data.num_frames, model.image_size, model.normalisation, features=features)
    return collate([items[i] for i in range(8)])


def check_one_step(cfg: TrialConfig) -> None:
    """Build, one training step: every term is weighted, named in the results schema and documented; the total is
    finite; gradients reach the new modules (and CLIP, fine-tuning); an AdamW step over the named groups moves them."""
    torch.manual_seed(0)
    model, task = build_model(cfg), build_task(cfg)
    weights = {**task.term_weights(), **model.term_weights()}
    out = model(task.inputs(model, batch_of(cfg, model), CPU))
    terms = step_terms(task, model, out, weights)
    named = [k for k in terms if k != "total"]
    assert set(named) >= set(TASKS[cfg.task].loss_terms) and all(k in weights for k in named), (named, weights)
    assert bool(calm_enabled(cfg)) == any(k.startswith("align") for k in named), named
    for term in terms:
        assert term in loss_terms() and documented(loss_column(term)), term
    assert torch.isfinite(terms["total"])
    groups = model.param_groups()
    assert set(groups) <= set(group_lrs(cfg.optim)), set(groups)
    terms["total"].backward()
    for name, params in groups.items():  # clip4clip's mean fusion without CALM adds no module: "new" is empty
        moved = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        assert moved or not params, f"no gradient reaches parameter group {name!r}"
    trained = [p for params in groups.values() for p in params]
    before = [p.detach().clone() for p in trained]
    build_optimizer(model, cfg.optim).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trained))


def pixel_banks(model, n_text: int = 5, n_video: int = 4):
    g = torch.Generator().manual_seed(0)
    tokens = model.tokenize([f"a {c} shape number {i}" for i, c in enumerate(["red", "blue", "green", "pink",
                                                                             "grey"][:n_text])])
    frames = torch.randn(n_video, 4, 3, model.image_size, model.image_size, generator=g)
    mask = torch.ones(n_video, 4, dtype=torch.bool)
    mask[1, 3:] = False  # a short clip
    with torch.no_grad():
        return model.text_bank(tokens), model.video_bank(frames, mask)


def check_scoring_is_the_per_pair_loop(cfg: TrialConfig) -> None:
    """score_banks (chunks of texts against every video) = model.score on one (text, video) pair at a time."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    text_bank, video_bank = pixel_banks(model)
    with torch.no_grad():
        fast = score_banks(model, text_bank, video_bank, text_chunk=2)  # (N_text, N_video)
        slow = torch.tensor([[float(model.score(bank_rows(text_bank, slice(i, i + 1)),
                                                bank_rows(video_bank, slice(j, j + 1)))[0, 0])
                              for j in range(bank_len(video_bank))] for i in range(bank_len(text_bank))])
    assert fast.shape == slow.shape and torch.allclose(fast, slow, atol=1e-5), (fast, slow)


def check_frozen_equals_pixels(cfg: TrialConfig) -> None:
    """model.frozen: a training step's terms and head gradients from cached features equal those from pixels (same
    weights, dropout off), no gradient reaches the encoders, and (retrieval) every evaluation score is equal."""
    torch.manual_seed(0)
    model, task = build_model(cfg).eval(), build_task(cfg)
    weights = {**task.term_weights(), **model.term_weights()}
    records = load_records(cfg.data.train, cfg.data)[:6]
    feats = FrozenFeatures(cfg, model, None, CPU, lambda m: None)(records, "train")
    results = []
    for features in (None, feats):
        model.zero_grad()
        torch.manual_seed(1)  # the same VAE and T-MASS noise in both passes
        terms = step_terms(task, model, model(task.inputs(model, batch_of(cfg, model, features), CPU)), weights)
        terms["total"].backward()
        results.append(({k: float(v.detach()) for k, v in terms.items()},
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (pixel_terms, pixel_grads), (cached_terms, cached_grads) = results
    assert pixel_terms.keys() == cached_terms.keys()
    assert all(abs(pixel_terms[k] - cached_terms[k]) < 1e-4 for k in pixel_terms), (pixel_terms, cached_terms)
    assert cached_grads and not [n for n in cached_grads if n.startswith("backbone.") and n != FROZEN_KEPT]
    for n, g in cached_grads.items():
        assert torch.allclose(pixel_grads[n], g, atol=1e-4, rtol=1e-3), n
    if cfg.task == "retrieval":
        evals = load_records(cfg.data.eval[0], cfg.data)
        cached = FrozenFeatures(cfg, model, None, CPU, lambda m: None)(evals, "test")
        args = (cfg.data.num_frames, model.image_size, model.normalisation)
        live = similarity(model, EvalVideos(evals, *args), CPU, batch_size=5, text_chunk=7)
        from_cache = similarity(model, EvalVideos(evals, *args, features=cached), CPU, batch_size=5, text_chunk=7)
        assert torch.allclose(live, from_cache, atol=1e-5)


def check_all(tiny_doc: dict, family: str, align: str, tmp_path: Path) -> None:
    """Every check of the contract for one (family, variant)."""
    check_entry(family)
    check_one_step(trial(tiny_doc, family, align, tmp_path))
    if FAMILIES[family].task == "retrieval":
        check_scoring_is_the_per_pair_loop(trial(tiny_doc, family, align, tmp_path))
    check_frozen_equals_pixels(trial(tiny_doc, family, align, tmp_path, frozen=True))
