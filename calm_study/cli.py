"""Command line: `python -m calm_study {run,validate,status,report,train,data,bench} ...` (the only argparse in the
package)."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import sys
import threading
from pathlib import Path

from calm_study.config import calm_enabled
from calm_study.configio import ConfigError, load_yaml
from calm_study.external import JavaMissingError
from calm_study.names import study_name_problem
from calm_study.study.results import ResultsError
from calm_study.study.state import StudyStateError
from calm_study.study.storage import StorageError


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML, e.g. studies/anchor_ablation.yaml")
    p.add_argument("--preset", help="named preset of the study file, e.g. demo")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key (seeds=[0,1]) or a trial key (train.epochs=2); repeatable")


def cmd_validate(args: argparse.Namespace) -> int:
    from calm_study.study.spec import expand, load_study, load_study_and_presets, metric_key

    # Without --preset, every preset the file defines is checked too (a broken demo preset is a broken file).
    study = load_study(args.study, args.preset, args.sets) if args.preset else \
        load_study_and_presets(args.study, args.sets)
    trials = expand(study)
    if study.search.method == "optuna":
        q = study.search
        print(f"{args.study}: study {study.name!r} is valid: Optuna ({q.sampler}, seed {q.sampler_seed}) samples "
              f"{q.num_samples} configurations over {', '.join(q.space)}; scheduler {study.scheduler.name}; metric "
              f"{metric_key(study)} ({study.metric.mode}); {len(trials)} edge configurations of the space checked")
        return 0
    arms = {t.arm_id: t for t in trials}
    need = study.resources.gpus_per_worker * study.resources.num_workers
    if need > 0:
        import torch

        have = torch.cuda.device_count()
        if have < need:
            print(f"note: each trial needs {need:g} GPU(s) (resources.gpus_per_worker x num_workers); this machine has "
                  f"{have}: `run` here would stop at once; run it on a GPU machine or cluster (--address), or use "
                  "the demo preset")
    print(f"{args.study}: study {study.name!r} is valid: {len(arms)} arm(s) x {len(study.seeds)} seed(s) = "
          f"{len(trials)} trial(s); metric {metric_key(study)} ({study.metric.mode})")
    for arm, t in arms.items():
        c = t.config
        calm = f"CALM {c.loss.align}, K={c.anchors.count}" if calm_enabled(c) else "no CALM"
        print(f"  {arm}  {c.task}/{c.model.family} ({calm})  "
              f"{json.dumps(t.swept, sort_keys=True) if t.swept else '(base)'}")
    return 0


CONSOLE_WIDTH = 120  # the end-of-run table fits it; the report has every column


def cmd_run(args: argparse.Namespace) -> int:
    from calm_study.study.console import quiet_console, verbose_requested
    from calm_study.study.spec import load_study

    if args.wait_nodes < 0 or args.wait_timeout <= 0:
        raise ConfigError("run", [f"--wait-nodes {args.wait_nodes} --wait-timeout {args.wait_timeout:g}: a node count "
                                  ">= 0 and a timeout > 0 seconds"])
    if args.wait_nodes and not args.address:
        raise ConfigError("run", ["--wait-nodes waits for the nodes of a running cluster: give --address too"])
    study = load_study(args.study, args.preset, args.sets)  # a bad study is refused before Ray is even imported
    verbose = verbose_requested(args.verbose)
    if not verbose:
        quiet_console()  # before Ray is imported, so that its log handlers write through the filter
    from calm_study.study.ray_runner import run_study, stop_ray
    from calm_study.study.state import describe, study_trials

    again = "python -m calm_study " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        path, status = run_study(study, address=args.address, fresh=args.fresh, verbose=verbose,
                                 wait_nodes=args.wait_nodes, wait_timeout_s=args.wait_timeout)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished epoch is kept (its metrics and checkpoint are in the study's storage,"
              f"\n  {study.storage});\nto continue where each trial stopped, run the same command again:\n  {again}",
              file=sys.stderr)
        return 130
    import pandas as pd

    from calm_study.report import main_table  # pandas' and scipy's statistics: only once there is a table

    df = pd.read_parquet(path)
    print(main_table(df, study.name, width=CONSOLE_WIDTH))
    print(describe(study, study_trials(study), status, best=False))
    if any(s in ("incomplete", "interrupted") for s in status.statuses.values()):
        print(f"to continue where each trial stopped, run the same command again:\n  {again}")
    # Paths and commands on lines of their own: every line stays within CONSOLE_WIDTH unless a path alone is longer.
    report = f"python -m calm_study report {shlex.quote(args.study)}"
    report += f" --preset {args.preset}" if args.preset else ""
    print(f"results, {len(df)} rows (pandas.read_parquet reads the file, or its folder):\n  {path}\n"
          f"every table, interval and note:\n  {report}")
    stop_ray()  # after the last line; Ray's own exit handler waits 1.5 s longer (ray_runner.stop_ray says why)
    return 0 if set(status.statuses.values()) <= {"completed", "stopped_early"} else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Where a study stands, from its files alone (works while it runs, after it ended, without Ray)."""
    from calm_study.study.spec import load_study
    from calm_study.study.state import describe, study_status, study_trials

    study = load_study(args.study, args.preset, args.sets)
    trials = study_trials(study)
    status = study_status(study, trials)
    print(describe(study, trials, status))
    for t in trials:
        print(f"  {t.key}  {status.statuses[t.key]:<10} epochs {status.epochs_done[t.key]}/{t.config.train.epochs}  "
              f"{json.dumps(t.swept, sort_keys=True) if t.swept else '(base)'}")
    from calm_study.study.disk import usage_lines

    print("\n".join(usage_lines(study, [t.config for t in trials])))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Tables (Markdown, CSV, LaTeX) and plots of a study's results, with seed statistics."""
    from calm_study.report import write_report

    name, results_dir = args.study, args.results_dir or "results"
    if Path(args.study).suffix in (".yaml", ".yml"):
        from calm_study.study.spec import load_study

        study = load_study(args.study, args.preset, args.sets)
        name = study.name
        results_dir = args.results_dir or study.results_dir
    elif why := study_name_problem(name):  # a name is a folder under results_dir, never a path out of it
        raise ConfigError(name, [why])
    epoch = int(args.epoch) if args.epoch.isdigit() else args.epoch
    path, text = write_report(name, results_dir=results_dir, epoch=epoch)
    print(text)
    print(f"report: {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One trial without Ray: a trial YAML, or one trial (--trial N) of a study file."""
    from calm_study.names import CHECKPOINT_FILE as STATE_FILE
    from calm_study.study.spec import apply_overrides, expand, load_study
    from calm_study.training.fit import fit
    from calm_study.validate import trial_from_dict

    doc = load_yaml(args.config)
    if isinstance(doc, dict) and "base" in doc:
        trials = expand(load_study(args.config, args.preset, args.sets))
        if not 0 <= args.trial < len(trials):
            raise ConfigError(args.config, [f"--trial {args.trial}: the study has trials 0..{len(trials) - 1}"])
        cfg = trials[args.trial].config
    else:
        cfg = trial_from_dict(apply_overrides({"base": doc or {}}, args.sets, args.config)["base"], args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = sorted(out.glob("epoch_*/" + STATE_FILE))
    resume = done[-1].parent if (args.resume and done) else None

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None:
            target = out / f"epoch_{metrics['epoch']:03d}"
            target.mkdir(exist_ok=True)
            (checkpoint_dir / STATE_FILE).replace(target / STATE_FILE)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")

    metrics = fit(cfg, report, device=args.device, resume_dir=resume)
    print(json.dumps(metrics, indent=1))
    print(f"checkpoints and metrics.jsonl in {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Performance figures of one trial config: a trial YAML, or one trial of a study file (default: the first with
    anchors)."""
    from calm_study import bench
    from calm_study.data.sources import check_weights
    from calm_study.study.spec import apply_overrides, expand, load_study
    from calm_study.validate import trial_from_dict

    try:
        sections, batches = bench.check_options(args.only, args.batches, args.device, args.threads, steps=args.steps,
                                                eval_texts=args.eval_texts, eval_videos=args.eval_videos,
                                                clips=args.clips, trial_epochs=args.trial_epochs)
        doc = load_yaml(args.config)
        if isinstance(doc, dict) and "base" in doc:
            trials = expand(load_study(args.config, args.preset, args.sets))
            index = bench.choose_trial([t.config for t in trials], args.trial)
            cfg = trials[index].config
            what = f"{args.config}" + (f" --preset {args.preset}" if args.preset else "") + f", trial {index}"
        else:
            cfg = trial_from_dict(apply_overrides({"base": doc or {}}, args.sets, args.config)["base"], args.config)
            what = args.config
        what += "".join(f" --set {s}" for s in args.sets)
        check_weights([cfg], what)  # a pretrained tag's weights are here or can be downloaded; a file loads
        opts = bench.BenchOptions(sections=sections, batches=tuple(batches), steps=args.steps,
                                  eval_texts=args.eval_texts, eval_videos=args.eval_videos, clips=args.clips,
                                  trial_epochs=args.trial_epochs, device=args.device)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        bench.run_bench(cfg, what, opts)
    except bench.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from calm_study import data_commands as dc

    if args.data_command == "bench" and Path(args.target).is_dir():
        records, frames, size = dc.folder_datasets(args.target, args.frames, args.size)
        dc.bench(records[:args.limit], frames, size, args.decoder, args.target)
        return 0
    if Path(args.target).suffix in (".yaml", ".yml") or Path(args.target).is_file():
        datasets = dc.study_datasets(args.target, args.preset, args.sets)
    else:
        datasets = dc.named_datasets(args.target, args.root, args.split, args.frames, args.size)
    if args.data_command == "check":
        problems = dc.check(datasets)
        print("all videos readable" if not problems else f"{problems} problem(s) found")
        return 1 if problems else 0
    if args.data_command == "cache":
        return 1 if dc.fill_cache(datasets, args.workers) else 0
    from calm_study.data.sources import load_records

    ref, data, frames, size = datasets[-1]  # the last split: an evaluation split
    dc.bench(load_records(ref, data)[:args.limit], frames, size, data.decoder, ref.label)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calm_study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) a study with Ray Tune; results go to results/<study>/")
    _study_args(p)
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto, or ray://host:10001)")
    p.add_argument("--wait-nodes", type=int, default=0, metavar="N",
                   help="with --address: wait until N nodes of the cluster are alive before any trial starts (trial "
                   "concurrency is computed once, from the nodes there at the start)")
    p.add_argument("--wait-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="how long --wait-nodes waits before it gives up (exit status 2; default 600)")
    p.add_argument("--fresh", action="store_true",
                   help="archive an earlier run of this study (storage and results moved aside) and start again")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output too (its logs, every worker's lines); also CALM_STUDY_VERBOSE=1")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="write results/<study>/_report/ (Markdown, CSV, LaTeX, PNG) and print the table")
    _study_args(p)
    p.add_argument("--epoch", default="final",
                   help="final (default: each trial's last epoch), best (chosen on a validation split), or a number")
    p.add_argument("--results-dir", default=None,
                   help="where the Parquet is (default: the study file's results_dir, or results)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("status", help="trials done, running, pending and failed, and the best result so far")
    _study_args(p)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("validate", help="check a study file and list its trials, without running anything")
    _study_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("train", help="train one trial in this process, without Ray (for debugging)")
    p.add_argument("config", help="a trial YAML (model/anchors/loss/... sections) or a study YAML")
    p.add_argument("--preset", help="study preset (study files only)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trial", type=int, default=0, help="which trial of a study file (see `validate`)")
    p.add_argument("--out", default="runs/debug", help="folder for checkpoints and metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="print training step, evaluation, decoding and frozen-vs-fine-tuning timings of "
                       "one trial config (no Ray)")
    p.add_argument("config", help="a study YAML (with --preset, --set, --trial) or a trial YAML")
    p.add_argument("--preset", help="study preset (study files only)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--trial", type=int, default=None,
                   help="which trial of a study file (default: the first with CALM; see `validate`)")
    p.add_argument("--only", default=",".join("abcd"),
                   help="sections, comma-separated: a (training step, CALM overhead), b (evaluation), c (decoding), "
                   "d (frozen vs fine-tuning trial); default all")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 4], metavar="B",
                   help="(a) batch sizes to time, at least two; the line through them is read at train.batch_size")
    p.add_argument("--steps", type=int, default=3, help="(a) timed steps per batch size (median; after 1 warm-up)")
    p.add_argument("--eval-texts", type=int, default=1000, help="(b) texts N_text")
    p.add_argument("--eval-videos", type=int, default=1000, help="(b) videos N_video")
    p.add_argument("--clips", type=int, default=20, help="(c) clips of the last evaluation split to decode")
    p.add_argument("--trial-epochs", type=int, default=None, help="(d) train.epochs of each run (default: the "
                   "config's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_bench)

    data = sub.add_parser("data", help="check, cache or benchmark a study's videos before a long run")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    helps = {"check": "list missing or unreadable videos of every split a study (or one dataset) reads",
             "cache": "decode every video of a study once into data.frame_cache",
             "bench": "print clips/s decoding videos (a study's last split, or a folder) without and with the cache"}
    for name, text in helps.items():
        p = data_sub.add_parser(name, help=text)
        p.add_argument("target", help="a study YAML, or a dataset name (msrvtt, didemo, lsmdc, msvd) with --root"
                       + (", or a folder of videos" if name == "bench" else ""))
        p.add_argument("--preset", help="study preset")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--root", help="dataset root (with a dataset name)")
        p.add_argument("--split", help="one split (with a dataset name; default: all)")
        p.add_argument("--frames", type=int, default=12, help="frames per video (with a dataset name)")
        p.add_argument("--size", type=int, default=224, help="image size (with a dataset name)")
        p.add_argument("--workers", type=int, default=2, help="decoding processes (cache)")
        p.add_argument("--limit", type=int, default=50, help="videos to time (bench)")
        p.add_argument("--decoder", default="decord", help="decord or pyav (bench on a folder)")
        p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can fix, printed as their one paragraph (exit status 2). The report's is among them once a
    command has imported the report (pandas and scipy: a second that `validate` and `run`'s start need not pay)."""
    report = sys.modules.get("calm_study.report.select")
    return (ConfigError, StudyStateError, StorageError, ResultsError, FileNotFoundError, JavaMissingError,
            *((report.ReportError,) if report else ()))


def entry() -> None:
    """`python -m calm_study` and the `calm-study` script: main(), then a quick exit. What Python does at exit for us
    still happens (running threads finish, the exit handlers run: Ray's shutdown, temporary folders, log handlers);
    what is skipped is the interpreter's teardown of every loaded module, 1-2 s once torch, open_clip and Ray are
    loaded (docs/performance.md), which frees nothing the operating system does not free anyway."""
    code = main()
    if sys.getprofile() or sys.gettrace():  # a profiler or coverage writes its data at the normal exit
        sys.exit(code)
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # CPython's own exit step (the handlers in reverse order of registration)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

