"""Statistics over seeds: mean, sd, n and a 95% t-interval per cell; paired-by-seed differences against a baseline.

The paper's ablation differences are often below one R@1 point, the size of seed noise, so every number in a report
carries its spread, and a comparison only calls a difference real when its 95% interval excludes zero.

- Cell: mean ± t_{0.975, n-1} · sd / √n, with the sample sd (ddof 1). n = 1 has no sd and no interval.
- Paired comparison: the differences (arm − baseline) over the seeds both ran; seeds only one of them has are dropped
  and counted. "Distinguishable from noise" iff n ≥ 2 pairs and the difference's 95% t-interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy import stats as _scipy_stats

LEVEL = 0.95


def t_quantile(n: int, level: float = LEVEL) -> float:
    """t_{(1+level)/2, n-1}: the two-sided interval's multiplier for n values (NaN for n < 2)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) if n >= 2 else math.nan


@dataclass(frozen=True)
class Summary:
    mean: float
    sd: float  # NaN for n < 2
    n: int
    lo: float  # 95% interval; NaN for n < 2
    hi: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.sd)


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample sd, n and 95% t-interval of the finite values (NaN and missing values are not counted)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n) * sd / math.sqrt(n)
    return Summary(mean, sd, n, mean - half, mean + half)


@dataclass(frozen=True)
class Paired:
    diff: Summary  # of the per-seed differences arm − baseline
    unpaired: int  # seeds that only one side has (dropped)

    @property
    def distinguishable(self) -> bool | None:
        """True/False: the 95% interval of the mean difference excludes/includes 0; None: fewer than 2 pairs."""
        if not self.diff.has_interval:
            return None
        return self.diff.lo > 0 or self.diff.hi < 0


def paired(arm: Mapping[int, float], baseline: Mapping[int, float]) -> Paired:
    """Compare per-seed values {seed: value} of an arm with its baseline's, paired by seed."""
    finite = {s: v for s, v in arm.items() if _finite(v)}
    base = {s: v for s, v in baseline.items() if _finite(v)}
    common = sorted(set(finite) & set(base))
    diffs = [float(finite[s]) - float(base[s]) for s in common]
    return Paired(summarize(diffs), len(set(finite) ^ set(base)))


def verdict(distinguishable: bool | None, pairs: int) -> str:
    """How a comparison reads in a table: yes / no / n/a (fewer than 2 pairs)."""
    if distinguishable is None or (isinstance(distinguishable, float) and math.isnan(distinguishable)):
        return f"n/a ({pairs} pair{'s' if pairs != 1 else ''})"
    return "yes" if distinguishable else "no"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(float(v))
