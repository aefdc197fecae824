"""Section (c): clips/s decoding videos without the frame cache, filling it, and reading it warm.

The same measurement as `python -m calm_study data bench` (data/bench.py `bench_decoding`), on the first clips of
the config's last evaluation split. Rates are single-process and single-thread, so they compare like with like; a
DataLoader with W workers gets up to W times as many clips/s on W free cores.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch

from calm_study.clip_archs import image_size
from calm_study.config import TrialConfig
from calm_study.configio import ConfigError
from calm_study.data.bench import NothingDecodable, bench_decoding
from calm_study.data.records import VideoRecord
from calm_study.data.sources import load_records
from calm_study.progress import say


def decode_rates(records: list[VideoRecord], num_frames: int, size: int, decoder: str, label: str,
                 out: Callable[[str], None] = print, indent: str = "") -> dict:
    """Time and print bench_decoding on `records` with one torch thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-core rates: comparable between machines and with DataLoader workers
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = bench_decoding(records, num_frames, size, tmp, decoder=decoder)
    except NothingDecodable as e:
        shown = "; ".join(f"{path} ({reason})" for path, reason in e.failures[:5])
        more = f"; and {len(e.failures) - 5} more" if len(e.failures) > 5 else ""
        raise ConfigError(label, [f"none of the {len(e.failures)} videos can be decoded with decoder {decoder}, so "
                                  f"there is nothing to time: {shown}{more}. Give videos that play, or try the other "
                                  "decoder (data.decoder, or --decoder for a folder: decord or pyav)"]) from None
    finally:
        torch.set_num_threads(threads)
    out(f"{indent}{label}: {result['clips']} clips, T={num_frames}, {size}x{size}, decoder {decoder}, one process, "
        f"1 torch thread" + (f", {result['failed']} unreadable (left out)" if result["failed"] else ""))
    out(f"{indent}  decode (no cache):  {result['decode_clips_per_s']:8.1f} clips/s")
    out(f"{indent}  fill the cache:     {result['fill_clips_per_s']:8.1f} clips/s")
    out(f"{indent}  read (warm cache):  {result['cached_clips_per_s']:8.1f} clips/s  ({result['speedup']:.1f}x decode)")
    return result


def run_decoding(cfg: TrialConfig, clips: int, out: Callable[[str], None]) -> dict:
    """Print section (c) for the first `clips` videos of the config's last evaluation split."""
    ref = cfg.data.eval[-1]
    size = image_size(cfg.model.clip)
    say(f"(c) decoding {clips} clips of {ref.label} ...")
    records = load_records(ref, cfg.data)[:clips]
    out(f"(c) decoding uint8 frames (decode + resize + crop; normalisation left out) of the first {len(records)} "
        f"videos of the last evaluation split, without the frame cache, filling it and reading it warm")
    return decode_rates(records, cfg.data.num_frames, size, cfg.data.decoder, ref.label, out, "  ")
