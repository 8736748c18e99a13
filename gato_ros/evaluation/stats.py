"""Success-rate and latency statistics of an evaluation (ROS-free, no config)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WILSON_Z = 1.959964  # 95% two-sided normal quantile
MS_PER_S = 1e3


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of a success rate (sensible at 0 % and 100 % and for few trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # the interval always contains p; the clamps only undo rounding (at 100 %, centre + half is 1 - 1e-16)
    return max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p))


def success_summary(successes: int, trials: int) -> dict[str, float | int | None]:
    """successes, n, rate (None without trials) and the Wilson 95% interval, as results.json stores it."""
    low, high = wilson_interval(successes, trials)
    return {
        "successes": successes,
        "n": trials,
        "rate": successes / trials if trials else None,
        "ci_low": low,
        "ci_high": high,
    }


def latency_summary(seconds: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """p50, p99 and mean in milliseconds of latency samples given in seconds (None without samples)."""
    if len(seconds) == 0:
        return {"latency_p50_ms": None, "latency_p99_ms": None, "latency_mean_ms": None, "latency_samples": 0}
    ms = np.asarray(seconds, dtype=float) * MS_PER_S
    p50, p99 = np.percentile(ms, [50, 99])
    return {
        "latency_p50_ms": float(p50),
        "latency_p99_ms": float(p99),
        "latency_mean_ms": float(ms.mean()),
        "latency_samples": int(ms.size),
    }
