"""`StackingTwin`: the RGB-stacking cell as a seeded, steppable environment (ROS-free).

One `step` is one control period (1 / control.rate_hz) of `twin.physics.timestep` substeps. The action
goes through the same `CartesianVelocityController` the real command node uses; `step_joint_velocity`
is the joint-level path that ROS command topics carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.control.arm_model import FLANGE_SITE, PINCH_SITE
from gato_ros.control.cartesian import CartesianVelocityController
from gato_ros.control.kinematics import ArmKinematics
from gato_ros.twin.assets import COLORS, select_objects
from gato_ros.twin.basket import FLOOR_GEOM
from gato_ros.twin.rendering import CameraRenderer
from gato_ros.twin.scene import OUT_OF_VIEW_GROUP, SceneIndex, body_vertices, build_scene
from gato_ros.twin.success import check_stack

MAX_RESET_TRIES = 100


@dataclass
class TwinStep:
    observation: dict[str, np.ndarray]
    success: bool
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class StackingTwin:
    """The MuJoCo twin. `render=False` skips camera images (state-only use, fast data collection)."""

    def __init__(
        self, cfg: DictConfig, render: bool | None = None, kinematics: ArmKinematics | None = None
    ) -> None:
        self.cfg = cfg
        twin = cfg.twin
        self.render_images = bool(twin.render if render is None else render)
        self.control_period = 1.0 / float(cfg.control.rate_hz)
        self.substeps = round(self.control_period / float(twin.physics.timestep))
        if self.substeps < 1:
            raise ValueError("twin.physics.timestep must not exceed the control period")
        self.max_steps = round(float(cfg.control.episode_seconds) * float(cfg.control.rate_hz))
        self.controller = CartesianVelocityController(cfg, kinematics)
        self.kinematics = self.controller.kinematics
        self.velocity_limit = np.asarray(cfg.robot.velocity_limit, dtype=float)
        self.gripper_range = np.asarray(cfg.robot.gripper.driver_range, dtype=float)
        self.gripper_command_max = float(cfg.robot.gripper.command_range[1])
        self.policy_cameras = [str(name) for name in cfg.cameras.policy_cameras]
        self._rng = np.random.default_rng(int(cfg.seed))
        self._renderer: CameraRenderer | None = None
        self.object_ids: tuple[str, str, str] | None = None
        self.model: mujoco.MjModel
        self.data: mujoco.MjData
        self.index: SceneIndex
        self._load_objects(select_objects(twin, self._rng))
        self.step_count = 0
        self.seed: int | None = None

    # -- scene -----------------------------------------------------------------------------------------
    def _load_objects(self, object_ids: tuple[str, str, str]) -> None:
        """(Re)build the model when the episode's objects differ from the current ones."""
        if object_ids == self.object_ids:
            return
        self.model, self.index = build_scene(self.cfg, object_ids)
        self.data = mujoco.MjData(self.model)
        self.object_ids = object_ids
        mujoco.mj_kinematics(self.model, self.data)  # the floor is static: its world pose is final
        floor = self.model.geom(FLOOR_GEOM).id
        self._floor_top = float(self.data.geom_xpos[floor, 2] + self.model.geom_size[floor, 2])
        self._pinch_site = self.model.site(PINCH_SITE).id
        self._flange_site = self.model.site(FLANGE_SITE).id
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    @property
    def time(self) -> float:
        """Simulated seconds since the episode started (after the objects settled)."""
        return float(self.data.time)

    # -- episode -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """New episode: objects (per `twin.objects`), random tool pose, objects dropped and settled."""
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        self.seed = seed
        reset = self.cfg.twin.reset
        self._load_objects(select_objects(self.cfg.twin, rng))
        model, data, index = self.model, self.data, self.index
        mujoco.mj_resetData(model, data)

        for _ in range(MAX_RESET_TRIES):
            target = rng.uniform(reset.tool_low, reset.tool_high)
            yaw = float(rng.uniform(*reset.yaw_range))
            q, converged = self.kinematics.inverse_kinematics(target, yaw)
            if converged:
                break
        else:
            raise RuntimeError("could not reach any sampled start pose; check twin.reset.tool_low/high")
        data.qpos[index.arm_qpos] = q
        data.act[self._arm_act_index()] = q

        positions = self._sample_object_positions(rng)
        for qpos, xy, below in zip(index.object_qpos, positions, self._depth_below_centre(), strict=True):
            # Tall objects start with their bottom just clear of the floor instead of inside it.
            height = max(float(reset.drop_height), self._floor_top + below + float(reset.drop_clearance))
            data.qpos[qpos : qpos + 3] = [xy[0], xy[1], height]
            data.qpos[qpos + 3 : qpos + 7] = yaw_quat(float(rng.uniform(-np.pi, np.pi)))
        mujoco.mj_forward(model, data)
        self._settle(float(reset.settle_seconds), float(reset.settle_speed))
        data.time = 0.0
        self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number = 0
        self.step_count = 0
        return self.observation()

    def _depth_below_centre(self) -> list[float]:
        """How far each object's mesh reaches below its body origin when upright."""
        return [float(-body_vertices(self.model, body)[:, 2].min()) for body in self.index.object_bodies]

    def _arm_act_index(self) -> np.ndarray:
        return self.model.actuator_actadr[self.index.arm_actuators]

    def _sample_object_positions(self, rng: np.random.Generator) -> list[np.ndarray]:
        reset = self.cfg.twin.reset
        low, high = np.asarray(reset.object_low), np.asarray(reset.object_high)
        separation = float(reset.object_min_separation)
        for _ in range(MAX_RESET_TRIES):
            points = [rng.uniform(low, high) for _ in COLORS]
            if all(
                np.linalg.norm(points[i] - points[j]) >= separation
                for i in range(len(points))
                for j in range(i + 1, len(points))
            ):
                return points
        raise RuntimeError("twin.reset.object_min_separation is too large for the object drop area")

    def _settle(self, seconds: float, speed: float) -> None:
        """Let dropped objects come to rest with the arm held still (early exit once all are slow)."""
        self.data.ctrl[:] = 0.0
        self.data.ctrl[self.index.gripper_actuator] = -self.gripper_command_max
        for _ in range(max(1, round(seconds / self.control_period))):
            mujoco.mj_step(self.model, self.data, nstep=self.substeps)
            speeds = [np.linalg.norm(self.data.qvel[d : d + 3]) for d in self.index.object_dof]
            if max(speeds) < speed:
                break

    # -- stepping ----------------------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> TwinStep:
        """One control step of the benchmark's 5-D action through the Cartesian velocity controller."""
        action = self.controller.sanitize_action(action)
        qdot = self.controller.joint_velocity(self.joint_positions(), action)
        return self.step_joint_velocity(qdot, float(action[4]))

    def step_joint_velocity(self, qdot: np.ndarray, gripper: float) -> TwinStep:
        """One control step of a joint velocity command (rad/s, clipped to limits; non-finite -> 0).

        `gripper`: only its sign matters (bang-bang): > 0 closes, otherwise opens, so the action's [-1, 1]
        value and the driver's +-255 command mean the same.
        """
        qdot = np.asarray(qdot, dtype=float).reshape(-1)
        if qdot.shape != (7,):
            raise ValueError(f"qdot must have 7 components, got {qdot.shape}")
        qdot = np.clip(np.where(np.isfinite(qdot), qdot, 0.0), -self.velocity_limit, self.velocity_limit)
        closing = bool(np.isfinite(gripper) and gripper > 0.0)
        self.data.ctrl[self.index.arm_actuators] = qdot
        self.data.ctrl[self.index.gripper_actuator] = self.gripper_command_max * (1.0 if closing else -1.0)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self.step_count += 1
        # MuJoCo resets the state itself when it diverges; such an episode is over and must not count.
        unstable = self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0
        check = check_stack(self.data, self.index, self.cfg.twin.success)
        success = check.success and not unstable
        timeout = self.step_count >= self.max_steps
        info = {
            "time": self.time,
            "step": self.step_count,
            "object_ids": self.object_ids,
            "stack_check": check,
            "time_limit": timeout and not success,
            "physics_unstable": unstable,
        }
        return TwinStep(self.observation(), success, success or timeout or unstable, info)

    def is_success(self) -> bool:
        return check_stack(self.data, self.index, self.cfg.twin.success).success

    # -- state -------------------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self.index.arm_qpos].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self.index.arm_dof].copy()

    def gripper_position(self) -> float:
        """Driver opening in 0..255 units (0 open, 255 closed), as in the observation."""
        low, high = self.gripper_range
        angle = self.data.qpos[self.index.gripper_driver_qpos]
        return float(np.clip((angle - low) / (high - low), 0.0, 1.0) * self.gripper_command_max)

    def object_poses(self) -> np.ndarray:
        """(3, 7) red, green, blue: x, y, z, qw, qx, qy, qz (privileged)."""
        bodies = list(self.index.object_bodies)
        return np.hstack([self.data.xpos[bodies], self.data.xquat[bodies]])

    def set_object_poses(self, poses: np.ndarray) -> None:
        """Place red, green, blue at (3, 7) poses (x, y, z, qw, qx, qy, qz), at rest (tests, scenarios)."""
        poses = np.asarray(poses, dtype=float).reshape(3, 7)
        for qpos, dof, pose in zip(self.index.object_qpos, self.index.object_dof, poses, strict=True):
            self.data.qpos[qpos : qpos + 7] = pose
            self.data.qvel[dof : dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def pinch_pose(self) -> np.ndarray:
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._pinch_site])
        return np.concatenate([self.data.site_xpos[self._pinch_site], quat])

    def tcp_pose(self, pinch_pose: np.ndarray | None = None) -> np.ndarray:
        """Wrist flange position with the tool orientation (the benchmark's `tcp` convention); pass the
        `pinch_pose()` already computed this step to reuse its orientation."""
        pinch = self.pinch_pose() if pinch_pose is None else pinch_pose
        return np.concatenate([self.data.site_xpos[self._flange_site], pinch[3:]])

    def observation(self) -> dict[str, np.ndarray]:
        pinch = self.pinch_pose()
        obs = {
            "gripper/joints/angle": np.array([self.gripper_position()], dtype=np.float32),
            "sawyer/joints/angle": self.joint_positions().astype(np.float32),
            "sawyer/pinch/pose": pinch.astype(np.float32),
            "sawyer/tcp/pose": self.tcp_pose(pinch).astype(np.float32),
        }
        if self.render_images:
            for name in self.policy_cameras:
                obs[f"{name}/pixels"] = self.render(name)
        if self.cfg.twin.privileged_observations:
            obs["objects/pose"] = self.object_poses().reshape(-1).astype(np.float32)
        return dict(sorted(obs.items()))

    # -- rendering -----------------------------------------------------------------------------------------
    def render(self, camera_name: str) -> np.ndarray:
        """(H, W, 3) uint8 image of a named camera at cameras.width x cameras.height."""
        if self._renderer is None:
            self._renderer = CameraRenderer(
                self.model,
                int(self.cfg.cameras.width),
                int(self.cfg.cameras.height),
                [str(b) for b in self.cfg.twin.rendering.backends],
                hidden_groups=[OUT_OF_VIEW_GROUP] if self.cfg.twin.rendering.skip_out_of_view else [],
            )
        if camera_name not in self.index.cameras:
            raise KeyError(f"unknown camera {camera_name!r}; cameras: {sorted(self.index.cameras)}")
        return self._renderer.render(self.data, self.index.cameras[camera_name])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> StackingTwin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
