"""Observation quaternions follow the benchmark's conventions, with one sign per pose.

`sawyer/tcp/pose` is the `wrist_site` pose (position and orientation) as in dm_robotics; quaternions are
canonical (`canonical_quat`): objects w >= 0 as the benchmark's `positive_leading_quat`, tool frames in
the hemisphere of their nominal tool-down orientation (w ~ 0 there, so w >= 0 would flip at random).
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.control.arm_model import ARM_JOINTS, FLANGE_SITE, PINCH_SITE, build_arm_spec
from gato_ros.control.kinematics import (
    OBJECT_REFERENCE_WXYZ,
    PINCH_REFERENCE_WXYZ,
    ArmKinematics,
    canonical_quat,
    down_rotation,
    rotation_to_quat_wxyz,
)
from gato_ros.twin import StackingTwin

CFG = load_config()
KINEMATICS = ArmKinematics(CFG.robot)
TOOL_LOW, TOOL_HIGH = np.array([0.5, -0.14, 0.22]), np.array([0.7, 0.14, 0.43])
YAW_RANGE = (-np.pi / 4, np.pi / 4)
Wheel = tuple[mujoco.MjModel, mujoco.MjData]


def quat_to_rotation(quat: np.ndarray) -> np.ndarray:
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, np.asarray(quat, dtype=np.float64))
    return rotation.reshape(3, 3)


def random_unit_quats(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    quats = rng.normal(size=(*shape, 4))
    return quats / np.linalg.norm(quats, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def reachable_configs() -> list[np.ndarray]:
    """~50 tool-down joint configurations sampled like `StackingTwin.reset` (seeded)."""
    rng = np.random.default_rng(9)
    configs = []
    for _ in range(50):
        target, yaw = rng.uniform(TOOL_LOW, TOOL_HIGH), float(rng.uniform(*YAW_RANGE))
        q, converged = KINEMATICS.inverse_kinematics(target, yaw)
        if converged:
            configs.append(q)
    assert len(configs) >= 45
    return configs


@pytest.fixture(scope="module")
def wheel_model() -> Wheel:
    """The installed asset's arm, compiled independently of `ArmKinematics`."""
    model = build_arm_spec().compile()
    return model, mujoco.MjData(model)


def wheel_site_rotations(wheel: Wheel, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wrist_site, pinch_site) world rotations of the wheel's model at arm joints `q`."""
    model, data = wheel
    for name, value in zip(ARM_JOINTS, q, strict=True):
        data.qpos[model.joint(name).qposadr[0]] = value
    mujoco.mj_kinematics(model, data)
    wrist = data.site_xmat[model.site(FLANGE_SITE).id].reshape(3, 3).copy()
    pinch = data.site_xmat[model.site(PINCH_SITE).id].reshape(3, 3).copy()
    return wrist, pinch


# -- (a) canonical_quat -----------------------------------------------------------------------------


def test_canonical_quat_picks_one_sign_in_the_reference_hemisphere() -> None:
    rng = np.random.default_rng(0)
    quats = random_unit_quats(rng, (200,))
    for reference in (OBJECT_REFERENCE_WXYZ, PINCH_REFERENCE_WXYZ, KINEMATICS.tcp_reference_wxyz):
        plus, minus = canonical_quat(quats, reference), canonical_quat(-quats, reference)
        assert np.allclose(plus, minus)
        assert np.all(plus @ reference >= 0.0)
        assert np.allclose(np.abs(np.sum(plus * quats, axis=-1)), 1.0)  # same rotation: +-q
    assert np.all(canonical_quat(quats)[:, 0] >= 0.0)  # default reference: the benchmark's w >= 0


def test_canonical_quat_is_vectorised_and_normalises() -> None:
    rng = np.random.default_rng(1)
    quats = random_unit_quats(rng, (3, 5)) * rng.uniform(0.5, 2.0, (3, 5, 1))
    batch = canonical_quat(quats, PINCH_REFERENCE_WXYZ)
    assert batch.shape == (3, 5, 4)
    assert np.allclose(np.linalg.norm(batch, axis=-1), 1.0)
    singles = [[canonical_quat(q, PINCH_REFERENCE_WXYZ) for q in row] for row in quats]
    assert np.allclose(batch, np.array(singles))
    assert np.allclose(canonical_quat([0.0, -2.0, 0.0, 0.0], PINCH_REFERENCE_WXYZ), [0.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        canonical_quat(np.zeros(4))
    with pytest.raises(ValueError):
        canonical_quat(np.ones(3))


def test_references_are_the_nominal_tool_down_orientations(wheel_model: Wheel) -> None:
    assert np.allclose(PINCH_REFERENCE_WXYZ, [0.0, 1.0, 0.0, 0.0])
    assert np.allclose(OBJECT_REFERENCE_WXYZ, [1.0, 0.0, 0.0, 0.0])
    q, converged = KINEMATICS.inverse_kinematics(np.array([0.6, 0.0, 0.3]), 0.0)
    assert converged
    wrist, pinch = wheel_site_rotations(wheel_model, q)
    assert np.allclose(pinch, down_rotation(0.0), atol=1e-2)
    # The tcp reference is the wheel's wrist-site orientation with the tool down at yaw 0.
    assert abs(rotation_to_quat_wxyz(wrist) @ KINEMATICS.tcp_reference_wxyz) == pytest.approx(1.0, abs=1e-4)


# -- (b) continuity over the workspace --------------------------------------------------------------


def test_tool_quaternions_are_continuous_in_the_workspace(reachable_configs: list[np.ndarray]) -> None:
    rng = np.random.default_rng(2)
    step = 1e-3  # rad per joint
    for q in reachable_configs:
        pinch, tcp = KINEMATICS.pinch_pose(q)[3:], KINEMATICS.tcp_pose(q)[3:]
        # Well inside the reference hemisphere (yaw +-pi/4 gives cos(pi/8) ~ 0.92), far from the flip.
        assert pinch @ PINCH_REFERENCE_WXYZ > 0.5
        assert tcp @ KINEMATICS.tcp_reference_wxyz > 0.5
        for _ in range(3):
            dq = rng.uniform(-step, step, 7)
            # A rotation of angle a moves a unit quaternion by 2 sin(a / 4) ~ a / 2: no sign flip.
            assert np.linalg.norm(KINEMATICS.pinch_pose(q + dq)[3:] - pinch) < 7 * step
            assert np.linalg.norm(KINEMATICS.tcp_pose(q + dq)[3:] - tcp) < 7 * step


def test_tool_down_yaw_sweep_has_no_sign_flip() -> None:
    """Across the controller's whole yaw range the pinch quaternion moves smoothly."""
    limit = float(CFG.robot.cartesian_controller.yaw_limit)
    quats = canonical_quat(
        np.array([rotation_to_quat_wxyz(down_rotation(y)) for y in np.linspace(-limit, limit, 181)]),
        PINCH_REFERENCE_WXYZ,
    )
    assert np.all(quats @ PINCH_REFERENCE_WXYZ > 0.5)
    assert np.max(np.linalg.norm(np.diff(quats, axis=0), axis=-1)) < 0.02


# -- (c) tcp is the wheel's wrist site --------------------------------------------------------------


def test_tcp_is_the_wrist_site_pose_of_the_installed_asset(
    reachable_configs: list[np.ndarray], wheel_model: Wheel
) -> None:
    model, data = wheel_model
    for q in reachable_configs[:10]:
        wrist, pinch = wheel_site_rotations(wheel_model, q)
        tcp, pinch_pose = KINEMATICS.tcp_pose(q), KINEMATICS.pinch_pose(q)
        assert np.allclose(tcp[:3], data.site_xpos[model.site(FLANGE_SITE).id], atol=1e-9)
        assert np.allclose(quat_to_rotation(tcp[3:]), wrist, atol=1e-9)
        assert np.allclose(quat_to_rotation(pinch_pose[3:]), pinch, atol=1e-9)
        # tcp and pinch differ by the model's fixed wrist -> pinch rotation (a quarter turn of yaw).
        fixed = wrist.T @ pinch
        assert np.allclose(fixed, KINEMATICS.pinch_in_flange, atol=1e-9)
        assert np.allclose(quat_to_rotation(tcp[3:]) @ fixed, quat_to_rotation(pinch_pose[3:]), atol=1e-9)
    assert np.isclose(np.trace(KINEMATICS.pinch_in_flange), 1.0, atol=1e-6)  # 90 deg rotation


# -- (d) the twin's observation ---------------------------------------------------------------------


def test_twin_observation_quaternions_are_canonical() -> None:
    cfg = load_config(["twin.render=false", "twin.privileged_observations=true"])
    with StackingTwin(cfg, render=False) as twin:
        obs = twin.reset(seed=3)
        kinematics = ArmKinematics(cfg.robot)  # the real cell's policy node builds its own
        q = twin.joint_positions()
        assert np.allclose(twin.tcp_pose(), kinematics.tcp_pose(q), atol=1e-6)
        assert np.allclose(twin.pinch_pose(), kinematics.pinch_pose(q), atol=1e-6)
        pinch, tcp = obs["sawyer/pinch/pose"][3:], obs["sawyer/tcp/pose"][3:]
        assert pinch @ PINCH_REFERENCE_WXYZ > 0.5
        assert tcp @ kinematics.tcp_reference_wxyz > 0.5
        assert np.allclose(np.linalg.norm(pinch), 1.0, atol=1e-6)
        assert np.allclose(np.linalg.norm(tcp), 1.0, atol=1e-6)
        objects = obs["objects/pose"].reshape(3, 7)
        assert np.all(objects[:, 3] >= 0.0)
        assert np.allclose(np.linalg.norm(objects[:, 3:], axis=-1), 1.0, atol=1e-6)

        # An object placed with w < 0 is reported with the benchmark's sign, same rotation.
        poses = twin.object_poses()
        flipped = poses.copy()
        flipped[0, 3:] = -np.array([0.2, 0.0, 0.0, 0.98]) / np.linalg.norm([0.2, 0.0, 0.0, 0.98])
        twin.set_object_poses(flipped)
        reported = twin.object_poses()
        assert np.allclose(reported[0, 3:], -flipped[0, 3:], atol=1e-9)
        assert np.all(reported[:, 3] >= 0.0)
