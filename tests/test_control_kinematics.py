"""Arm kinematics: tool-point geometry from the wheel's assets and inverse kinematics."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics, down_rotation, tool_yaw

CFG = load_config()
KINEMATICS = ArmKinematics(CFG.robot)
WRIST_TO_PINCH = 0.2012  # FTS300 (0.0415) + 2F-85 mount (0.0108) + pinch offset (0.1489)


def test_pinch_sits_along_the_tool_axis_beyond_the_flange() -> None:
    q = np.asarray(CFG.robot.nominal_posture)
    state = KINEMATICS.tool_state(q)
    offset = state.position - state.flange_position
    assert np.linalg.norm(offset) == pytest.approx(WRIST_TO_PINCH, abs=1e-4)
    assert np.dot(offset / np.linalg.norm(offset), state.rotation[:, 2]) == pytest.approx(1.0, abs=1e-6)
    pose, tcp = KINEMATICS.pinch_pose(q), KINEMATICS.tcp_pose(q)
    assert np.allclose(tcp[:3], state.flange_position)
    # tcp is the wrist site's own orientation (the benchmark's), a fixed rotation away from the pinch's.
    assert np.allclose(state.rotation, state.flange_rotation @ KINEMATICS.pinch_in_flange, atol=1e-9)
    pinch_rot, tcp_rot = np.empty(9), np.empty(9)
    mujoco.mju_quat2Mat(pinch_rot, pose[3:])
    mujoco.mju_quat2Mat(tcp_rot, tcp[3:])
    assert np.allclose(pinch_rot.reshape(3, 3), state.rotation, atol=1e-9)
    assert np.allclose(tcp_rot.reshape(3, 3), state.flange_rotation, atol=1e-9)
    assert np.linalg.norm(pose[3:]) == pytest.approx(1.0)
    assert np.linalg.norm(tcp[3:]) == pytest.approx(1.0)


def test_jacobian_matches_finite_differences() -> None:
    q = np.asarray(CFG.robot.nominal_posture)
    jac = KINEMATICS.tool_state(q).jacobian
    eps = 1e-6
    for j in range(7):
        dq = np.zeros(7)
        dq[j] = eps
        numeric = (KINEMATICS.tool_state(q + dq).position - KINEMATICS.tool_state(q - dq).position) / (
            2 * eps
        )
        assert np.allclose(jac[:3, j], numeric, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_inverse_kinematics_reaches_start_poses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reset = CFG.twin.reset
    target = rng.uniform(reset.tool_low, reset.tool_high)
    yaw = rng.uniform(*reset.yaw_range)
    q, converged = KINEMATICS.inverse_kinematics(target, yaw)
    assert converged
    state = KINEMATICS.tool_state(q)
    assert np.allclose(state.position, target, atol=1e-3)
    assert np.allclose(state.rotation, down_rotation(yaw), atol=1e-2)
    assert tool_yaw(state.rotation) == pytest.approx(yaw, abs=1e-2)
    assert np.all(q >= np.asarray(CFG.robot.joint_min)) and np.all(q <= np.asarray(CFG.robot.joint_max))
