"""Object poses from the cameras (gato_ros/perception): accuracy against the twin's true poses, and cost.

`policy.object_pose_source=cameras` makes the policy node fit the three objects' poses to the policy
cameras' frames on every observation: a search from scratch at an episode's first frame, then tracking.
This renders the first frame of `--starts` twin episodes (training objects or a test triplet) and prints,
per object (red, green, blue): how far the estimate puts the object (its vertices' mean) from where it is,
the mean closest-vertex distance of the two posed meshes (blind to symmetries the cameras cannot see
either), how far red's grasp direction in `objects/shape` (the expert's plan, version of `twin.shape_version`)
computed from the fitted poses turns from the one computed from the true poses, the search's time and a
tracking update's time (the same frame again, then the object moved by
a few mm: the steady-state cost), each as p50 / p90, with the share of the 50 ms control period.

    MUJOCO_GL=egl .venv/bin/python benchmarks/object_poses.py                  # 20 training-object starts
    MUJOCO_GL=egl .venv/bin/python benchmarks/object_poses.py --group 1 --starts 40 --size 256
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from gato_ros.config import load_config
from gato_ros.gato.tokenizer import SHAPE_DIRECTION_INDEX, grasp_wrist_yaw
from gato_ros.perception.object_poses import COLOURS, ObjectPoseEstimator, mesh_distance
from gato_ros.tools.eval import group_overrides
from gato_ros.twin.scene import posed_vertices
from gato_ros.twin.shape import objects_shape, shape_version


def grasp_yaw_deg(row: np.ndarray) -> float:
    """The wrist yaw (degrees) that closes along an object's grasp direction, from its `objects/shape` row."""
    cos_2a, sin_2a = row[SHAPE_DIRECTION_INDEX : SHAPE_DIRECTION_INDEX + 2]
    return float(np.degrees(grasp_wrist_yaw(cos_2a, sin_2a)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="train", help="train, or a test triplet 1..5")
    parser.add_argument("--starts", type=int, default=20, help="episode starts (seeds 0..starts-1)")
    parser.add_argument("--size", type=int, default=128, help="camera width = height (px)")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. perception.fit.yaw_candidates=36"
    )
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from gato_ros.twin.env import StackingTwin

    group = group_overrides(args.group)
    cfg = load_config([f"cameras.width={args.size}", f"cameras.height={args.size}", *group, *args.overrides])
    centre_mm, outline_mm, search_ms, keep_ms, track_ms = [], [], [], [], []
    grasp_turn_deg = []
    version = shape_version(cfg)
    with StackingTwin(cfg, render=True) as twin:
        for seed in range(args.starts):
            twin.reset(seed)
            truth, geometries = twin.object_poses(), twin.object_geometries()
            estimator = ObjectPoseEstimator.from_config(cfg, geometries)
            frames = [twin.render(name) for name in cfg.cameras.policy_cameras]
            start = time.perf_counter()
            poses = estimator.update(frames)
            search_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            estimator.update(frames)
            keep_ms.append(1000 * (time.perf_counter() - start))
            if poses is None:
                centre_mm.append([np.nan] * 3)
                outline_mm.append([np.nan] * 3)
                continue
            centre_mm.append([
                1000 * np.linalg.norm(
                    posed_vertices(g.vertices.mean(axis=0)[None], p[:3], p[3:])
                    - posed_vertices(g.vertices.mean(axis=0)[None], t[:3], t[3:])
                )
                for g, p, t in zip(geometries, poses, truth, strict=True)
            ])  # fmt: skip
            pairs = zip(geometries, poses, truth, strict=True)
            outline_mm.append([1000 * mesh_distance(g.vertices, p, t) for g, p, t in pairs])
            red_rows = [objects_shape(geometries, p, version).reshape(3, -1)[0] for p in (poses, truth)]
            turn = grasp_yaw_deg(red_rows[0]) - grasp_yaw_deg(red_rows[1])
            grasp_turn_deg.append(abs((turn + 90.0) % 180.0 - 90.0))  # the direction is pi-periodic
            moved = truth.copy()
            moved[:, :2] += np.random.default_rng(seed).uniform(-0.004, 0.004, size=(3, 2))
            twin.set_object_poses(moved)
            frames = [twin.render(name) for name in cfg.cameras.policy_cameras]
            start = time.perf_counter()
            estimator.update(frames)
            track_ms.append(1000 * (time.perf_counter() - start))
    period_ms = 1000.0 / float(cfg.control.rate_hz)
    centre, outline = np.asarray(centre_mm), np.asarray(outline_mm)
    print(
        f"object poses from {len(cfg.cameras.policy_cameras)} cameras at {args.size}x{args.size}, "
        f"{args.group} objects, {args.starts} starts (seeds 0..{args.starts - 1}); "
        f"{int(np.sum(np.isnan(centre[:, 0])))} starts with an object never seen"
    )
    for index, colour in enumerate(COLOURS):
        c, o = centre[:, index], outline[:, index]
        print(
            f"  {colour:5s}: position error p50 {np.nanpercentile(c, 50):.1f} / "
            f"p90 {np.nanpercentile(c, 90):.1f} mm, mesh distance p50 {np.nanpercentile(o, 50):.1f} / "
            f"p90 {np.nanpercentile(o, 90):.1f} mm"
        )
    turn = np.asarray(grasp_turn_deg)
    print(
        f"  red's planned grasp direction, fitted vs true poses: p50 {np.percentile(turn, 50):.1f} / "
        f"p90 {np.percentile(turn, 90):.1f} degrees, "
        f"{int(np.sum(turn > 20))} of {len(turn)} starts > 20 degrees"
    )
    for name, values in (("search (first frame)", search_ms), ("same frame again", keep_ms),
                         ("objects moved <= 6 mm", track_ms)):  # fmt: skip
        p50, p90 = np.percentile(values, [50, 90])
        print(
            f"  {name}: p50 {p50:.1f} ms, p90 {p90:.1f} ms "
            f"({100 * p90 / period_ms:.0f} % of the period at p90)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
