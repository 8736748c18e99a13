"""The benchmark's Cartesian velocity controller: 5-D action -> 7 joint velocities + gripper command.

Shared by the twin and the real robot's command node; it reads only joint positions, never simulation
state. Every output respects the joint velocity limits and keeps the joints `joint_limit_margin` inside
their position limits over one control period, whatever the input (NaN, huge, out-of-range actions).
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from gato_ros.control.kinematics import DOWN, ArmKinematics, ToolState

ACTION_SIZE = 5


class CartesianVelocityController:
    """Damped least squares with a null-space pull toward the nominal posture and active-set saturation.

    Action `[vx, vy, vz, wz, gripper]`: tool-point linear velocity (world, m/s), wrist yaw rate (rad/s),
    gripper (> 0 closes). Roll and pitch are servoed to keep the gripper pointing down; the tool point is
    kept inside the workspace box and the wrist yaw inside +-yaw_limit by removing velocity that would leave
    them (a start outside the box is allowed; only motion further out is blocked).
    """

    def __init__(self, cfg: DictConfig, kinematics: ArmKinematics | None = None) -> None:
        robot = cfg.robot
        ctrl = robot.cartesian_controller
        self.kinematics = kinematics or ArmKinematics(robot)
        self.period = 1.0 / float(cfg.control.rate_hz)
        self.action_low = np.asarray(cfg.control.action_low, dtype=float)
        self.action_high = np.asarray(cfg.control.action_high, dtype=float)
        self.velocity_limit = np.asarray(robot.velocity_limit, dtype=float)
        margin = float(ctrl.joint_limit_margin)
        self.joint_low = np.asarray(robot.joint_min, dtype=float) + margin
        self.joint_high = np.asarray(robot.joint_max, dtype=float) - margin
        self.nominal_posture = np.asarray(robot.nominal_posture, dtype=float)
        self.damping_sq = float(ctrl.damping) ** 2
        self.nullspace_gain = float(ctrl.nullspace_gain)
        self.orientation_gain = float(ctrl.orientation_gain)
        self.saturation_passes = int(ctrl.saturation_passes)
        self.workspace_low = np.asarray(ctrl.workspace_low, dtype=float)
        self.workspace_high = np.asarray(ctrl.workspace_high, dtype=float)
        self.yaw_limit = float(ctrl.yaw_limit)
        self.gripper_command_max = float(robot.gripper.command_range[1])

    def sanitize_action(self, action: np.ndarray) -> np.ndarray:
        """(5,) finite action within the bounds; NaN/inf components become 0 (stop, gripper open)."""
        action = np.asarray(action, dtype=float).reshape(-1)
        if action.shape != (ACTION_SIZE,):
            raise ValueError(f"action must have {ACTION_SIZE} components, got {action.shape}")
        action = np.where(np.isfinite(action), action, 0.0)
        return np.clip(action, self.action_low, self.action_high)

    def gripper_command(self, action: np.ndarray) -> float:
        """Bang-bang driver command: +max closes when the action's gripper component is > 0."""
        value = self.sanitize_action(action)[4]
        return self.gripper_command_max if value > 0.0 else -self.gripper_command_max

    def tool_twist(self, state: ToolState, action: np.ndarray) -> np.ndarray:
        """(6,) desired tool twist after the workspace and yaw clamps, with roll/pitch held down."""
        linear = action[:3].copy()
        # Never step past the box within one period; never move further out when already outside.
        room_up = np.maximum(self.workspace_high - state.position, 0.0) / self.period
        room_down = np.minimum(self.workspace_low - state.position, 0.0) / self.period
        linear = np.clip(linear, room_down, room_up)
        yaw_rate = float(action[3])
        yaw = state.yaw
        yaw_room_up = max(self.yaw_limit - yaw, 0.0) / self.period
        yaw_room_down = min(-self.yaw_limit - yaw, 0.0) / self.period
        yaw_rate = float(np.clip(yaw_rate, yaw_room_down, yaw_room_up))
        angular = self.orientation_gain * np.cross(state.rotation[:, 2], DOWN)
        angular[2] = yaw_rate
        return np.concatenate([linear, angular])

    def joint_velocity_bounds(self, joint_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-joint velocity interval honouring velocity limits and the margin-shrunk position limits."""
        low = np.clip(
            (self.joint_low - joint_positions) / self.period, -self.velocity_limit, self.velocity_limit
        )
        high = np.clip(
            (self.joint_high - joint_positions) / self.period, -self.velocity_limit, self.velocity_limit
        )
        return low, np.maximum(low, high)

    def solve(self, joint_positions: np.ndarray, twist: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
        """Joint velocities realising `twist` within the bounds: DLS, then fix saturated joints, re-solve."""
        low, high = self.joint_velocity_bounds(joint_positions)
        posture_pull = self.nullspace_gain * (self.nominal_posture - joint_positions)
        free = np.ones(7, dtype=bool)
        qdot = np.zeros(7)
        for _ in range(self.saturation_passes + 1):
            jac = jacobian[:, free]
            residual = twist - jacobian[:, ~free] @ qdot[~free]
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + self.damping_sq * np.eye(6))
            # Exact projector: a damped one would leak the posture pull into the tool motion.
            null = np.eye(jac.shape[1]) - np.linalg.pinv(jac) @ jac
            candidate = pinv @ residual + null @ posture_pull[free]
            # Uniform scaling keeps the Cartesian direction when only velocity limits bind.
            scale = np.max(np.abs(candidate) / self.velocity_limit[free])
            if scale > 1.0:
                candidate = candidate / scale
            qdot[free] = candidate
            violating = free & ((qdot < low) | (qdot > high))
            if not violating.any():
                break
            qdot[violating] = np.clip(qdot[violating], low[violating], high[violating])
            free &= ~violating
            if not free.any():
                break
        return np.clip(qdot, low, high)

    def joint_velocity(self, joint_positions: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(7,) joint velocity command for `action` at `joint_positions`; zeros if the state is not finite."""
        q = np.asarray(joint_positions, dtype=float).reshape(-1)
        if q.shape != (7,):
            raise ValueError(f"joint_positions must have 7 components, got {q.shape}")
        if not np.all(np.isfinite(q)):
            return np.zeros(7)
        action = self.sanitize_action(action)
        state = self.kinematics.tool_state(q)
        qdot = self.solve(q, self.tool_twist(state, action), state.jacobian)
        return np.where(np.isfinite(qdot), qdot, 0.0)
