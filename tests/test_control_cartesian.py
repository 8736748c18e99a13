"""The Cartesian velocity controller: limits hold for any input; the tool moves as commanded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics, CartesianVelocityController

CFG = load_config()
KINEMATICS = ArmKinematics(CFG.robot)
CONTROLLER = CartesianVelocityController(CFG, KINEMATICS)
LOW = np.asarray(CFG.robot.joint_min)
HIGH = np.asarray(CFG.robot.joint_max)
VMAX = np.asarray(CFG.robot.velocity_limit)
MARGIN = float(CFG.robot.cartesian_controller.joint_limit_margin)
PERIOD = 1.0 / float(CFG.control.rate_hz)

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
unit = st.floats(0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(
    fractions=st.lists(unit, min_size=7, max_size=7),
    action=st.lists(any_float, min_size=5, max_size=5),
)
def test_joint_and_velocity_limits_hold_for_any_action(fractions: list[float], action: list[float]) -> None:
    inner_low, inner_high = LOW + MARGIN, HIGH - MARGIN
    q = inner_low + np.asarray(fractions) * (inner_high - inner_low)
    qdot = CONTROLLER.joint_velocity(q, np.asarray(action))
    assert qdot.shape == (7,)
    assert np.all(np.isfinite(qdot))
    assert np.all(np.abs(qdot) <= VMAX + 1e-9)
    q_next = q + qdot * PERIOD
    assert np.all(q_next >= inner_low - 1e-9)
    assert np.all(q_next <= inner_high + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    fractions=st.lists(st.floats(-0.2, 1.2), min_size=7, max_size=7),
    action=st.lists(st.floats(-1e6, 1e6), min_size=5, max_size=5),
)
def test_outside_the_margin_joints_only_move_back_in(fractions: list[float], action: list[float]) -> None:
    q = LOW + np.asarray(fractions) * (HIGH - LOW)
    qdot = CONTROLLER.joint_velocity(q, np.asarray(action))
    assert np.all(np.abs(qdot) <= VMAX + 1e-9)
    below, above = q < LOW + MARGIN, q > HIGH - MARGIN
    assert np.all(qdot[below] >= 0.0)
    assert np.all(qdot[above] <= 0.0)


def test_non_finite_joint_state_commands_stop() -> None:
    q = np.asarray(CFG.robot.nominal_posture, dtype=float)
    q[3] = np.nan
    assert np.array_equal(CONTROLLER.joint_velocity(q, np.array([0.07, 0, 0, 0, 1])), np.zeros(7))


def test_gripper_command_is_bang_bang() -> None:
    assert CONTROLLER.gripper_command(np.array([0, 0, 0, 0, 0.3])) == 255.0
    assert CONTROLLER.gripper_command(np.array([0, 0, 0, 0, 0.0])) == -255.0
    assert CONTROLLER.gripper_command(np.array([0, 0, 0, 0, np.nan])) == -255.0


def _integrate(q: np.ndarray, action: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        q = q + CONTROLLER.joint_velocity(q, action) * PERIOD
    return q


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_tool_point_follows_commanded_velocity_and_stays_pointing_down(axis: int, sign: float) -> None:
    q0, converged = KINEMATICS.inverse_kinematics(np.array([0.6, 0.0, 0.17]), 0.2)
    assert converged
    action = np.zeros(5)
    action[axis] = sign * 0.05
    start = KINEMATICS.tool_state(q0)
    end = KINEMATICS.tool_state(_integrate(q0, action, 10))  # 0.5 s -> 2.5 cm
    moved = end.position - start.position
    assert moved[axis] * sign == pytest.approx(0.025, abs=0.004)
    assert np.linalg.norm(np.delete(moved, axis)) < 0.003
    assert end.rotation[2, 2] < -0.999  # tool z still points down
    assert end.yaw == pytest.approx(start.yaw, abs=0.01)


def test_workspace_and_yaw_clamps_stop_outward_motion() -> None:
    ctrl = CFG.robot.cartesian_controller
    high = np.asarray(ctrl.workspace_high)
    q0, converged = KINEMATICS.inverse_kinematics(high - 0.01, 1.45)
    assert converged
    q = _integrate(q0, np.array([0.07, 0.07, 0.07, 1.0, 0.0]), 40)  # 2 s pushing out
    state = KINEMATICS.tool_state(q)
    assert np.all(state.position <= high + 0.005)
    assert state.yaw <= float(ctrl.yaw_limit) + 0.02
    # and it can come back in
    q = _integrate(q, np.array([-0.07, -0.07, -0.07, -1.0, 0.0]), 10)
    assert np.all(KINEMATICS.tool_state(q).position < high - 0.02)
