"""The command line as a user types it: validate, errors with exit status 2, and `train` with --resume."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "calm_study", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_validate_lists_the_trials():
    out = cli("validate", "studies/anchor_ablation.yaml", "--preset", "demo", "--set", "seeds=[0, 1]")
    assert out.returncode == 0, out.stderr
    assert "6 arm(s) x 2 seed(s) = 12 trial(s)" in out.stdout and '"anchors.count": 248' in out.stdout
    arms = [line for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(arms) == 6 and all("retrieval/tmass (" in line for line in arms)  # every trial's task and family
    assert "no CALM" in arms[0] and "CALM vae, K=157" in arms[3]


def test_configuration_errors_exit_2_with_every_problem(tmp_path):
    out = cli("validate", "studies/loss_ablation.yaml", "--set", "loss.alpah=1", "--set", "train.epochs=x")
    assert out.returncode == 2
    assert "base.loss.alpah: unknown key (did you mean 'alpha'?)" in out.stderr
    assert "base.train.epochs: expected an integer, got 'x'" in out.stderr
    out = cli("validate", tmp_path / "missing.yaml")
    assert out.returncode == 2 and "missing.yaml" in out.stderr and "cannot read the file" in out.stderr


def test_train_one_trial_without_ray_and_resume(tmp_path, tiny_doc):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(tiny_doc))
    out_dir = tmp_path / "out"
    first = cli("train", config, "--out", out_dir, "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr
    assert (out_dir / "epoch_001" / "state.pt").is_file()
    second = cli("train", config, "--out", out_dir, "--resume")  # 2 epochs configured: continues with epoch 2
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stderr
    epochs = [json.loads(line)["epoch"] for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
