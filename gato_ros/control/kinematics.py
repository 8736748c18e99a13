"""Forward kinematics, Jacobian and inverse kinematics of the Sawyer's tool point ("pinch").

A private MuJoCo model of the arm, used for kinematics only: it never steps physics and holds no
simulation state of the twin, so the real robot's command node can feed it joint states from ROS.
"""

from __future__ import annotations

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
    flange_position: np.ndarray  # (3,) wrist flange position
    jacobian: np.ndarray  # (6, 7) [linear; angular] Jacobian of the pinch point

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
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation, dtype=np.float64).reshape(9))
    return quat


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
        self.joint_min = np.asarray(robot_cfg.joint_min, dtype=float)
        self.joint_max = np.asarray(robot_cfg.joint_max, dtype=float)
        self.nominal_posture = np.asarray(robot_cfg.nominal_posture, dtype=float)
        self._ik = robot_cfg.inverse_kinematics
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))

    def tool_state(self, joint_positions: np.ndarray) -> ToolState:
        """Pinch pose, flange position and the pinch Jacobian at `joint_positions` (7,)."""
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
        )

    def pinch_pose(self, joint_positions: np.ndarray) -> np.ndarray:
        """(7,) x, y, z, qw, qx, qy, qz of the tool point."""
        state = self.tool_state(joint_positions)
        return np.concatenate([state.position, rotation_to_quat_wxyz(state.rotation)])

    def tcp_pose(self, joint_positions: np.ndarray) -> np.ndarray:
        """(7,) wrist flange position with the tool orientation (the benchmark's `tcp` convention)."""
        state = self.tool_state(joint_positions)
        return np.concatenate([state.flange_position, rotation_to_quat_wxyz(state.rotation)])

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
