"""Frozen-feature mode (model.frozen): the feature cache, exactness against the live encoders, what trains, refusals."""

import copy
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from calm_study.data.dataset import EvalVideos, TrainPairs, collate
from calm_study.data.feature_cache import FeatureCache, weights_fingerprint
from calm_study.data.records import VideoRecord
from calm_study.data.sources import load_records
from calm_study.models.families import FAMILIES, build_model
from calm_study.tasks.retrieval.scoring import similarity
from calm_study.training.fit import fit
from calm_study.training.frozen import FrozenFeatures
from calm_study.validate import check_trial, trial_from_dict

CPU = torch.device("cpu")
NORM = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def frozen_doc(tiny_doc, tmp_path, family="tmass", **model):
    doc = copy.deepcopy(tiny_doc)
    doc["model"].update(family=family, frozen=True, **model)
    doc["task"] = FAMILIES[family].task
    doc["anchors"]["encode"] = "once"
    doc["loss"] = {"align": "vae"}
    doc["data"]["feature_cache"] = str(tmp_path / "features")
    if family == "captioner":
        doc["caption"] = {"max_length": 10}
    return doc


# ---- the cache itself, with simple encoders standing in for CLIP (the cache is what is tested) -------------------

def fake_records(tmp_path: Path, n: int = 3, write: bool = True) -> list[VideoRecord]:
    records = []
    for i in range(n):
        path = tmp_path / f"v{i}.mp4"
        if write:
            path.write_bytes(b"x" * (i + 1))
        records.append(VideoRecord(f"v{i}", path, (f"caption {i}", "shared caption")))
    return records


def counting_encoders(log: Path, delay: float = 0.0):
    def videos(records):
        with open(log, "a") as f:
            f.write("videos\n")
        time.sleep(delay)
        n = len(records)
        return torch.arange(n * 2 * 3, dtype=torch.float32).view(n, 2, 3), torch.ones(n, 2, dtype=torch.bool)

    def texts(captions):
        return torch.stack([torch.full((3,), float(len(c))) for c in captions])

    return videos, texts


def calls(log: Path) -> int:
    return log.read_text().count("videos") if log.exists() else 0


def test_feature_cache_computes_once_and_serves_by_record_and_caption(tmp_path):
    records = fake_records(tmp_path)
    cache = FeatureCache(tmp_path / "fc", "w1", 2, 32, NORM, "decord")
    log = tmp_path / "calls.txt"
    first = cache.get(records, *counting_encoders(log))
    again = cache.get(records, *counting_encoders(log))
    assert calls(log) == 1
    frames, mask = again.video(records[2])
    assert torch.equal(frames, torch.arange(12, 18, dtype=torch.float32).view(2, 3)) and mask.all()
    assert torch.equal(again.text("shared caption"), torch.full((3,), 14.0))
    assert len(again.text_rows) == 4  # distinct captions only
    assert torch.equal(first.frames, again.frames)


def test_feature_cache_misses_when_anything_behind_a_feature_changes(tmp_path):
    records = fake_records(tmp_path)
    log = tmp_path / "calls.txt"
    cache = FeatureCache(tmp_path / "fc", "w1", 2, 32, NORM, "decord")
    cache.get(records, *counting_encoders(log))
    FeatureCache(tmp_path / "fc", "w2", 2, 32, NORM, "decord").get(records, *counting_encoders(log))  # weights
    assert calls(log) == 2
    FeatureCache(tmp_path / "fc", "w1", 4, 32, NORM, "decord").get(records, *counting_encoders(log))  # T
    assert calls(log) == 3
    renamed = [records[0], records[1], VideoRecord("v2", records[2].path, ("another caption",))]
    cache.get(renamed, *counting_encoders(log))  # a caption
    assert calls(log) == 4
    stat = records[1].path.stat()
    os.utime(records[1].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten video
    cache.get(records, *counting_encoders(log))
    assert calls(log) == 5
    cache.get(records, *counting_encoders(log))
    assert calls(log) == 5


def test_a_damaged_entry_is_recomputed(tmp_path):
    records = fake_records(tmp_path)
    log = tmp_path / "calls.txt"
    cache = FeatureCache(tmp_path / "fc", "w1", 2, 32, NORM, "decord")
    cache.get(records, *counting_encoders(log))
    entry = cache.entry_path(cache.identity(records))
    entry.write_bytes(entry.read_bytes()[:100])  # torn
    again = cache.get(records, *counting_encoders(log))
    assert calls(log) == 2 and again.frames.shape == (3, 2, 3)


def _fill_in_other_process(root: str, folder: str, log: str, delay: float) -> None:
    records = fake_records(Path(folder), write=False)
    FeatureCache(root, "w1", 2, 32, NORM, "decord").get(records, *counting_encoders(Path(log), delay))


def test_concurrent_trials_compute_an_entry_once(tmp_path):
    """Two processes ask for the same split at once: one computes (holding the entry's lock), the other waits for it
    and reads the entry; the encoders run once."""
    fake_records(tmp_path)  # the video files, created before both processes stat them
    log = tmp_path / "calls.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill_in_other_process, args=(str(tmp_path / "fc"), str(tmp_path), str(log), 2.0))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert calls(log) == 1
    assert not list((tmp_path / "fc").rglob(".*.tmp-*"))  # no temporary file left behind


def test_weights_fingerprint_tells_initialisations_apart():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 3)
    b = copy.deepcopy(a)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.weight[0, 0] += 1e-6
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(a, skip=("weight",)) == weights_fingerprint(b, skip=("weight",))


# ---- exactness: cached features give what the live encoders give -------------------------------------------------

def test_cached_features_equal_the_encoders_outputs(tiny_doc, tmp_path):
    cfg = trial_from_dict(frozen_doc(tiny_doc, tmp_path))
    model = build_model(cfg)
    records = load_records(cfg.data.eval[0], cfg.data)
    feats = FrozenFeatures(cfg, model, None, CPU, lambda m: None)(records, "test")
    pixels = EvalVideos(records, cfg.data.num_frames, model.image_size, model.normalisation)
    with torch.no_grad():
        for i in (0, len(records) - 1):
            want = model.backbone.clip.encode_image(pixels[i]["frames"])  # (T, D), open_clip's own
            got, mask = feats.video(records[i])
            assert torch.allclose(got, want, atol=1e-5) and torch.equal(mask, pixels[i]["mask"])
        caption = records[0].captions[0]
        want = model.backbone.clip.encode_text(model.tokenize([caption]))[0]  # full 77-token context
        assert torch.allclose(feats.text(caption), want, atol=1e-5)


@pytest.mark.parametrize("family", ["clip4clip", "xpool", "tmass"])
def test_frozen_evaluation_scores_every_pair_as_the_live_model_does(tiny_doc, tmp_path, family):
    """The same weights score an evaluation set identically from cached features and from pixels."""
    cfg = trial_from_dict(frozen_doc(tiny_doc, tmp_path, family))
    torch.manual_seed(0)
    model = build_model(cfg)
    records = load_records(cfg.data.eval[0], cfg.data)
    feats = FrozenFeatures(cfg, model, None, CPU, lambda m: None)(records, "test")
    args = (cfg.data.num_frames, model.image_size, model.normalisation)
    live = similarity(model, EvalVideos(records, *args), CPU, batch_size=5, text_chunk=7)
    cached = similarity(model, EvalVideos(records, *args, features=feats), CPU, batch_size=5, text_chunk=7)
    assert live.shape == (sum(len(r.captions) for r in records), len(records))
    assert torch.allclose(live, cached, atol=1e-5)


@pytest.mark.parametrize("family", ["clip4clip", "tmass", "captioner"])
def test_a_training_step_on_cached_features_equals_the_step_on_pixels(tiny_doc, tmp_path, family):
    """Loss terms and every head gradient of one batch match between features and pixels (same weights, dropout
    off), and no gradient reaches the frozen encoders."""
    from calm_study.tasks import build_task
    from calm_study.training.fit import step_terms

    cfg = trial_from_dict(frozen_doc(tiny_doc, tmp_path, family))
    torch.manual_seed(0)
    model = build_model(cfg).eval()  # eval: dropout off, so both passes see the same function
    task = build_task(cfg)
    records = load_records(cfg.data.train, cfg.data)[:6]
    feats = FrozenFeatures(cfg, model, None, CPU, lambda m: None)(records, "train")
    args = (cfg.data.num_frames, model.image_size, model.normalisation)
    weights = {**task.term_weights(), **model.term_weights()}
    grads, losses = [], []
    for items in (TrainPairs(records, *args), TrainPairs(records, *args, features=feats)):
        batch = collate([items[i] for i in range(8)])
        model.zero_grad()
        torch.manual_seed(1)  # the same VAE and T-MASS noise in both passes
        terms = step_terms(task, model, model(task.inputs(model, batch, CPU)), weights)
        terms["total"].backward()
        losses.append({k: float(v.detach()) for k, v in terms.items()})
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0].keys() == losses[1].keys()
    assert all(abs(losses[0][k] - losses[1][k]) < 1e-4 for k in losses[0]), losses
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert not any(n.startswith("backbone.") and n != "backbone.clip.logit_scale" for n in grads[1])
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-4, rtol=1e-3), n


# ---- trials ------------------------------------------------------------------------------------------------------

def _trial(cfg, tmp_path, resume_dir=None):
    """fit, keeping each epoch's metrics and a copy of each checkpoint folder."""
    import shutil

    epochs, folders = [], []

    def report(metrics, ckpt):
        epochs.append(metrics)
        if ckpt is not None:
            folders.append(Path(shutil.copytree(ckpt, tmp_path / f"ckpt-{len(list(tmp_path.glob('ckpt-*')))}")))

    fit(cfg, report, resume_dir=resume_dir)
    return epochs, folders


def untimed(metrics):
    from calm_study.names import COST_KEYS

    return {k: v for k, v in metrics.items() if k not in COST_KEYS}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tmass", "captioner"])
def test_a_frozen_trial_is_the_same_cold_or_warm_and_resumes_exactly(tiny_doc, tmp_path, family):
    cfg = trial_from_dict(frozen_doc(tiny_doc, tmp_path, family))
    cold, folders = _trial(cfg, tmp_path)  # extracts into the empty feature cache
    assert list((tmp_path / "features").rglob("*.npz"))
    warm, _ = _trial(cfg, tmp_path)  # reads it
    assert cold[-1]["status"] == "completed" and [untimed(m) for m in cold] == [untimed(m) for m in warm]
    # Checkpoints hold what trains, not the fixed encoders (rebuilt identically on resume) ...
    state = torch.load(folders[0] / "state.pt", weights_only=True)
    assert state["frozen_weights"] and not [k for k in state["model"] if k.startswith("backbone.")
                                            and k != "backbone.clip.logit_scale"]
    trainable = [p for group in build_model(cfg).param_groups().values() for p in group]
    assert sum(len(g["params"]) for g in state["optimizer"]["param_groups"]) == len(trainable)
    # ... and resuming after epoch 1 gives epoch 2 exactly as the uninterrupted trial.
    resumed, _ = _trial(cfg, tmp_path, resume_dir=folders[0])
    assert [untimed(m) for m in resumed] == [untimed(m) for m in cold[1:]]


def test_a_frozen_checkpoint_refuses_other_encoder_weights(tiny_doc, tmp_path):
    """A frozen checkpoint does not hold the encoders: resuming with other weights under the same config (the
    model.pretrained file was replaced) is refused, not silently trained on."""
    import open_clip

    from calm_study.clip_archs import register_tiny_models

    register_tiny_models()
    weights = tmp_path / "clip.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("calm-tiny").state_dict(), weights)
    doc = frozen_doc(tiny_doc, tmp_path, "clip4clip", pretrained=str(weights))
    doc["train"]["epochs"] = 1
    _, folders = _trial(trial_from_dict(doc), tmp_path)
    torch.manual_seed(1)
    torch.save(open_clip.create_model("calm-tiny").state_dict(), weights)  # other weights, same path
    doc["train"]["epochs"] = 2
    with pytest.raises(ValueError, match="trained on frozen CLIP encoders with weights"):
        _trial(trial_from_dict(doc), tmp_path, resume_dir=folders[0])


def test_frozen_refuses_anchors_encoded_every_step(tiny_doc, tmp_path):
    from calm_study.configio import ConfigError

    doc = frozen_doc(tiny_doc, tmp_path)
    doc["anchors"]["encode"] = "every_step"
    with pytest.raises(ConfigError) as e:
        trial_from_dict(doc, "frozen.yaml")
    text = str(e.value)
    assert "frozen.yaml" in text and "anchors.encode: every_step" in text and "model.frozen" in text
    assert "set anchors.encode: once" in text
    assert check_trial(replace_encode(trial_from_dict(frozen_doc(tiny_doc, tmp_path)), "every_step"))
    baseline = frozen_doc(tiny_doc, tmp_path)
    baseline["anchors"] = {"count": 0, "encode": "every_step"}
    baseline["loss"] = {"align": "none"}
    trial_from_dict(baseline)  # no anchors: nothing is encoded every step, so nothing to refuse
    assert not check_trial(trial_from_dict(frozen_doc(tiny_doc, tmp_path)))  # once: accepted


def replace_encode(cfg, encode):
    from dataclasses import replace

    return replace(cfg, anchors=replace(cfg.anchors, encode=encode))
