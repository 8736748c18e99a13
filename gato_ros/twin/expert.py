"""`ScriptedExpert`: a privileged, state-based stacking policy that generates the training data.

Stages: approach above red -> descend -> close -> lift (grasp check) -> carry above blue -> lower until
red's bottom is just above blue's top -> release -> retreat. A failed grasp, a dropped object or a stalled
stage sends it back to approach (up to `max_attempts`). The gripper yaw is aligned with the red object's
narrowest horizontal width, computed from its mesh vertices in their current orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.control.kinematics import tool_yaw
from gato_ros.twin.scene import body_vertices

RED, GREEN, BLUE = 0, 1, 2
WIDTH_SEARCH_ANGLES = 36  # candidate closing directions over [0, pi) for the narrowest-width grasp


class Stage(Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    CLOSE = "close"
    LIFT = "lift"
    CARRY = "carry"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"
    RECOVER = "recover"
    DONE = "done"


@dataclass
class Scene:
    """What the expert needs from one step: poses and the objects' vertices in their body frames."""

    object_poses: np.ndarray  # (3, 7)
    pinch_position: np.ndarray  # (3,)
    pinch_rotation: np.ndarray  # (3, 3)
    gripper: float  # 0..255
    vertices: tuple[np.ndarray, np.ndarray, np.ndarray]  # per object (N, 3) in the body frame

    def world_vertices(self, obj: int) -> np.ndarray:
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, self.object_poses[obj, 3:])
        return self.vertices[obj] @ rotation.reshape(3, 3).T + self.object_poses[obj, :3]


def box_vertices(half_size: np.ndarray) -> np.ndarray:
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return corners * half_size


def _face_masks(vertices: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices within `band` of the top and of the bottom of a (world-frame) vertex set."""
    z = vertices[:, 2]
    return z > z.max() - band, z < z.min() + band


def wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class ScriptedExpert:
    """Stacks red on blue. `act(twin_or_obs)` -> (5,) action; call `reset()` at each episode start.

    Given the twin, it reads object geometry from the model; given an observation dict (with
    `objects/pose`), it assumes objects are boxes of `expert.fallback_half_size`.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.twin.expert
        self.rate_hz = float(cfg.control.rate_hz)
        self.action_low = np.asarray(cfg.control.action_low, dtype=float)
        self.action_high = np.asarray(cfg.control.action_high, dtype=float)
        ctrl = cfg.robot.cartesian_controller
        self.workspace_low = np.asarray(ctrl.workspace_low, dtype=float)
        self.workspace_high = np.asarray(ctrl.workspace_high, dtype=float)
        self.yaw_limit = float(ctrl.yaw_limit)
        self._vertex_cache: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.reset()

    # -- episode state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.stage = Stage.APPROACH
        self.attempts = 1
        self.stage_steps = 0
        self.grasp_yaw: float | None = None
        self.lift_start_red_z = 0.0
        self.lift_start_pinch_z = 0.0
        self.last_gripper = 0.0

    @property
    def failed(self) -> bool:
        return self.stage is Stage.DONE and self.attempts > int(self.cfg.max_attempts)

    def _enter(self, stage: Stage) -> None:
        self.stage, self.stage_steps = stage, 0

    def _retry(self) -> None:
        self.attempts += 1
        self.grasp_yaw = None
        self._enter(Stage.RECOVER if self.attempts <= int(self.cfg.max_attempts) else Stage.DONE)

    # -- perception --------------------------------------------------------------------------------------
    def _scene(self, source: Any) -> Scene:
        if isinstance(source, dict):
            pinch = np.asarray(source["sawyer/pinch/pose"], dtype=float)
            rotation = np.empty(9)
            mujoco.mju_quat2Mat(rotation, pinch[3:])
            box = box_vertices(np.asarray(self.cfg.fallback_half_size, dtype=float))
            return Scene(
                object_poses=np.asarray(source["objects/pose"], dtype=float).reshape(3, 7),
                pinch_position=pinch[:3],
                pinch_rotation=rotation.reshape(3, 3),
                gripper=float(np.asarray(source["gripper/joints/angle"]).reshape(-1)[0]),
                vertices=(box, box, box),
            )
        model = source.model
        key = (id(model), source.object_ids)
        if key not in self._vertex_cache:
            self._vertex_cache = {key: tuple(body_vertices(model, b) for b in source.index.object_bodies)}
        pinch = source.pinch_pose()
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, pinch[3:])
        return Scene(
            object_poses=source.object_poses(),
            pinch_position=pinch[:3],
            pinch_rotation=rotation.reshape(3, 3),
            gripper=source.gripper_position(),
            vertices=self._vertex_cache[key],
        )

    def _grasp_yaw(self, scene: Scene, current_yaw: float) -> float:
        """Yaw closing the fingers across red's narrowest, most vertical pair of sides (within yaw limits).

        Score per closing direction: horizontal width plus a penalty for slant (how far the top face's
        centre is offset from the bottom face's along that direction): squeezing slanted faces pops the
        object out of the grasp.
        """
        vertices = scene.world_vertices(RED)
        angles = np.linspace(0.0, np.pi, WIDTH_SEARCH_ANGLES, endpoint=False)
        directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        projections = vertices[:, :2] @ directions.T
        widths = projections.max(axis=0) - projections.min(axis=0)
        top, bottom = _face_masks(vertices, float(self.cfg.face_band))
        slant = np.abs(projections[top].mean(axis=0) - projections[bottom].mean(axis=0))
        closing_angle = float(angles[int(np.argmin(widths + float(self.cfg.slant_weight) * slant))])
        # Fingers close along the tool y axis, which points along yaw - pi/2.
        yaw = wrap_angle(closing_angle + np.pi / 2)
        limit = self.yaw_limit - float(self.cfg.yaw_limit_margin)
        candidates = [yaw + k * np.pi for k in (-2, -1, 0, 1, 2)]
        candidates = [c for c in candidates if -limit <= c <= limit] or [float(np.clip(yaw, -limit, limit))]
        return float(min(candidates, key=lambda c: abs(c - current_yaw)))

    # -- control -----------------------------------------------------------------------------------------
    def _move(
        self, scene: Scene, target: np.ndarray, yaw: float | None, gripper: float, slow: bool = False
    ) -> tuple[np.ndarray, bool]:
        """Proportional tool velocity toward `target` (clamped to the workspace) -> (action, reached)."""
        target = np.clip(target, self.workspace_low, self.workspace_high)
        error = target - scene.pinch_position
        gain = float(self.cfg.position_gain)
        speed = float(self.cfg.slow_speed) if slow else float(self.action_high[0])
        velocity = np.clip(gain * error, -speed, speed)
        current_yaw = tool_yaw(scene.pinch_rotation)
        yaw_error = 0.0 if yaw is None else wrap_angle(yaw - current_yaw)
        yaw_rate = float(self.cfg.yaw_gain) * yaw_error
        action = np.clip(np.array([*velocity, yaw_rate, gripper]), self.action_low, self.action_high)
        reached = bool(
            np.linalg.norm(error) < float(self.cfg.position_tolerance)
            and abs(yaw_error) < float(self.cfg.yaw_tolerance)
        )
        return action, reached

    def act(self, source: Any) -> np.ndarray:
        """One action for the current state of the twin (or an observation dict with privileged poses)."""
        cfg = self.cfg
        scene = self._scene(source)
        self.stage_steps += 1
        red = scene.world_vertices(RED)
        blue = scene.world_vertices(BLUE)
        red_centre = scene.object_poses[RED, :3]
        red_height = float(red[:, 2].max() - red[:, 2].min())
        open_, close = -1.0, 1.0
        timeout = self.stage_steps > float(cfg.stage_timeout_seconds) * self.rate_hz
        current_yaw = tool_yaw(scene.pinch_rotation)
        grasp_z = max(
            float(red[:, 2].max()) - min(float(cfg.grasp_depth) * red_height, float(cfg.max_grasp_depth)),
            float(red[:, 2].min()) + float(cfg.min_grasp_height_above_bottom),
        )

        if self.stage is Stage.APPROACH:
            if self.grasp_yaw is None or self.stage_steps == 1:
                self.grasp_yaw = self._grasp_yaw(scene, current_yaw)
            target = np.array([*red_centre[:2], float(red[:, 2].max()) + float(cfg.approach_height)])
            action, reached = self._move(scene, target, self.grasp_yaw, open_)
            if reached and scene.gripper < float(cfg.open_gripper_threshold):
                self._enter(Stage.DESCEND)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.DESCEND:
            target = np.array([*red_centre[:2], grasp_z])
            action, reached = self._move(scene, target, self.grasp_yaw, open_)
            if reached:
                self._enter(Stage.CLOSE)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.CLOSE:
            action, _ = self._move(scene, scene.pinch_position, None, close)
            settled = abs(scene.gripper - self.last_gripper) < float(cfg.gripper_settled_delta)
            self.last_gripper = scene.gripper
            if (settled and self.stage_steps >= float(cfg.close_seconds) * self.rate_hz) or timeout:
                self.lift_start_red_z = float(red_centre[2])
                self.lift_start_pinch_z = float(scene.pinch_position[2])
                self._enter(Stage.LIFT)
            return action
        if self.stage is Stage.LIFT:
            target = np.array([*scene.pinch_position[:2], float(cfg.lift_height)])
            action, reached = self._move(scene, target, None, close)
            risen = float(scene.pinch_position[2]) - self.lift_start_pinch_z
            if risen > float(cfg.grasp_check_height):
                red_risen = float(red_centre[2]) - self.lift_start_red_z
                if red_risen < 0.5 * risen or scene.gripper > float(cfg.empty_gripper_threshold):
                    self._retry()
                    return action
            if reached:
                self._enter(Stage.CARRY)
            elif timeout:
                self._retry()
            return action
        # Put red's bottom face centre over blue's top face centre (not the body origins: sheared and
        # tapered objects would hang off).
        red_bottom = red[_face_masks(red, float(cfg.face_band))[1], :2].mean(axis=0)
        blue_top = blue[_face_masks(blue, float(cfg.face_band))[0], :2].mean(axis=0)
        if self.stage is Stage.CARRY:
            offset = blue_top - red_bottom
            target = np.array([*(scene.pinch_position[:2] + offset), float(cfg.lift_height)])
            action, reached = self._move(scene, target, None, close)
            if self._dropped(scene):
                self._retry()
            elif reached:
                self._enter(Stage.LOWER)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.LOWER:
            offset = blue_top - red_bottom
            drop = float(blue[:, 2].max()) + float(cfg.place_clearance) - float(red[:, 2].min())
            target = scene.pinch_position + np.array([*offset, drop])
            action, reached = self._move(scene, target, None, close, slow=True)
            if self._dropped(scene):
                self._retry()
            elif reached:
                self._enter(Stage.RELEASE)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.RELEASE:
            action, _ = self._move(scene, scene.pinch_position, None, open_)
            # The driver command is integrated, so opening first unwinds the closing command: wait for
            # the fingers to actually open before moving away.
            opened = scene.gripper < float(cfg.open_gripper_threshold)
            if (opened and self.stage_steps >= float(cfg.open_seconds) * self.rate_hz) or timeout:
                self._enter(Stage.RETREAT)
            return action
        if self.stage is Stage.RETREAT:
            target = np.array([*scene.pinch_position[:2], float(cfg.lift_height)])
            action, reached = self._move(scene, target, None, open_)
            if reached or timeout:
                stacked = float(red_centre[2]) - float(scene.object_poses[BLUE, 2]) > float(
                    cfg.stacked_height
                )
                if stacked:
                    self._enter(Stage.DONE)
                else:
                    self._retry()
            return action
        if self.stage is Stage.RECOVER:
            target = np.array([*scene.pinch_position[:2], float(cfg.lift_height)])
            action, reached = self._move(scene, target, None, open_)
            if reached or timeout:
                self._enter(Stage.APPROACH)
            return action
        # DONE: hold still with the gripper open.
        return np.array([0.0, 0.0, 0.0, 0.0, open_])

    def _dropped(self, scene: Scene) -> bool:
        """Red no longer follows the gripper (fell or slipped out)."""
        red_below_pinch = float(scene.pinch_position[2]) - float(scene.object_poses[RED, 2])
        return red_below_pinch > float(self.cfg.drop_distance) or scene.gripper > float(
            self.cfg.empty_gripper_threshold
        )


__all__ = ["ScriptedExpert", "Stage"]
