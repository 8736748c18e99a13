"""Cost of `objects/shape` per observation, by version: what the policy node pays on its hot path.

The policy node computes the three objects' shape features from their poses on every observation it acts
on (`ObservationAssembler`). Version 2 cuts each hull at three more heights than version 1 (the taper of
the expert's grasp criterion, gato_ros/twin/shape.py); version 3 adds the expert's whole grasp plan for
red (centre of mass, open fingers clear of green and blue; 1.2 ms p50 against version 1's 0.22 ms on the
2-core development machine, 3 % of the period at p99). This prints per-call p50/p99 for each version over
random triplets of the training and test objects in random orientations, the calls interleaved so that
machine load falls on both alike, their ratio, and the p99's share of the control period.

    .venv/bin/python benchmarks/shape_features.py                # 300 calls per version
    .venv/bin/python benchmarks/shape_features.py --calls 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gato_ros.config import load_config
from gato_ros.twin.assets import object_meshes
from gato_ros.twin.shape import SHAPE_VERSIONS, object_geometry, objects_shape


def random_poses(rng: np.random.Generator, calls: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(calls, 21): three objects in the twin's drop box (x, y from `low` to `high`, z the drop height),
    each in a uniformly random orientation."""
    quats = rng.normal(size=(calls, 3, 4))
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    positions = rng.uniform(low, high, size=(calls, 3, len(low)))
    return np.concatenate([positions, quats], axis=-1).reshape(calls, 21)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="objects_shape calls per version")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config([])
    reset = cfg.twin.reset
    low = np.array([*reset.object_low[:2], reset.drop_height], dtype=float)
    high = np.array([*reset.object_high[:2], reset.drop_height], dtype=float)
    rng = np.random.default_rng(args.seed)
    ids = sorted(object_meshes("train")) + sorted(object_meshes("test_triplets"))
    triplets = [
        tuple(object_geometry(ids[i]) for i in rng.choice(len(ids), 3, replace=False))
        for _ in range(args.calls)
    ]
    poses = random_poses(rng, args.calls, low, high)
    for version in SHAPE_VERSIONS:  # warm up: numpy dispatch, caches
        objects_shape(triplets[0], poses[0], version)
    times: dict[int, list[float]] = {v: [] for v in SHAPE_VERSIONS}
    for geometries, pose in zip(triplets, poses, strict=True):
        for version in SHAPE_VERSIONS:
            start = time.perf_counter()
            objects_shape(geometries, pose, version)
            times[version].append(time.perf_counter() - start)
    period_ms = 1000.0 / float(cfg.control.rate_hz)
    print(
        f"objects_shape, {args.calls} calls per version over {len(ids)} objects "
        f"(control period {period_ms:.0f} ms)"
    )
    p50 = {}
    for version, values in times.items():
        ms = 1000.0 * np.asarray(values)
        p50[version] = float(np.percentile(ms, 50))
        p99 = float(np.percentile(ms, 99))
        print(
            f"  version {version}: p50 {p50[version]:.3f} ms, p99 {p99:.3f} ms "
            f"({100 * p99 / period_ms:.1f} % of the period)"
        )
    first, last = SHAPE_VERSIONS[0], SHAPE_VERSIONS[-1]
    print(f"  version {last} / version {first} (p50): {p50[last] / p50[first]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
