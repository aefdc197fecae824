"""Running on clusters without a SLURM: a restored study takes the current run's runtime settings (scratch paths),
`run --wait-nodes`, Ray's cluster-launcher config checked by Ray's own validator, the KubeRay manifest's structure,
and the SLURM batch script's syntax. tests/test_slurm.py runs the batch script on a real SLURM."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


# ---- a restored study runs with this run's data paths and caches -------------------------------------------------
def test_a_restored_trial_takes_this_runs_scratch_paths_and_keeps_its_arm(tmp_path, data_cache):
    from calm_study.config import ROLE, RUNTIME, fields_with_role, under
    from calm_study.study.ray_runner import param_space
    from calm_study.study.runtime import current_runtime, publish_runtime
    from calm_study.study.spec import expand, load_study

    from .conftest import two_trial_study

    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump(two_trial_study("moved", str(tmp_path / "runs"), str(tmp_path / "results"),
                                                   str(data_cache))))
    first = load_study(path, sets=[f"data.frame_cache={tmp_path / 'job1' / 'frames'}"])
    # What Tune pickles at the first run and hands back, unchanged, to every restored trial's driver.
    restored = param_space(first, expand(first))["trial"]["grid_search"]
    again = load_study(path, sets=[f"data.frame_cache={tmp_path / 'job2' / 'frames'}", "data.loader_workers=2"])
    assert [t.key for t in expand(again)] == [t["key"] for t in restored]  # scratch paths do not change arms
    publish_runtime(again, expand(again))

    runtime = fields_with_role(RUNTIME[ROLE])
    for entry in restored:
        before = copy.deepcopy(entry)
        now = current_runtime(entry, str(tmp_path / "runs"), "moved")
        assert entry == before  # Tune's record of the trial is not edited
        assert now["trial"]["data"]["frame_cache"] == str(tmp_path / "job2" / "frames")
        assert now["trial"]["data"]["loader_workers"] == 2
        assert now["trial"]["data"]["cache_dir"] == str(data_cache)
        flat_now, flat_before = _flat(now["trial"]), _flat(entry["trial"])
        changed = {k for k in flat_now if flat_now[k] != flat_before.get(k)}
        assert changed == {"data.frame_cache", "data.loader_workers"} and all(under(k, runtime) for k in changed)


def test_a_study_without_a_runtime_record_keeps_its_trials_as_tune_restored_them(tmp_path):
    from calm_study.study.runtime import current_runtime

    entry = {"key": "abc-s0", "trial": {"data": {"frame_cache": "/old"}}}
    assert current_runtime(entry, str(tmp_path / "runs"), "old_study") == entry


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


# ---- `run --wait-nodes` -------------------------------------------------------------------------------------------
def test_wait_nodes_needs_an_address_and_sensible_numbers(capsys):
    from calm_study.cli import main

    assert main(["run", "studies/anchor_ablation.yaml", "--preset", "demo", "--wait-nodes", "2"]) == 2
    assert "--wait-nodes waits for the nodes of a running cluster: give --address too" in capsys.readouterr().err
    assert main(["run", "studies/anchor_ablation.yaml", "--address", "auto", "--wait-nodes", "-1"]) == 2
    assert "a node count >= 0 and a timeout > 0 seconds" in capsys.readouterr().err


# ---- Ray's cluster launcher (AWS) ---------------------------------------------------------------------------------
def launcher_config() -> dict:
    return yaml.safe_load((CLUSTER / "aws" / "calm_study.yaml").read_text())


def test_the_aws_launcher_config_passes_rays_own_validator():
    """What `ray up` does with the file before it talks to AWS: fill in the provider's defaults (prepare_config), then
    check the result against ray-schema.json and Ray's rules (validate_config), from the installed ray package."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(launcher_config())
    validate_config(config)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["node_config_typo"] = {}
    with pytest.raises(jsonschema.ValidationError):  # the validator is really checking
        validate_config(broken)

    types = config["available_node_types"]
    head, workers = types[config["head_node_type"]], types["gpu_worker"]
    assert head["resources"]["CPU"] >= 1 and not head["resources"].get("GPU")  # room for the trial drivers
    assert workers["resources"]["GPU"] >= 1
    assert workers["min_workers"] == workers["max_workers"] == config["max_workers"]  # fixed size (see the file)
    assert "IamInstanceProfile" in workers["node_config"]  # Train workers write checkpoints to S3 themselves
    assert config["file_mounts"] == {"~/calm_study": "."}
    assert "python -m pip install -e ~/calm_study" in config["setup_commands"]
    start = " ".join(config["head_start_ray_commands"])
    assert "--include-dashboard=true" in start and "--dashboard-host=127.0.0.1" in start  # State API, on localhost


# ---- KubeRay ------------------------------------------------------------------------------------------------------
def test_the_kuberay_rayjob_is_a_consistent_rayjob_whose_entrypoint_is_a_valid_run():
    """No RayJob CRD schema installs from the Python registry, so this checks the manifest's structure and that its
    entrypoint is a command line calm_study accepts (docs/cluster.md says so)."""
    import shlex

    from calm_study.cli import build_parser
    from calm_study.study.spec import load_study

    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert head["rayStartParams"]["include-dashboard"] == "true" and int(head["rayStartParams"]["num-cpus"]) >= 1
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"]
    containers = [head["template"]["spec"]["containers"][0], workers["template"]["spec"]["containers"][0]]
    assert len({c["image"] for c in containers}) == 1  # one image: the same calm_study everywhere
    gpu = containers[1]["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == workers["rayStartParams"]["num-gpus"]
    assert all(c["envFrom"] == [{"secretRef": {"name": "calm-study-aws"}}] for c in containers)
    assert cluster["rayVersion"] == ray.__version__  # the version calm_study pins
    assert "FROM rayproject/ray:" + cluster["rayVersion"] in (CLUSTER / "kuberay" / "Dockerfile").read_text()

    bash = shlex.split(spec["entrypoint"])
    assert bash[:2] == ["bash", "-c"]
    lexer = shlex.shlex(bash[2], posix=True, punctuation_chars=";")  # the script's commands, quotes respected
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == ";":
            commands.append([])
        else:
            commands[-1].append(token)
    run_argv = commands[0]
    assert run_argv[:3] == ["python", "-m", "calm_study"]
    args = build_parser().parse_args(run_argv[3:])
    assert args.command == "run" and args.address == "auto" and args.wait_nodes == 1 + workers["replicas"]
    study = load_study(REPO / args.study, args.preset, args.sets)
    assert study.storage.startswith("s3://") and study.base.data.frame_cache == "/scratch/frames"
    assert commands[1] == ["status=$?"] and commands[-1] == ["exit", "$status"]  # run's exit status is the job's
    copy_argv = commands[2]
    assert copy_argv[:2] == ["python", "-c"]
    compile(copy_argv[2], "entrypoint", "exec")  # the results copy is valid Python
    assert f"results/{study.name}" in copy_argv[2]


# ---- SLURM --------------------------------------------------------------------------------------------------------
def test_the_sbatch_script_is_valid_bash_and_asks_for_a_warning_and_requeue():
    script = CLUSTER / "slurm" / "calm_study.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    directives = [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]
    assert "--requeue" in directives and "--open-mode=append" in directives  # a requeued run appends to the log
    (signal,) = [d for d in directives if d.startswith("--signal=")]
    assert signal.startswith("--signal=B:USR1@")  # to the batch shell, whose trap stops the study and requeues
