"""Confidence intervals for "optimal minus default", in test top-1 points.

Two sources of noise, two intervals:

- **Seeds (Welch).** With test accuracies a_1..a_m of the optimum's retrainings and b_1..b_n of the
  default's (different seeds),

      d   = mean(a) - mean(b)
      se  = sqrt(s_a^2/m + s_b^2/n)                               (s: sample sd, ddof = 1)
      df  = se^4 / ((s_a^2/m)^2/(m-1) + (s_b^2/n)^2/(n-1))        (Welch-Satterthwaite)
      CI  = d -+ t_{0.975, df} * se

  It says how much the verdict could change with other seeds. It needs m, n >= 2; with both sds 0
  it is the single point d.

- **Test images (paired bootstrap).** Both sides are evaluated on the same N test images, so per
  image i, with c_ji = 1 if model j classifies it correctly,

      d_i = mean_j c_ji (optimum's models) - mean_j c_ji (default's models),   d = 100 * mean_i d_i

  Resampling the images with replacement B times (a fixed seed: the same database gives the same
  interval) and taking the 2.5% and 97.5% quantiles of 100 * mean(d_i*) gives the interval over test
  sets of the same size.

A difference is called a gain (loss) only when every interval that could be computed lies above
(below) 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes_zero(self) -> int:
        """+1 if the interval lies above 0, -1 below, 0 if it holds 0 (or is undefined)."""
        if math.isnan(self.low) or math.isnan(self.high):
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


NO_INTERVAL = Interval(math.nan, math.nan)


def welch_interval(
    a: Sequence[float], b: Sequence[float], level: float = LEVEL
) -> tuple[Interval, float]:
    """(interval for mean(a) - mean(b), degrees of freedom); NaN with fewer than 2 values a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        return NO_INTERVAL, math.nan
    d = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / m, b.var(ddof=1) / n
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d), math.inf
    df = se**4 / (va**2 / (m - 1) + vb**2 / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return Interval(d - half, d + half), df


def paired_bootstrap_interval(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Interval for 100 * mean_i(d_i) (see module docstring). `correct_a`: (models of the
    optimum) x (test images) booleans; `correct_b` likewise for the default, same images."""
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(
            f"need (models x images) arrays over the same images, got {a.shape} and {b.shape}"
        )
    d = a.mean(axis=0) - b.mean(axis=0)
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // n)  # resamples per chunk: bounded memory on large test sets
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(100.0 * means, [tail, 100 - tail])
    return Interval(float(low), float(high))


def verdict_sign(*intervals: Interval) -> int:
    """+1 (gain) / -1 (loss) when every defined interval excludes 0 on the same side, else 0."""
    signs = [i.excludes_zero() for i in intervals if not math.isnan(i.low)]
    if not signs or 0 in signs or len(set(signs)) > 1:
        return 0
    return signs[0]
