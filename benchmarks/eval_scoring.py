"""Benchmark: leak-free pairwise evaluation of a text-conditioned family (T-MASS by default).

Scores N_text × N_video pairs (T frames, width D, `trials` stochastic texts per pair) through the family's own
`score`, in chunks of texts, exactly as an evaluation does after its banks are built, and prints seconds and peak
memory per chunk size. The banks are random (the CLIP encoders are not part of this figure); the pooling and radius
heads are the real modules at width D.

    python benchmarks/eval_scoring.py                       # 1,000 x 1,000, T = 12, D = 512, 20 trials, CPU
    python benchmarks/eval_scoring.py --device cuda --chunks 64 256 1000
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

import torch

from calm_study.models.families import build_model
from calm_study.models.tmass import RadiusHead
from calm_study.models.xpool import TextConditionedPool
from calm_study.tasks.retrieval.scoring import score_banks
from calm_study.validate import trial_from_dict


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class PeakRSS:
    """The highest resident set size seen while the block runs (sampled every 5 ms from /proc)."""

    def __enter__(self):
        self.start = self.peak = rss_mib()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_mib())


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

    cfg = trial_from_dict({"model": {"family": args.family, "clip": "calm-tiny", "pretrained": None,
                                     "trials": args.trials},
                           "anchors": {"count": 0}, "loss": {"align": "none"}, "data": {"num_frames": args.frames}})
    model = build_model(cfg)  # the real family; its pooling and radius heads are rebuilt at the benchmark's width
    model.pool = TextConditionedPool(args.width)
    if args.family == "tmass":
        model.radius = RadiusHead(args.frames, args.width)
    model = model.to(device).eval()
    g = torch.Generator().manual_seed(0)
    text = {"text": torch.randn(args.texts, args.width, generator=g)}
    if args.family == "tmass":
        text["noise"] = torch.rand(args.texts, args.trials, args.width, generator=g)
    video = {"frames": torch.randn(args.videos, args.frames, args.width, generator=g),
             "mask": torch.ones(args.videos, args.frames, dtype=torch.bool)}
    text = {k: v.to(device) for k, v in text.items()}
    video = {k: v.to(device) for k, v in video.items()}

    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"{args.family}: {args.texts} texts x {args.videos} videos, T={args.frames}, D={args.width}, "
          f"{args.trials if args.family == 'tmass' else 1} trial(s) per pair, on {name}")
    for chunk in args.chunks:
        gc.collect()
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        with PeakRSS() as rss:
            tic = time.perf_counter()
            sim = score_banks(model, text, video, text_chunk=chunk)
            if gpu:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - tic
        if gpu:
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            what = "peak GPU memory above the banks"
        else:
            peak = rss.peak - rss.start
            what = "peak RSS above the banks"
        print(f"  text_chunk {chunk:5d}: {seconds:7.2f} s, {peak:8.0f} MiB {what}; scores {tuple(sim.shape)}")


if __name__ == "__main__":
    main()
