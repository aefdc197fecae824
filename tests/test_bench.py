"""`python -m calm_study bench`: the step-time extrapolation, the four sections end to end, bad options.

No test asserts a duration: the figures are parsed and must be positive numbers, nothing more.
"""

import random
import re

import numpy as np
import pytest

from calm_study.bench import SECTIONS, BenchError, check_device, parse_only
from calm_study.bench.step import extrapolate, fit_linear
from calm_study.cli import main

NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
DURATION = NUMBER + r" (ms|s)\b"


def seconds(text: str) -> list[float]:
    """Every duration printed in `text` ("56.3 ms", "2.30 s"), in seconds."""
    return [float(v) * (1e-3 if unit == "ms" else 1.0) for v, unit in re.findall(DURATION, text)]


def test_two_points_give_the_exact_line():
    # step(B) = 0.25 + 0.125·B, read at B = 128
    fit = fit_linear([(2, 0.5), (4, 0.75)])
    assert fit.fixed_s == pytest.approx(0.25) and fit.per_item_s == pytest.approx(0.125)
    assert extrapolate([(2, 0.5), (4, 0.75)], 128) == pytest.approx(0.25 + 0.125 * 128)


def test_more_points_give_the_least_squares_line():
    rng = random.Random(0)
    points = [(b, 0.3 + 0.02 * b + rng.uniform(-0.01, 0.01)) for b in (2, 3, 4, 8, 16)]
    slope, intercept = np.polyfit([b for b, _ in points], [s for _, s in points], 1)  # the oracle
    fit = fit_linear(points)
    assert fit.per_item_s == pytest.approx(slope) and fit.fixed_s == pytest.approx(intercept)
    assert extrapolate(points, 128) == pytest.approx(intercept + slope * 128)
    # points exactly on a line are reproduced whatever their order
    assert extrapolate([(8, 1.0 + 8 * 0.5), (1, 1.5), (5, 3.5)], 100) == pytest.approx(51.0)


def test_a_line_needs_two_batch_sizes():
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        fit_linear([(4, 1.0), (4, 1.2)])


def section(text: str, letter: str) -> str:
    """The printed block of one section: from its "(x) " line to the next blank line."""
    match = re.search(rf"^\({letter}\) .*?(?=\n\n|\Z)", text, flags=re.S | re.M)
    assert match, f"section ({letter}) missing from:\n{text}"
    return match.group(0)


def test_bench_prints_four_sections_on_the_demo(capsys):
    argv = ["bench", "studies/anchor_ablation.yaml", "--preset", "demo", "--batches", "2", "4", "--steps", "1",
            "--eval-texts", "64", "--eval-videos", "64", "--clips", "3", "--trial-epochs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trial 1" in out and "CALM K=50" in out  # the first trial with anchors
    assert "device cpu" in out and "torch threads" in out and "precision fp32" in out

    a = section(out, "a")
    rows = re.findall(rf"B=2: {DURATION}\s+B=4: {DURATION}", a)
    assert len(rows) == 2  # CALM and the baseline
    assert all(float(v) > 0 for row in rows for v in row[::2])
    assert re.search(rf"CALM overhead \(calm - base\) / base: {NUMBER} % measured at B=4", a.replace("+", ""))
    assert "train.batch_size 32" in a

    b = section(out, "b")
    assert "64 texts x 64 videos" in b
    for what in ("scoring (score_banks, text_chunk 64)", "for 64 videos", "for 64 texts", "evaluation total"):
        line = next(line for line in b.splitlines() if what in line)
        assert seconds(line) and all(s > 0 for s in seconds(line)), line

    c = section(out, "c")
    rates = [float(v) for v in re.findall(NUMBER + r" clips/s", c)]
    assert "3 clips" in c and len(rates) == 3 and all(r > 0 for r in rates)

    d = section(out, "d")
    runs = [line for line in d.splitlines() if line.startswith("  fine-tuning") or line.startswith("  frozen")]
    assert len(runs) == 3 and all(seconds(line)[-1] > 0 for line in runs)
    assert re.search(NUMBER + r"x", d.split("speed-up")[1]) and "cold - warm" in d
    assert "filled before timing" in d and "wrote nothing" not in d  # frozen mode really ran frozen


def test_a_bad_only_value_is_one_clear_line(capsys):
    assert main(["bench", "studies/anchor_ablation.yaml", "--preset", "demo", "--only", "a,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--only 'a,x'" in err and "valid sections are a, b, c, d" in err


def test_only_keeps_section_order():
    assert parse_only("d, A,b") == ("a", "b", "d")
    assert parse_only(",".join(SECTIONS)) == SECTIONS
    for bad in ("", "e", "a;b"):
        with pytest.raises(BenchError, match="valid sections"):
            parse_only(bad)


def test_bad_machine_options_are_refused_together_before_anything_loads(capsys):
    assert main(["bench", "studies/anchor_ablation.yaml", "--preset", "demo", "--device", "bogus", "--threads", "-1",
                 "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: 3 problems with the options:" in err and "Traceback" not in err
    for line in ("--device 'bogus': not a torch device", "--threads -1: must be >= 1, or 0 for torch's default",
                 "--steps 0: must be >= 1"):
        assert line in err, err
    check_device("cpu")
    check_device(None)  # the default: cuda when there is one, else cpu
    with pytest.raises(BenchError, match="cuda:99: this machine has no such device|torch sees no CUDA GPU"):
        check_device("cuda:99")
