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
from gato_ros.control.kinematics import (
    OBJECT_REFERENCE_WXYZ,
    PINCH_REFERENCE_WXYZ,
    ArmKinematics,
    canonical_quat,
    rotation_to_quat_wxyz,
)
from gato_ros.twin.assets import select_objects
from gato_ros.twin.observation_keys import GRIPPER_VELOCITY_KEY
from gato_ros.twin.rendering import CameraRenderer
from gato_ros.twin.scene import OUT_OF_VIEW_GROUP, SceneIndex, build_scene
from gato_ros.twin.shape import SHAPE_KEY, ObjectGeometry, object_geometry, objects_shape, shape_version
from gato_ros.twin.success import EpisodeJudge, check_stack, touching_geoms

MAX_RESET_TRIES = 100
# The twin's version, recorded with every collected episode and printed by the benchmarks. Bump it when the
# cell's physics, start distribution, observations or episode rules change: data and policies from an
# older twin must be regenerated. 1: the project's own cell (up to issue 9); 2: the benchmark's cell.
TWIN_VERSION = 2


@dataclass
class TwinStep:
    observation: dict[str, np.ndarray]
    success: bool
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


def uniform_quaternion(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from SO(3) (normalised 4-D Gaussian), w >= 0 (the benchmark's drops)."""
    while True:
        quat = rng.standard_normal(4)
        norm = float(np.linalg.norm(quat))
        if norm > 1e-9:
            quat /= norm
            return quat if quat[0] >= 0.0 else -quat


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
        self.judge = EpisodeJudge(twin.episode, float(cfg.control.rate_hz), self.max_steps)
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
        """New episode: objects (per `twin.objects`), random tool pose, objects dropped and settled; the
        clock starts at 0 after settling."""
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

        self._drop_objects(rng)
        mujoco.mj_forward(model, data)
        self._settle(float(reset.settle_seconds), float(reset.settle_speed))
        data.time = 0.0
        self.data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number = 0
        self.step_count = 0
        self.judge.reset()
        return self.observation()

    def _arm_act_index(self) -> np.ndarray:
        return self.model.actuator_actadr[self.index.arm_actuators]

    def _drop_objects(self, rng: np.random.Generator) -> None:
        """Red, green, blue in turn at a uniform xy at the drop height in a uniformly random 3-D orientation,
        redrawn while the object overlaps anything placed (the benchmark's prop placer), then settled."""
        reset = self.cfg.twin.reset
        low, high = np.asarray(reset.object_low, dtype=float), np.asarray(reset.object_high, dtype=float)
        tries = int(reset.max_drop_tries)
        for k, qpos in enumerate(self.index.object_qpos):  # not yet placed: apart, high above the cell
            self.data.qpos[qpos : qpos + 7] = [0.0, 0.0, 10.0 + k, 1.0, 0.0, 0.0, 0.0]
        for qpos, geoms in zip(self.index.object_qpos, self.index.object_geoms, strict=True):
            for _ in range(tries):
                self.data.qpos[qpos : qpos + 3] = [*rng.uniform(low, high), float(reset.drop_height)]
                self.data.qpos[qpos + 3 : qpos + 7] = uniform_quaternion(rng)
                mujoco.mj_forward(self.model, self.data)
                if not touching_geoms(self.data, geoms, 0.0):
                    break
            else:
                raise RuntimeError(
                    f"no free drop pose in {tries} tries; check twin.reset.object_low/high and drop_height"
                )

    def _settle(self, seconds: float, speed: float) -> None:
        """Let dropped objects come to rest with the arm held still and the gripper open (at most `seconds`;
        early exit once every object moves and turns slower than `speed` m/s or rad/s)."""
        self.data.ctrl[:] = 0.0
        self.data.ctrl[self.index.gripper_actuator] = -self.gripper_command_max
        for _ in range(max(1, round(seconds / self.control_period))):
            mujoco.mj_step(self.model, self.data, nstep=self.substeps)
            velocities = [self.data.qvel[d : d + 6] for d in self.index.object_dof]
            if max(float(np.abs(v).max()) for v in velocities) < speed:
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
        verdict = self.judge.update(self.step_count, check.success, self.gripper_position(), unstable)
        info = {
            "time": self.time,
            "step": self.step_count,
            "object_ids": self.object_ids,
            "stack_check": check,
            "stacked": check.success,  # the sparse reward at this step
            # sim time at the start of the current stacked run (time to success when the episode succeeds)
            "stacked_since": None
            if verdict.stacked_since is None
            else (verdict.stacked_since - 1) * self.control_period,
            "time_limit": verdict.done and not verdict.success and not unstable,
            "physics_unstable": unstable,
        }
        return TwinStep(self.observation(), verdict.success, verdict.done, info)

    def is_stacked(self) -> bool:
        """The benchmark's sparse reward in the current state (not the episode's verdict)."""
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

    def gripper_velocity(self) -> float:
        """Driver speed in 0..255 units per second (positive: closing), on the scale of `gripper_position`."""
        low, high = self.gripper_range
        speed = self.data.qvel[self.index.gripper_driver_dof]
        return float(speed / (high - low) * self.gripper_command_max)

    def object_poses(self) -> np.ndarray:
        """(3, 7) red, green, blue: x, y, z, qw, qx, qy, qz (privileged; w >= 0 as in the benchmark)."""
        bodies = list(self.index.object_bodies)
        quats = canonical_quat(self.data.xquat[bodies], OBJECT_REFERENCE_WXYZ)
        return np.hstack([self.data.xpos[bodies], quats])

    def object_geometries(self) -> tuple[ObjectGeometry, ...]:
        """Red, green, blue hulls in their body frames (the meshes the twin compiled)."""
        assert self.object_ids is not None
        return tuple(object_geometry(object_id) for object_id in self.object_ids)

    def set_object_poses(self, poses: np.ndarray) -> None:
        """Place red, green, blue at (3, 7) poses (x, y, z, qw, qx, qy, qz), at rest (tests, scenarios)."""
        poses = np.asarray(poses, dtype=float).reshape(3, 7)
        for qpos, dof, pose in zip(self.index.object_qpos, self.index.object_dof, poses, strict=True):
            self.data.qpos[qpos : qpos + 7] = pose
            self.data.qvel[dof : dof + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def pinch_pose(self) -> np.ndarray:
        """(7,) tool point x, y, z, qw, qx, qy, qz; same convention as `ArmKinematics.pinch_pose`."""
        rotation = self.data.site_xmat[self._pinch_site]
        quat = canonical_quat(rotation_to_quat_wxyz(rotation), PINCH_REFERENCE_WXYZ)
        return np.concatenate([self.data.site_xpos[self._pinch_site], quat])

    def objects_touching_red(self) -> tuple[bool, bool, bool]:
        """(red, green, blue): in contact with red (red itself: False), at the success test's distance."""
        red, green, blue = self.index.object_geoms
        touched = touching_geoms(self.data, red, float(self.cfg.twin.success.contact_distance))
        return False, bool(touched & green), bool(touched & blue)

    def tcp_pose(self) -> np.ndarray:
        """(7,) wrist-site pose (the benchmark's `sawyer/tcp/pose`); same as `ArmKinematics.tcp_pose`."""
        rotation = self.data.site_xmat[self._flange_site]
        quat = canonical_quat(rotation_to_quat_wxyz(rotation), self.kinematics.tcp_reference_wxyz)
        return np.concatenate([self.data.site_xpos[self._flange_site], quat])

    def observation(self) -> dict[str, np.ndarray]:
        obs = {
            "gripper/joints/angle": np.array([self.gripper_position()], dtype=np.float32),
            GRIPPER_VELOCITY_KEY: np.array([self.gripper_velocity()], dtype=np.float32),
            "sawyer/joints/angle": self.joint_positions().astype(np.float32),
            "sawyer/pinch/pose": self.pinch_pose().astype(np.float32),
            "sawyer/tcp/pose": self.tcp_pose().astype(np.float32),
        }
        if self.render_images:
            for name in self.policy_cameras:
                obs[f"{name}/pixels"] = self.render(name)
        if self.cfg.twin.privileged_observations:
            poses = self.object_poses()
            obs["objects/pose"] = poses.reshape(-1).astype(np.float32)
            if self.cfg.twin.get("shape_observations", False):
                obs[SHAPE_KEY] = objects_shape(self.object_geometries(), poses, shape_version(self.cfg))
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
                reflections=bool(self.cfg.twin.rendering.reflections),
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
