"""Object poses from the cameras along whole expert episodes, with and without the gripper's silhouette.

`benchmarks/object_poses.py` measures the first frame, where the arm is out of the way. Here the scripted
expert stacks (training objects or a test triplet), and at every step two estimators read the same policy
camera frames: one counts the gripper's outline (`perception.gripper_occludes`, posed from the joint states)
as pixels that may hide the objects, the other does not. Printed per expert stage (where red is in the
fingers: CLOSE, LIFT, CARRY, LOWER, RELEASE): red's position error and mesh distance to the twin's pose,
p50 / p90 per estimator, and each estimator's update time (p50 / p99).

    MUJOCO_GL=egl .venv/bin/python benchmarks/object_poses_along_episodes.py                 # 10 episodes
    MUJOCO_GL=egl .venv/bin/python benchmarks/object_poses_along_episodes.py --episodes 20 --group 1
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np

from gato_ros.config import load_config
from gato_ros.perception.object_poses import ObjectPoseEstimator, mesh_distance
from gato_ros.tools.eval import group_overrides
from gato_ros.twin.observation_keys import ARM_ANGLES_KEY, GRIPPER_ANGLE_KEY

MODES = {"with the gripper": True, "without": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", default="train", help="train, or a test triplet 1..5")
    parser.add_argument("--episodes", type=int, default=10, help="episodes (seeds first..first+episodes-1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128, help="camera width = height (px)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. perception.fit.lost_cost=0.3")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    from gato_ros.twin.env import StackingTwin
    from gato_ros.twin.expert import ScriptedExpert
    from gato_ros.twin.rollout import run_episode

    group = group_overrides(args.group)
    size = [f"cameras.width={args.size}", f"cameras.height={args.size}"]
    cfg = load_config([*group, *size, *args.overrides])
    cameras = [str(c) for c in cfg.cameras.policy_cameras]
    low, high = (float(v) for v in cfg.robot.gripper.driver_range)
    units = float(cfg.robot.gripper.command_range[1])
    errors: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    stacked = 0
    with StackingTwin(cfg, render=True) as twin:
        expert = ScriptedExpert(cfg)
        for seed in range(args.first_seed, args.first_seed + args.episodes):
            expert.reset()
            twin.reset(seed=seed)
            geometries = twin.object_geometries()
            estimators = {}
            for mode, occludes in MODES.items():
                mode_cfg = load_config(
                    [*group, *size, *args.overrides, f"perception.gripper_occludes={occludes}"]
                )
                estimators[mode] = ObjectPoseEstimator.from_config(mode_cfg, geometries)

            def observe(
                observation: dict,
                _action: np.ndarray,
                _step: object,
                estimators=estimators,
                geometries=geometries,
            ) -> None:
                frames = [observation[f"{c}/pixels"] for c in cameras]
                fraction = float(np.asarray(observation[GRIPPER_ANGLE_KEY]).reshape(-1)[0]) / units
                driver = low + np.clip(fraction, 0.0, 1.0) * (high - low)
                truth = twin.object_poses()
                for mode, estimator in estimators.items():
                    started = time.perf_counter()
                    poses = estimator.update(frames, (np.asarray(observation[ARM_ANGLES_KEY]), driver))
                    seconds[mode].append(time.perf_counter() - started)
                    if poses is None:
                        continue
                    red = geometries[0].vertices
                    errors[(expert.stage.name, mode)].append(
                        (
                            float(np.linalg.norm(poses[0, :3] - truth[0, :3])),
                            mesh_distance(red, poses[0], truth[0]),
                        )
                    )

            result = run_episode(twin, lambda t, _o: expert.act(t), seed, observer=observe)
            stacked += int(result.success)
            print(
                f"seed {seed}: {'stacked' if result.success else 'not stacked'} in {result.steps} steps",
                flush=True,
            )
    print(f"\n{args.episodes} expert episodes ({args.group}, {args.size} x {args.size}), {stacked} stacked")
    print("red's error by the expert's stage, position / mesh distance (mm), p50 / p90:")
    stages = sorted({stage for stage, _ in errors})
    print(f"{'stage':14s} {'steps':>6s}  " + "  ".join(f"{m:>30s}" for m in MODES))
    for stage in stages:
        cells = []
        for mode in MODES:
            values = np.asarray(errors[(stage, mode)]) * 1e3
            p50, p90 = np.percentile(values, 50, axis=0), np.percentile(values, 90, axis=0)
            cells.append(f"{p50[0]:5.1f} / {p90[0]:5.1f}  {p50[1]:5.1f} / {p90[1]:5.1f}")
        print(
            f"{stage:14s} {len(errors[(stage, next(iter(MODES)))]):6d}  "
            + "  ".join(f"{c:>30s}" for c in cells)
        )
    for mode in MODES:
        ms = np.asarray(seconds[mode]) * 1e3
        print(f"update {mode}: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
