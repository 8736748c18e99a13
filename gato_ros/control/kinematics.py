"""Forward kinematics, Jacobian and inverse kinematics of the Sawyer's tool point ("pinch").

A private MuJoCo model of the arm, used for kinematics only: it never steps physics and holds no
simulation state of the twin, so the real robot's command node can feed it joint states from ROS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.control.arm_model import ARM_JOINTS, FLANGE_SITE, PINCH_SITE, build_arm_spec

DOWN = np.array([0.0, 0.0, -1.0])


@dataclass(frozen=True)
class ToolState:
    """Tool-point ("pinch") and flange frames for one joint configuration (world frame)."""

    position: np.ndarray  # (3,) pinch position
    rotation: np.ndarray  # (3, 3) pinch orientation, columns are the tool axes
    flange_position: np.ndarray  # (3,) wrist flange (`wrist_site`) position
    jacobian: np.ndarray  # (6, 7) [linear; angular] Jacobian of the pinch point
    flange_rotation: np.ndarray  # (3, 3) wrist flange (`wrist_site`) orientation

    @property
    def yaw(self) -> float:
        return tool_yaw(self.rotation)


def tool_yaw(rotation: np.ndarray) -> float:
    """Wrist yaw: heading of the tool x axis in the world xy plane (0 = along +x with the tool down)."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Tool orientation pointing straight down (tool z = -world z) with the given yaw."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def rotation_to_quat_wxyz(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix; its sign is arbitrary, see `canonical_quat`."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation, dtype=np.float64).reshape(9))
    return quat


def canonical_quat(
    quat_wxyz: np.ndarray | Sequence[float],
    reference_wxyz: np.ndarray | Sequence[float] = (1.0, 0.0, 0.0, 0.0),
) -> np.ndarray:
    """Normalised `quat_wxyz` (shape (..., 4)) or its negation, whichever has dot(q, reference) >= 0.

    q and -q are the same rotation, but the tokenizer must see one value per pose. The benchmark's
    `positive_leading_quat` (w >= 0, the identity reference, used for objects) flips sign at random for
    a tool pointing straight down (w ~ 0), so tool frames use their nominal tool-down orientation as
    the reference (`PINCH_REFERENCE_WXYZ`, `ArmKinematics.tcp_reference_wxyz`): the flip then lies half a
    turn of yaw away, outside the workspace.
    """
    quat = np.asarray(quat_wxyz, dtype=np.float64)
    if quat.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape (..., 4), got {quat.shape}")
    norm = np.linalg.norm(quat, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norm)) or np.any(norm < 1e-12):
        raise ValueError("cannot canonicalise a zero or non-finite quaternion")
    quat = quat / norm
    dot = np.sum(quat * np.asarray(reference_wxyz, dtype=np.float64), axis=-1, keepdims=True)
    return np.where(dot < 0.0, -quat, quat)


# Sign references for the observation's quaternions (`canonical_quat`); the twin imports these.
OBJECT_REFERENCE_WXYZ = np.array([1.0, 0.0, 0.0, 0.0])  # the benchmark's w >= 0
PINCH_REFERENCE_WXYZ = rotation_to_quat_wxyz(down_rotation(0.0))  # tool down, yaw 0: (0, 1, 0, 0)


def orientation_error(rotation: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame rotation vector (small-angle form) that turns `rotation` toward `target`."""
    return 0.5 * sum(np.cross(rotation[:, i], target[:, i]) for i in range(3))


class ArmKinematics:
    """Kinematics of the Sawyer + wrist sensor + 2F-85 from the same assets as the twin."""

    def __init__(self, robot_cfg: DictConfig) -> None:
        self.model = build_arm_spec().compile()
        self._data = mujoco.MjData(self.model)
        names = tuple(robot_cfg.joint_names)
        if names != ARM_JOINTS:
            raise ValueError(f"robot.joint_names {names} do not match the Sawyer model's {ARM_JOINTS}")
        self._qpos_index = np.array([self.model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._dof_index = np.array([self.model.joint(n).dofadr[0] for n in ARM_JOINTS])
        self._pinch = self.model.site(PINCH_SITE).id
        self._flange = self.model.site(FLANGE_SITE).id
        # The pinch frame is rigidly fixed to the wrist site: read their relative rotation once (any
        # qpos) so the tcp's sign reference is the wrist orientation that puts the tool down at yaw 0.
        mujoco.mj_kinematics(self.model, self._data)
        flange = self._data.site_xmat[self._flange].reshape(3, 3)
        self.pinch_in_flange = flange.T @ self._data.site_xmat[self._pinch].reshape(3, 3)
        self.tcp_reference_wxyz = rotation_to_quat_wxyz(down_rotation(0.0) @ self.pinch_in_flange.T)
        self.joint_min = np.asarray(robot_cfg.joint_min, dtype=float)
        self.joint_max = np.asarray(robot_cfg.joint_max, dtype=float)
        self.nominal_posture = np.asarray(robot_cfg.nominal_posture, dtype=float)
        self._ik = robot_cfg.inverse_kinematics
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def tool_state(self, joint_positions: np.ndarray) -> ToolState:
        """Pinch pose, flange pose and the pinch Jacobian at `joint_positions` (7,)."""
        data = self._data
        data.qpos[self._qpos_index] = joint_positions
        mujoco.mj_kinematics(self.model, data)
        mujoco.mj_comPos(self.model, data)
        mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self._pinch)
        jacobian = np.vstack([self._jacp[:, self._dof_index], self._jacr[:, self._dof_index]])
        return ToolState(
            position=data.site_xpos[self._pinch].copy(),
            rotation=data.site_xmat[self._pinch].reshape(3, 3).copy(),
            flange_position=data.site_xpos[self._flange].copy(),
            jacobian=jacobian,
            flange_rotation=data.site_xmat[self._flange].reshape(3, 3).copy(),
        )

    def pinch_pose(self, joint_positions: np.ndarray) -> np.ndarray:
        """(7,) x, y, z, qw, qx, qy, qz of the tool point (quaternion canonical w.r.t. tool-down)."""
        state = self.tool_state(joint_positions)
        quat = canonical_quat(rotation_to_quat_wxyz(state.rotation), PINCH_REFERENCE_WXYZ)
        return np.concatenate([state.position, quat])

    def tcp_pose(self, joint_positions: np.ndarray) -> np.ndarray:
        """(7,) pose of the wrist site, as the benchmark's `sawyer/tcp/pose` (dm_robotics' tcp is the
        `wrist_site`, position and orientation); quaternion canonical w.r.t. `tcp_reference_wxyz`."""
        state = self.tool_state(joint_positions)
        quat = canonical_quat(rotation_to_quat_wxyz(state.flange_rotation), self.tcp_reference_wxyz)
        return np.concatenate([state.flange_position, quat])

    def inverse_kinematics(
        self, position: np.ndarray, yaw: float, initial: np.ndarray | None = None
    ) -> tuple[np.ndarray, bool]:
        """Joint positions putting the tool point at `position`, pointing down with `yaw`.

        Damped least squares from `initial` (default: the nominal posture) with a null-space pull toward
        the nominal posture, clipped to the joint limits. Returns (q, converged).
        """
        cfg = self._ik
        q = (self.nominal_posture if initial is None else np.asarray(initial, dtype=float)).copy()
        target_rotation = down_rotation(yaw)
        damping_sq = float(cfg.damping) ** 2
        for _ in range(int(cfg.iterations)):
            state = self.tool_state(q)
            error = np.concatenate(
                [np.asarray(position) - state.position, orientation_error(state.rotation, target_rotation)]
            )
            if (
                np.linalg.norm(error[:3]) < cfg.position_tolerance
                and np.linalg.norm(error[3:]) < cfg.orientation_tolerance
            ):
                return q, True
            jac = state.jacobian
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + damping_sq * np.eye(6))
            # Exact projector: the posture pull must not bias the converged tool pose.
            null = np.eye(7) - np.linalg.pinv(jac) @ jac
            step = pinv @ error + null @ (self.nominal_posture - q) * float(cfg.nullspace_gain)
            q = np.clip(q + float(cfg.step_scale) * step, self.joint_min, self.joint_max)
        state = self.tool_state(q)
        converged = bool(
            np.linalg.norm(np.asarray(position) - state.position) < cfg.position_tolerance
            and np.linalg.norm(orientation_error(state.rotation, target_rotation)) < cfg.orientation_tolerance
        )
        return q, converged
