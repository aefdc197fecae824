"""The quiet console of `run`: which lines pass (calm_study's) and which do not (Ray's internals); lines taken from
real runs of Ray 2.60."""

import io
import logging

from calm_study.study.console import QuietStream, keep

ESC = "\x1b"
OURS = "[60d6a3b3f3-s0] epoch 3/8: loss 9.0879, plain_test t2v_R1 2.5, textured_test t2v_R1 5.8 (0.7s train, 0.1s eval)"
RAY_LINES = [
    "2026-11-30 09:48:32,635\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for this "
    "Ray cluster.",
    "2026-11-30 09:48:38,822\tINFO worker.py:2029 -- Started a local Ray instance. View the dashboard at "
    f"{ESC}[1m{ESC}[32mhttp://127.0.0.1:8265 {ESC}[39m{ESC}[22m",
    "╭────────────────────────────────────────────────────────╮",
    "│ Configuration for experiment     tune                  │",
    "View detailed results here: /tmp/fdemo/runs/anchor_ablation/tune",
    "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/ray/session/artifacts`",
    f"{ESC}[36m(TrainController pid=15780){ESC}[0m Requesting resources: {{'CPU': 0.99}} * 1",
    f"{ESC}[36m(TrainController pid=15724){ESC}[0m [2026-11-30 09:49:25,100 E 15724 15817] core_worker.cc:2465: "
    "Actor with class name: 'PreemptionWatcher' and ID: '35757d6f' has constructor arguments in the object store and "
    "max_restarts > 0",
    f"{ESC}[33m(raylet){ESC}[0m WARNING: 8 PYTHON worker processes have been started on node: be2e with address: "
    "192.0.2.2, which is 4x the maximum expected startup concurrency (2).",
    f"{ESC}[36m(RayTrainWorker pid=19554){ESC}[0m WARNING:root:No pretrained weights loaded for model 'calm-tiny'.",
    f"{ESC}[36m(RayTrainWorker pid=19554){ESC}[0m Traceback (most recent call last):",
    "[2026-11-30 09:49:25,100 E 15724 15817] core_worker.cc:2465: an error of the driver's own core worker",
    "Resume experiment with: Tuner.restore(path=\"/tmp/runs/tune\", trainable=...)",
]


def test_calm_study_lines_pass_and_rays_do_not():
    worker = f"{ESC}[36m(RayTrainWorker pid=19425){ESC}[0m {OURS}"
    assert keep(worker) == OURS  # the actor prefix goes, the line stays
    deduped = (f"{ESC}[36m(RayTrainWorker pid=1, ip=10.0.0.2){ESC}[0m {OURS}"
               f"{ESC}[32m [repeated 4x across cluster]{ESC}[0m")
    assert keep(deduped) == OURS
    for line in ("trials: 2 done, 0 running, 0 pending", "resuming study two from /tmp/runs/two/tune",
                 "anchors K  anchor source  R@1  R@5   MnR   n  Δ R@1 [95% CI]", "",
                 "calm_study: generating synthetic dataset (2 domains, 64 videos, libx264) into /tmp/cache ..."):
        assert keep(line) == line
    for line in RAY_LINES:
        assert keep(line) is None, line


def test_a_ray_log_record_goes_with_its_traceback_and_partial_lines_wait():
    out = io.StringIO()
    stream = QuietStream(out)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)d -- %(message)s"))
    logger = logging.getLogger("test_console_ray_like")
    logger.addHandler(handler)
    try:
        raise RuntimeError("trial failed")
    except RuntimeError:
        logger.error("Trial errored", exc_info=True)  # one write: the record and its traceback
    logger.removeHandler(handler)
    assert out.getvalue() == ""
    stream.write("trials: 1 done,")
    assert out.getvalue() == ""  # not a whole line yet
    stream.write(" 1 running, 0 pending\n" + RAY_LINES[6] + "\nresults: x.parquet\n")
    assert out.getvalue() == "trials: 1 done, 1 running, 0 pending\nresults: x.parquet\n"


def test_the_live_count_includes_trials_tune_has_not_created_yet(capsys):
    from types import SimpleNamespace

    from calm_study.study.ray_runner import TrialProgress

    progress = TrialProgress(6)  # a 6-trial grid, of which Tune has created 3 so far
    progress.on_step_end(0, [SimpleNamespace(status=s) for s in ("TERMINATED", "RUNNING", "PENDING")])
    progress.on_step_end(1, [SimpleNamespace(status=s) for s in ("TERMINATED", "RUNNING", "PENDING")])  # unchanged
    progress.on_step_end(2, [SimpleNamespace(status=s) for s in ("TERMINATED", "ERROR", "RUNNING")])
    assert capsys.readouterr().err.splitlines() == ["trials: 1 done, 1 running, 4 pending",
                                                    "trials: 1 done, 1 running, 3 pending, 1 failed"]


def test_a_long_worker_message_wraps_within_the_console_and_keeps_every_word_whole():
    from calm_study.progress import WORKER_WIDTH, wrapped

    path = "/scratch/calm_study-123/features/features-v1"
    message = ("epoch 3/5: loss 9.0879, msrvtt-test t2v_R1 45.2, didemo-test t2v_R1 40.1, lsmdc-test t2v_R1 20.3 "
               f"(1234.5s train, 100.2s eval) {path}")
    lines = wrapped(message)
    assert len(lines) > 1 and all(len(line) <= WORKER_WIDTH for line in lines)
    assert len("[60d6a3b3f3-s0] ") + WORKER_WIDTH <= 120  # with its trial key, a line fits 120 columns
    assert lines[0].startswith("epoch 3/5: loss 9.0879") and all(line.startswith("  ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines) == message and any(path in line for line in lines)
    assert wrapped(OURS[len("[60d6a3b3f3-s0] "):]) == [OURS[len("[60d6a3b3f3-s0] "):]]  # a short one is unchanged
