"""The command limiter holds every limit whatever it is fed: hypothesis fuzzing plus targeted cases.

The tool point comes from the real Sawyer kinematics (gato_ros.control.ArmKinematics), the same forward
function the command node injects.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics
from gato_ros.safety import CommandLimiter, Reason, SafetyConfigError, SafetyLimits, workspace_distance
from gato_ros.safety.limits import NUMERIC_TOLERANCE, prediction_horizon

CFG = load_config()
LIMITS = SafetyLimits.from_config(CFG)
TOL = 1e-7


@cache
def kinematics() -> ArmKinematics:
    return ArmKinematics(CFG.robot)


def tool_point(q: np.ndarray) -> np.ndarray:
    return kinematics().tool_state(q).position


@cache
def in_box_postures() -> tuple[np.ndarray, ...]:
    """Joint configurations with the tool point inside the workspace box, near its faces and centre."""
    centre = 0.5 * (LIMITS.workspace_low + LIMITS.workspace_high)
    near_faces = [
        centre,
        np.array([centre[0], centre[1], LIMITS.workspace_low[2] + 0.01]),
        np.array([LIMITS.workspace_high[0] - 0.01, centre[1], centre[2]]),
        np.array([centre[0], LIMITS.workspace_low[1] + 0.01, centre[2]]),
    ]
    postures = []
    for target in near_faces:
        q, converged = kinematics().inverse_kinematics(target, 0.0)
        assert converged
        postures.append(q)
    return tuple(postures)


# -- strategies ----------------------------------------------------------------------------------
wild = st.floats(allow_nan=True, allow_infinity=True, width=64)
big = st.floats(min_value=-1e6, max_value=1e6)
small = st.floats(min_value=-3.0, max_value=3.0)
velocity_values = st.one_of(small, small, big, wild)
velocity_vectors = st.lists(velocity_values, min_size=7, max_size=7).map(np.array)


@st.composite
def joint_positions(draw: st.DrawFn) -> np.ndarray:
    """Inside, at and past the limits (margin or robot limit), or near a posture with the tool in the box."""
    kind = draw(st.sampled_from(["uniform", "edges", "in_box"]))
    if kind == "in_box":
        base = draw(st.sampled_from(in_box_postures()))
        noise = draw(st.lists(st.floats(-0.05, 0.05), min_size=7, max_size=7))
        return base + np.array(noise)
    q = []
    for i in range(7):
        lo, hi = LIMITS.joint_min[i], LIMITS.joint_max[i]
        if kind == "uniform":
            q.append(draw(st.floats(lo - 0.3, hi + 0.3)))
        else:
            edges = [lo, hi, lo + LIMITS.position_margin, hi - LIMITS.position_margin, lo - 0.05, hi + 0.05]
            offset = draw(st.floats(-1e-3, 1e-3))
            q.append(draw(st.sampled_from(edges)) + offset)
    return np.array(q)


time_steps = st.one_of(
    st.floats(0.5 * LIMITS.control_period, 1.5 * LIMITS.control_period),  # jitter
    st.floats(1e-6, 2.0),  # stalls and bursts
    st.sampled_from([0.0, -LIMITS.control_period, math.nan, math.inf, 1e-12]),
)
gripper_values = st.one_of(st.floats(-300.0, 300.0), wild)


# -- the invariants ------------------------------------------------------------------------------
def assert_within_limits(q, previous, dt, request, gripper, out) -> None:
    """Every limit of the module docstring, checked independently of the limiter's own arithmetic."""
    v = out.joint_velocity
    assert v.shape == (7,) and np.all(np.isfinite(v))
    if out.hold:
        assert np.all(v == 0.0) and out.gripper is None
        return
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(request)) and math.isfinite(gripper)
    assert math.isfinite(dt) and dt > 0.0
    # speed
    assert np.all(np.abs(v) <= LIMITS.velocity_limit + TOL)
    # acceleration and per-tick change, except for braking toward zero
    prev = previous if np.all(np.isfinite(previous)) else np.zeros(7)
    step = np.minimum(LIMITS.acceleration_limit * dt, LIMITS.max_velocity_change_per_tick)
    within_rate = np.abs(v - prev) <= step + TOL
    braking = (v * prev >= 0.0) & (np.abs(v) <= np.abs(prev) + TOL)
    assert np.all(within_rate | braking), (v, prev, step)
    # joint positions with the margin, over the prediction horizon
    horizon = max(dt, LIMITS.control_period)
    low, high = LIMITS.joint_min + LIMITS.position_margin, LIMITS.joint_max - LIMITS.position_margin
    predicted = q + v * horizon
    inside = (q >= low) & (q <= high)
    assert np.all(~inside | ((predicted >= low - TOL) & (predicted <= high + TOL)))
    assert np.all(~(q > high) | (v <= TOL)), "a joint past the upper margin moved further up"
    assert np.all(~(q < low) | (v >= -TOL)), "a joint past the lower margin moved further down"
    # workspace box of the predicted tool point
    now_distance = workspace_distance(tool_point(q), LIMITS.workspace_low, LIMITS.workspace_high)
    next_distance = workspace_distance(tool_point(predicted), LIMITS.workspace_low, LIMITS.workspace_high)
    assert next_distance <= now_distance + TOL
    # gripper
    assert LIMITS.gripper_low <= out.gripper <= LIMITS.gripper_high
    if LIMITS.gripper_low <= gripper <= LIMITS.gripper_high:
        assert out.gripper == gripper


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    q=joint_positions(),
    previous=velocity_vectors,
    dt=time_steps,
    request=velocity_vectors,
    gripper=gripper_values,
)
def test_fuzzed_commands_never_leave_the_limits(q, previous, dt, request, gripper) -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    out = limiter.limit(q, previous, dt, request, gripper)
    assert_within_limits(q, previous, dt, request, gripper, out)
    if not (np.all(np.isfinite(request)) and math.isfinite(gripper)):
        assert out.hold and Reason.NONFINITE_COMMAND in out.reasons
    assert sum(limiter.counters.values()) == len(out.reasons)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(range(4)),
    requests=st.lists(velocity_vectors, min_size=5, max_size=25),
    dts=st.lists(time_steps, min_size=25, max_size=25),
)
def test_fuzzed_closed_loop_sequences_stay_in_limits(start, requests, dts) -> None:
    """Feeding the limiter its own outputs and integrating them: every tick holds every limit."""
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[start].copy()
    previous = np.zeros(7)
    for request, dt in zip(requests, dts, strict=False):
        out = limiter.limit(q, previous, dt, request, 255.0)
        assert_within_limits(q, previous, dt, request, 255.0, out)
        previous = out.joint_velocity
        if math.isfinite(dt) and dt > 0.0:
            q = q + previous * prediction_horizon(dt, LIMITS.control_period)
    inside = workspace_distance(tool_point(q), LIMITS.workspace_low, LIMITS.workspace_high)
    assert inside <= TOL, "the tool left the box although it started inside"


def test_in_limit_request_passes_unchanged() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[0]
    request = np.full(7, 0.05)
    out = limiter.limit(q, request, LIMITS.control_period, request, 0.5)
    np.testing.assert_allclose(out.joint_velocity, request)
    assert out.gripper == 0.5 and not out.reasons


def test_each_limit_reports_its_reason() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[0]
    period = LIMITS.control_period
    fast = 10.0 * LIMITS.velocity_limit
    out = limiter.limit(q, LIMITS.velocity_limit, period, fast, 0.0)
    assert Reason.VELOCITY in out.reasons
    np.testing.assert_allclose(out.joint_velocity, LIMITS.velocity_limit, atol=1e-12)
    out = limiter.limit(q, np.zeros(7), period, LIMITS.velocity_limit, 0.0)
    assert Reason.ACCELERATION in out.reasons
    # scaled as a whole: same direction, the most constrained joint exactly at its step
    ratio = np.min(LIMITS.acceleration_limit * period / LIMITS.velocity_limit)
    np.testing.assert_allclose(out.joint_velocity, ratio * LIMITS.velocity_limit, atol=1e-12)
    out = limiter.limit(q, np.zeros(7), 1.0, LIMITS.velocity_limit, 0.0)  # a late tick
    assert Reason.TICK_CHANGE in out.reasons
    out = limiter.limit(q, np.zeros(7), period, np.zeros(7), 1000.0)
    assert out.gripper == LIMITS.gripper_high and Reason.GRIPPER_RANGE in out.reasons
    out = limiter.limit(q, np.full(7, np.nan), period, np.zeros(7), 0.0)
    assert Reason.INVALID_PREVIOUS in out.reasons and not out.hold
    for bad_dt in (0.0, -0.1, math.nan):
        assert Reason.INVALID_TIME_STEP in limiter.limit(q, np.zeros(7), bad_dt, np.zeros(7), 0.0).reasons
    assert limiter.limit(q, np.zeros(7), period, np.zeros(6), 0.0).reasons == {Reason.MALFORMED_COMMAND}
    assert limiter.limit(q * np.nan, np.zeros(7), period, np.zeros(7), 0.0).hold
    assert limiter.counters[Reason.INVALID_TIME_STEP] == 3


def test_joint_at_its_margin_cannot_move_further_but_can_move_back() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[0].copy()
    q[6] = LIMITS.joint_max[6] - LIMITS.position_margin + 0.01  # in the margin
    up = np.zeros(7)
    up[6] = 0.5
    out = limiter.limit(q, up, LIMITS.control_period, up, 0.0)
    assert out.joint_velocity[6] == 0.0 and Reason.POSITION in out.reasons
    out = limiter.limit(q, -up, LIMITS.control_period, -up, 0.0)
    assert out.joint_velocity[6] == pytest.approx(-0.5)


def test_speed_toward_a_limit_is_capped_to_what_can_still_stop() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[0].copy()
    room = 0.02
    q[6] = LIMITS.joint_max[6] - LIMITS.position_margin - room
    request = np.zeros(7)
    request[6] = LIMITS.velocity_limit[6]
    out = limiter.limit(q, request, LIMITS.control_period, request, 0.0)
    stoppable = math.sqrt(2.0 * LIMITS.acceleration_limit[6] * room)
    assert out.joint_velocity[6] == pytest.approx(min(stoppable, room / LIMITS.control_period))


def test_workspace_scales_the_command_down_at_the_box_face() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[1]  # tool 1 cm above the box floor
    jacobian = kinematics().tool_state(q).jacobian[:3]
    down = np.linalg.pinv(jacobian) @ np.array([0.0, 0.0, -0.5])  # 0.5 m/s down: 2.5 cm per tick
    out = limiter.limit(q, down, LIMITS.control_period, down, 0.0)
    assert Reason.WORKSPACE in out.reasons and 0.0 < out.workspace_scale < 1.0
    predicted = tool_point(q + out.joint_velocity * LIMITS.control_period)
    assert predicted[2] >= LIMITS.workspace_low[2] - NUMERIC_TOLERANCE


def test_broken_kinematics_holds() -> None:
    def broken(q: np.ndarray) -> np.ndarray:
        raise RuntimeError("kinematics bug")

    q = in_box_postures()[0]
    assert CommandLimiter(LIMITS, broken).limit(q, np.zeros(7), 0.05, np.ones(7), 0.0).reasons == {
        Reason.INTERNAL_ERROR
    }
    nan_point = CommandLimiter(LIMITS, lambda q: np.full(3, np.nan))
    assert nan_point.limit(q, np.zeros(7), 0.05, np.ones(7), 0.0).reasons == {Reason.WORKSPACE_UNKNOWN}


@pytest.mark.parametrize(
    "override",
    [
        "safety.position_margin=0",
        "safety.position_margin=nan",
        "safety.position_margin=4.0",
        "safety.velocity_fraction=-0.5",
        "safety.velocity_fraction=1.5",
        "safety.acceleration_limit=[1,1,1,1,1,1,0]",
        "safety.acceleration_limit=[1,1,1]",
        "safety.max_velocity_change_per_tick=[1,1,1,1,1,1,.nan]",
        "safety.workspace.low=[0.9,0,0]",
        "safety.stale_after_periods=3",
        "safety.stale_after_periods=0",
        "safety.ramp_in_seconds=0",
        "control.rate_hz=0",
        "safety.gripper_closed_fraction=1.0",
    ],
)
def test_bad_config_values_stop_startup(override: str) -> None:
    with pytest.raises(SafetyConfigError):
        SafetyLimits.from_config(load_config([override]))


def test_speed_limit_scales_the_whole_command_keeping_its_direction() -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    q = in_box_postures()[0]
    request = 0.2 * LIMITS.velocity_limit
    request[2] = 2.0 * LIMITS.velocity_limit[2]  # one joint twice too fast
    out = limiter.limit(q, request, LIMITS.control_period, request, 0.0)
    assert Reason.VELOCITY in out.reasons
    np.testing.assert_allclose(out.joint_velocity, 0.5 * request, atol=1e-12)
