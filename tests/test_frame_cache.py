"""FrameCache on real mp4 files: hits equal fresh decodes, invalidation, repair, concurrent fills, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from calm_study.data.bench import NothingDecodable, bench_decoding
from calm_study.data.frame_cache import FrameCache
from calm_study.data.records import VideoRecord
from calm_study.data.video import DECODERS, VideoDecodeError, read_video, resize_crop_frames
from tests.test_video import PALETTE, solid_video, write_h264, write_mp4

REPO_ROOT = Path(__file__).resolve().parents[1]
T, S = 4, 24


def expected(record: VideoRecord, t: int = T, s: int = S, decoder: str = "decord"):
    frames, mask = read_video(record.path, t, start=record.start, end=record.end, decoder=decoder)
    return resize_crop_frames(frames, s), mask


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


@pytest.fixture
def videos(tmp_path: Path) -> list[VideoRecord]:
    folder = tmp_path / "videos"
    folder.mkdir()
    records = [VideoRecord(f"v{k}", write_mp4(folder / f"v{k}.mp4", solid_video(PALETTE[k:] + PALETTE[:k])), ("c",))
               for k in range(3)]
    records.append(VideoRecord("noisy", write_h264(folder / "noisy.mp4", num_frames=30), ("c",)))
    return records


@pytest.mark.parametrize("decoder", DECODERS)
def test_miss_then_hit(videos: list[VideoRecord], tmp_path: Path, decoder: str) -> None:
    cache = FrameCache(tmp_path / "cache", T, S, decoder=decoder)
    for record in videos:
        assert not cache.contains(record)
        frames, mask = cache.get(record)  # miss: decoded and stored
        assert frames.shape == (T, S, S, 3) and frames.dtype == torch.uint8 and mask.dtype == torch.bool
        assert cache.contains(record)
        entry = cache.entry_path(record)
        assert entry.is_file() and entry.parent.parent == cache.folder
        assert entry.stat().st_size < T * S * S * 3 + 4096  # raw uint8 plus small headers
        again, mask_again = cache.get(record)  # hit
        want, want_mask = expected(record, decoder=decoder)
        assert torch.equal(frames, want) and torch.equal(again, want)
        assert torch.equal(mask, want_mask) and torch.equal(mask_again, want_mask)
    assert cache.folder.name == f"frames-v1-t{T}-s{S}"
    assert temp_files(tmp_path / "cache") == []


def test_entries_per_window_and_per_size(videos: list[VideoRecord], tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache", T, S)
    whole = videos[0]
    window = VideoRecord(whole.video_id, whole.path, whole.captions, start=0.2, end=0.6)
    assert cache.entry_path(whole) != cache.entry_path(window)
    frames_whole, _ = cache.get(whole)
    frames_window, _ = cache.get(window)
    assert torch.equal(frames_window, expected(window)[0]) and not torch.equal(frames_window, frames_whole)
    bigger = FrameCache(tmp_path / "cache", T, 2 * S)
    assert bigger.folder != cache.folder and not bigger.contains(whole)
    assert bigger.get(whole)[0].shape == (T, 2 * S, 2 * S, 3)


def test_short_clip_padded_through_cache(tmp_path: Path) -> None:
    record = VideoRecord("short", write_mp4(tmp_path / "three.mp4", solid_video(PALETTE[:3])), ())
    cache = FrameCache(tmp_path / "cache", 8, S)
    for _ in range(2):  # miss, then hit
        frames, mask = cache.get(record)
        assert mask.tolist() == [True] * 3 + [False] * 5
        assert all(torch.equal(frames[k], frames[2]) for k in range(3, 8))
        assert torch.equal(frames, expected(record, t=8)[0])


def test_changed_video_is_a_miss(videos: list[VideoRecord], tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache", T, S)
    record = videos[0]
    old_frames, _ = cache.get(record)
    old_entry = cache.entry_path(record)
    time.sleep(0.01)
    write_mp4(record.path, solid_video(PALETTE[5:] + PALETTE[:5]))  # same name and length, new content
    assert not cache.contains(record) and cache.entry_path(record) != old_entry
    new_frames, _ = cache.get(record)
    assert torch.equal(new_frames, expected(record)[0]) and not torch.equal(new_frames, old_frames)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bit flip", "empty", "wrong shape"])
def test_damaged_entry_is_repaired(videos: list[VideoRecord], tmp_path: Path, damage: str) -> None:
    cache = FrameCache(tmp_path / "cache", T, S)
    record = videos[3]
    want, want_mask = cache.get(record)
    entry = cache.entry_path(record)
    data = bytearray(entry.read_bytes())
    if damage == "garbage":
        entry.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif damage == "truncated":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "bit flip":  # inside the pixel data: only the zip CRC-32 notices
        data[len(data) // 2] ^= 0x10
        entry.write_bytes(bytes(data))
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a well-formed entry that does not fit this cache
        with open(entry, "wb") as f:
            np.savez(f, frames=np.zeros((T, S, S + 1, 3), np.uint8), mask=np.ones(T, bool), identity=np.array(""))
    frames, mask = cache.get(record)
    assert torch.equal(frames, want) and torch.equal(mask, want_mask)
    with np.load(entry) as z:  # rewritten: valid again
        assert np.array_equal(z["frames"], want.numpy())


def test_fill_reports_failures_and_counts(videos: list[VideoRecord], tmp_path: Path) -> None:
    missing = VideoRecord("missing", tmp_path / "missing.mp4", ("c",))
    corrupt_path = tmp_path / "corrupt.mp4"
    corrupt_path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    corrupt = VideoRecord("corrupt", corrupt_path, ("c",))
    empty_window = VideoRecord("late", videos[0].path, ("c",), start=50.0)
    cache = FrameCache(tmp_path / "cache", T, S)
    cache.get(videos[0])
    records = [videos[0], missing, videos[1], corrupt, videos[2], videos[3], empty_window, videos[1]]
    result = cache.fill(records, workers=2, progress=True)  # a real process pool
    assert result["cached"] == 1 and result["decoded"] == 4  # videos[1] twice: one decode, counted per record
    assert [(vid, path) for vid, path, _ in result["failed"]] == [
        ("missing", str(missing.path)), ("corrupt", str(corrupt_path)), ("late", str(videos[0].path))]
    reasons = [reason for *_, reason in result["failed"]]
    assert "not found" in reasons[0] and reasons[1] and "no frame" in reasons[2]
    for record in videos:
        assert cache.contains(record) and torch.equal(cache.get(record)[0], expected(record)[0])
    again = cache.fill(records, workers=1, progress=False)
    assert again["cached"] == 5 and again["decoded"] == 0 and len(again["failed"]) == 3
    assert temp_files(tmp_path / "cache") == []


def test_fill_sweeps_stale_temp_files(videos: list[VideoRecord], tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache", T, S)
    cache.get(videos[0])
    shard = cache.entry_path(videos[0]).parent
    stale, fresh = shard / ".dead.tmp-1-aa", shard / ".busy.tmp-2-bb"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    cache.fill(videos[:1], workers=1, progress=False)
    assert not stale.exists() and fresh.exists()  # a recent one may belong to a live writer


CHILD = """
import json, sys, time
from pathlib import Path
from calm_study.data.records import VideoRecord
from calm_study.data.frame_cache import FrameCache
root, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
records = [VideoRecord(d["id"], d["path"], (), d["start"], d["end"]) for d in json.loads(sys.argv[4])]
(root / f"ready-{me}").touch()
while len(list(root.glob("ready-*"))) < n:  # start filling together, after both paid for their imports
    time.sleep(0.005)
print(json.dumps(FrameCache(root / "cache", int(sys.argv[5]), int(sys.argv[6])).fill(records, workers=1,
                                                                                     progress=False)))
"""


def test_two_processes_fill_the_same_entries(videos: list[VideoRecord], tmp_path: Path) -> None:
    # Windows multiply the entries, so the two fills overlap on many of them.
    records = [VideoRecord(f"{r.video_id}-{k}", r.path, (), k * 0.1, None) for r in videos for k in range(4)]
    payload = json.dumps([{"id": r.video_id, "path": str(r.path), "start": r.start, "end": r.end} for r in records])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(me), "2", payload, str(T), str(S)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for me in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for result in results:
        assert result["failed"] == [] and result["cached"] + result["decoded"] == len(records)
    assert sum(result["decoded"] for result in results) >= len(records), results  # each entry written at least once
    cache = FrameCache(tmp_path / "cache", T, S)
    for record in records:
        entry = cache.entry_path(record)
        with np.load(entry) as z:  # valid as written, not repaired by the read below
            assert np.array_equal(z["frames"], expected(record)[0].numpy())
    assert len(list(cache.folder.rglob("*.npz"))) == len(records)
    assert temp_files(tmp_path / "cache") == []


def test_cache_is_picklable_and_validates(tmp_path: Path) -> None:
    import pickle

    cache = FrameCache(tmp_path / "cache", T, S, decoder="pyav")
    copy = pickle.loads(pickle.dumps(cache))  # DataLoader workers receive it pickled
    assert (copy.folder, copy.num_frames, copy.image_size, copy.decoder) == (cache.folder, T, S, "pyav")
    with pytest.raises(ValueError):
        FrameCache(tmp_path, 0, S)
    with pytest.raises(VideoDecodeError, match="not found"):
        cache.get(VideoRecord("gone", tmp_path / "gone.mp4", ()))


def test_bench_decoding_reports_rates(videos: list[VideoRecord], tmp_path: Path) -> None:
    missing = VideoRecord("missing", tmp_path / "missing.mp4", ())
    result = bench_decoding(videos + [missing], T, S, tmp_path / "bench", repeats=1)
    assert result["clips"] == len(videos) and result["failed"] == 1
    for key in ("decode_clips_per_s", "fill_clips_per_s", "cached_clips_per_s", "speedup", "entry_bytes"):
        assert result[key] > 0, key
    assert list((tmp_path / "bench").iterdir()) == []  # its temporary cache is gone


def test_bench_decoding_names_every_video_when_none_decodes(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    records = [VideoRecord("junk", junk, ()), VideoRecord("missing", tmp_path / "missing.mp4", ())]
    with pytest.raises(NothingDecodable) as info:
        bench_decoding(records, T, S, tmp_path / "bench")
    assert [path for path, _ in info.value.failures] == [str(junk), str(tmp_path / "missing.mp4")]
    assert not (tmp_path / "bench").exists()  # nothing was timed, nothing written
