"""Benchmark: leak-free pairwise evaluation of a text-conditioned family (T-MASS by default), over chunk sizes.

A thin wrapper over calm_study.bench.evaluation (section (b) of `python -m calm_study bench`), kept for its chunk
sweep at an arbitrary width D: scores N_text × N_video pairs (T frames, width D, `trials` stochastic texts per pair)
through the family's own `score`, in chunks of texts, exactly as an evaluation does after its banks are built, and
prints seconds and peak memory per chunk size. The banks are random (the CLIP encoders are not part of this figure;
`python -m calm_study bench --only b` adds them); the pooling and radius heads are the real modules at width D.

    python benchmarks/eval_scoring.py                       # 1,000 x 1,000, T = 12, D = 512, 20 trials, CPU
    python benchmarks/eval_scoring.py --device cuda --chunks 64 256 1000
"""

from __future__ import annotations

import argparse

import torch

from calm_study.bench.evaluation import measure_scoring, random_banks
from calm_study.models.families import build_model
from calm_study.models.tmass import RadiusHead
from calm_study.models.xpool import TextConditionedPool
from calm_study.validate import trial_from_dict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="tmass", choices=["tmass", "xpool"])
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--videos", type=int, default=1000)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model_doc = {"family": args.family, "clip": "calm-tiny", "pretrained": None}
    if args.family == "tmass":  # T-MASS's own knob (xpool has no stochastic texts)
        model_doc["trials"] = args.trials
    cfg = trial_from_dict({"model": model_doc, "loss": {"align": "none"}, "data": {"num_frames": args.frames}})
    model = build_model(cfg)  # the real family; its pooling and radius heads are rebuilt at the benchmark's width
    model.pool = TextConditionedPool(args.width)
    if args.family == "tmass":
        model.radius = RadiusHead(args.frames, args.width)
    model = model.to(device).eval()
    text, video = random_banks(cfg, args.texts, args.videos, args.frames, args.width, device)

    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"{args.family}: {args.texts} texts x {args.videos} videos, T={args.frames}, D={args.width}, "
          f"{args.trials if args.family == 'tmass' else 1} trial(s) per pair, on {name}")
    for chunk in args.chunks:
        r = measure_scoring(model, text, video, chunk, device)
        print(f"  text_chunk {chunk:5d}: {r['seconds']:7.2f} s, {r['peak_mib']:8.0f} MiB {r['memory']}; "
              f"scores {r['shape']}")


if __name__ == "__main__":
    main()
