"""Adversarial inputs to the safety path: every one must end in a logged hold, never an exception or motion.

Each test here was written against a hole found in review (see the report of the safety review); the
ROS-free cores are driven with plain data, the nodes in-process on an isolated ROS domain.
"""

from __future__ import annotations

import math
import time
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics
from gato_ros.ros import contract
from gato_ros.ros.command_node import CommandNode, config_flag
from gato_ros.ros.messages import time_msg
from gato_ros.ros.observation import WAITING_FOR_CLOCK, ObservationAssembler
from gato_ros.ros.twin_node import TwinNode, trajectory_velocity
from gato_ros.safety import (
    CommandLimiter,
    CommandRequest,
    InputError,
    JointSample,
    Reason,
    SafeCommand,
    SafetyConfigError,
    SafetyLimits,
    SafetySupervisor,
    parse_action,
    parse_joint_state,
)
from gato_ros.safety.inputs import check_monotonic_stamp

CFG = load_config()
LIMITS = SafetyLimits.from_config(CFG)
PERIOD = LIMITS.control_period
ARM = list(CFG.robot.joint_names)
GRIPPER_JOINT = str(CFG.robot.gripper.joint_name)
GRIPPER_RANGE = list(CFG.robot.gripper.driver_range)
SMALL = np.full(7, 0.02)  # rad/s, inside every limit


@cache
def kinematics() -> ArmKinematics:
    return ArmKinematics(CFG.robot)


def tool_point(q: np.ndarray) -> np.ndarray:
    return kinematics().tool_state(q).position


@cache
def posture() -> np.ndarray:
    q, converged = kinematics().inverse_kinematics(0.5 * (LIMITS.workspace_low + LIMITS.workspace_high), 0.0)
    assert converged
    return q


def supervisor() -> SafetySupervisor:
    return SafetySupervisor(LIMITS, tool_point, start_enabled=True)


# -- input parsing: anything that is not a well-formed message is an InputError, nothing else ------------
JUNK_SEQUENCES = [
    None,
    5.0,
    object(),
    ["a"] * 5,
    [1j] * 5,
    [[1.0, 2.0], [3.0, 4.0]],
    [True] * 5,
    np.array([1.0, "2", 3.0, 4.0, 5.0], dtype=object),
    [None] * 5,
]


@pytest.mark.parametrize("values", JUNK_SEQUENCES, ids=repr)
def test_parse_action_turns_any_junk_into_a_malformed_action(values: object) -> None:
    with pytest.raises(InputError) as err:
        parse_action(values)  # type: ignore[arg-type]
    assert err.value.reason is Reason.MALFORMED_ACTION


def test_parse_action_rejects_a_huge_array_without_echoing_it() -> None:
    with pytest.raises(InputError) as err:
        parse_action(np.zeros(1_000_000))
    assert len(str(err.value)) < 200


@pytest.mark.parametrize(
    ("names", "positions"),
    [
        (ARM, ["x"] * 7),
        (ARM, None),
        (None, [0.0] * 7),
        ([*ARM, None], [0.0] * 8),
        (list(range(7)), [0.0] * 7),
        (ARM, [True] * 7),
        (ARM, [[0.0]] * 7),
        (ARM, [0.0] * 6),  # positions shorter than names
        ([*ARM, ARM[0]], [0.0] * 8),  # a duplicated name
    ],
    ids=repr,
)
def test_parse_joint_state_turns_any_junk_into_a_malformed_joint_state(
    names: object, positions: object
) -> None:
    with pytest.raises(InputError) as err:
        parse_joint_state(names, positions, ARM, GRIPPER_JOINT, GRIPPER_RANGE)  # type: ignore[arg-type]
    assert err.value.reason is Reason.MALFORMED_JOINT_STATE


def test_parse_joint_state_accepts_reordered_extra_names_and_names_only_the_repeats() -> None:
    names = [GRIPPER_JOINT, "head_pan", *reversed(ARM)]
    parsed = parse_joint_state(names, [0.4, 9.0, *range(7)], ARM, GRIPPER_JOINT, GRIPPER_RANGE)
    np.testing.assert_array_equal(parsed.positions, np.arange(7.0)[::-1])
    many = ["head_pan"] * 100_000 + ARM
    with pytest.raises(InputError) as err:
        parse_joint_state(many, [0.0] * len(many), ARM, GRIPPER_JOINT, GRIPPER_RANGE)
    assert "['head_pan']" in str(err.value)


@pytest.mark.parametrize("stamp", [None, "1.0", math.nan, math.inf])
def test_monotonic_stamp_check_rejects_non_numbers(stamp: object) -> None:
    with pytest.raises(InputError):
        check_monotonic_stamp(1.0, stamp)  # type: ignore[arg-type]


# -- the limiter and the supervisor: wrong types hold, they neither raise nor move -----------------------
@pytest.mark.parametrize(
    "request_velocity",
    [
        np.ones(7, dtype=bool),  # would read as 1 rad/s on every joint
        np.full(7, 0.5 + 3.0j),  # would silently drop the imaginary part
        np.array(["0.1"] * 7),
        np.array([0.1] * 7, dtype=object),
        np.zeros(1_000_000),
        np.zeros((7, 1, 1)) + 0.1,  # the right size in the wrong shape is still 7 numbers: allowed below
    ],
    ids=["bool", "complex", "str", "object", "huge", "nested"],
)
def test_limiter_holds_on_non_real_requests(request_velocity: np.ndarray) -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    out = limiter.limit(posture(), np.zeros(7), PERIOD, request_velocity, 0.0)
    if request_velocity.dtype.kind == "f" and request_velocity.size == 7:
        assert not out.hold  # a (7, 1, 1) float array is 7 joint velocities
        return
    assert out.hold and out.reasons == {Reason.MALFORMED_COMMAND}
    assert np.all(out.joint_velocity == 0.0)


@pytest.mark.parametrize("gripper", [True, "1", None, np.array([1.0, 2.0]), 1.0 + 1.0j])
def test_limiter_holds_on_a_non_number_gripper_or_time_step(gripper: object) -> None:
    limiter = CommandLimiter(LIMITS, tool_point)
    assert limiter.limit(posture(), np.zeros(7), PERIOD, SMALL, gripper).hold  # type: ignore[arg-type]
    assert limiter.limit(posture(), np.zeros(7), gripper, SMALL, 1.0).hold  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "joint_velocity",
    [np.array(["a"] * 7), np.array([None] * 7, dtype=object), None, "fast"],
    ids=["str", "object", "none", "text"],
)
def test_supervisor_tick_never_raises_on_junk_and_recovers(joint_velocity: object) -> None:
    sup = supervisor()
    now = 0.0
    out = sup.tick(now, JointSample(posture(), now), CommandRequest(joint_velocity, 1.0, now))  # type: ignore[arg-type]
    assert out.hold and np.all(out.joint_velocity == 0.0)
    # junk time and stamps hold too
    assert sup.tick(None, JointSample(posture(), now), CommandRequest(SMALL, 1.0, now)).hold  # type: ignore[arg-type]
    assert sup.tick(now, JointSample(posture(), "0"), CommandRequest(SMALL, 1.0, now)).hold  # type: ignore[arg-type]
    # a valid request afterwards ramps in as usual
    for _ in range(3):
        now += PERIOD
        out = sup.tick(now, JointSample(posture(), now), CommandRequest(SMALL, 1.0, now))
    assert not out.hold and 0.0 < out.ramp_scale < 1.0


def test_a_nan_gripper_reading_does_not_open_the_gripper_on_a_hold() -> None:
    sup = supervisor()
    sup.set_enabled(False, 0.0)
    closed = sup.tick(0.0, JointSample(posture(), 0.0, 1.0), None)
    assert closed.gripper == LIMITS.gripper_high  # holding an object: stays closed
    after_nan = sup.tick(PERIOD, JointSample(posture(), PERIOD, math.nan), None)
    assert after_nan.gripper == LIMITS.gripper_high


def test_estop_during_ramp_in_and_release_while_the_action_is_stale_ramp_in_from_zero() -> None:
    sup = supervisor()
    now = 0.0
    for _ in range(3):  # ramping in
        out = sup.tick(now, JointSample(posture(), now), CommandRequest(SMALL, 1.0, now))
        now += PERIOD
    assert not out.hold and 0.0 < out.ramp_scale < 1.0
    sup.set_estop_input(True, now)
    assert Reason.ESTOP in sup.tick(now, JointSample(posture(), now), CommandRequest(SMALL, 1.0, now)).reasons
    sup.set_estop_input(False, now)
    ok, _ = sup.release_estop(now)
    assert ok
    action_time = now
    now += 3 * PERIOD  # released while the last action is stale: still a hold
    out = sup.tick(now, JointSample(posture(), now), CommandRequest(SMALL, 1.0, action_time))
    assert out.hold and Reason.STALE_ACTION in out.reasons
    now += PERIOD  # a fresh action ramps in from zero, not from where the ramp was before the e-stop
    out = sup.tick(now, JointSample(posture(), now), CommandRequest(SMALL, 1.0, now))
    assert not out.hold and out.ramp_scale == 0.0 and np.all(out.joint_velocity == 0.0)


def test_after_a_stall_the_per_tick_change_still_holds_per_tick() -> None:
    sup = supervisor()
    now = 0.0
    fast = 0.9 * LIMITS.velocity_limit
    previous = np.zeros(7)
    for dt in [PERIOD] * 30 + [5.0] + [PERIOD] * 3 + [1.5 * PERIOD] * 3:
        now += dt
        out = sup.tick(now, JointSample(posture(), now), CommandRequest(fast, 1.0, now))
        braking = (out.joint_velocity * previous >= 0) & (np.abs(out.joint_velocity) <= np.abs(previous))
        change = np.abs(out.joint_velocity - previous)
        assert np.all((change <= LIMITS.max_velocity_change_per_tick + 1e-9) | braking)
        previous = out.joint_velocity


def run_to_speed(sup: SafetySupervisor, velocity: np.ndarray, now: float = 0.0) -> float:
    """Fresh inputs until the output reaches `velocity`; returns the time of the next tick."""
    for _ in range(100):
        out = sup.tick(now, JointSample(posture(), now), CommandRequest(velocity, 1.0, now))
        now += PERIOD
        if np.allclose(out.joint_velocity, velocity):
            return now
    raise AssertionError(f"never reached {velocity}: {out}")


def test_position_limit_counts_the_motion_since_an_aged_joint_state() -> None:
    """Joint 6 (wrist roll: the tool point does not move) runs toward its upper limit; the newest reading
    is 1.5 periods old, so the joint is already past where it says. Checked from the old reading, the
    limiter would allow another period of motion and end up a whole margin past the margin."""
    sup = supervisor()
    velocity = np.zeros(7)
    velocity[6] = 1.0
    now, sent = 0.0, []  # (tick time, command sent): the last ones were still ramping up
    while not sent or not np.allclose(sent[-1][1], velocity):
        out = sup.tick(now, JointSample(posture(), now), CommandRequest(velocity, 1.0, now))
        sent.append((now, out.joint_velocity.copy()))
        now += PERIOD
    age = 1.5 * PERIOD  # old, but younger than the stale limit (2 periods)
    measured = posture().copy()
    measured[6] = LIMITS.position_high[6] - 0.5 * velocity[6] * age
    # each command sent was in force for one period: its share of the reading's age
    travel = np.zeros(7)
    for t, v in sent:
        travel += v * max(0.0, min(t + PERIOD, now) - max(t, now - age))
    out = sup.tick(now, JointSample(measured, now - age), CommandRequest(velocity, 1.0, now))
    actual = measured + travel  # where a velocity-tracking arm is by now: past the margin
    assert actual[6] > LIMITS.position_high[6]
    np.testing.assert_allclose(out.joint_positions, actual)
    assert out.joint_velocity[6] <= 0.0 and Reason.POSITION in out.reasons  # it may only move back


def test_a_hold_targets_where_the_arm_is_not_where_it_was() -> None:
    """Trajectory interface: the hold point must not pull a moving arm back to an aged reading."""
    sup = supervisor()
    velocity = np.full(7, 0.05)
    now = run_to_speed(sup, velocity)
    sup.request_estop(now)
    age = PERIOD
    out = sup.tick(now, JointSample(posture(), now - age), CommandRequest(velocity, 1.0, now))
    assert out.hold and np.all(out.joint_velocity == 0.0)
    np.testing.assert_allclose(out.joint_positions, posture() + velocity * age)
    stale = sup.tick(now + 3 * PERIOD, JointSample(posture(), now - age), None)
    assert stale.hold and stale.joint_positions is None  # no fresh reading: the empty trajectory (stop)


EVENTS = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 1.5, 3.0, 40.0, -2.0, -400.0])),
    st.tuples(st.just("joints"), st.sampled_from(["fresh", "fresh", "aged", "nan", "short", "none"])),
    st.tuples(
        st.just("request"),
        st.sampled_from(["small", "small", "fast", "huge", "nan", "bool", "str", "none", "gripper_nan"]),
    ),
    st.tuples(
        st.just("operator"), st.sampled_from(["estop", "estop_in", "estop_out", "release", "on", "off"])
    ),
)


def operate(sup: SafetySupervisor, action: str, now: float) -> None:
    if action == "estop":
        sup.request_estop(now)
    elif action in ("estop_in", "estop_out"):
        sup.set_estop_input(action == "estop_in", now)
    elif action == "release":
        sup.release_estop(now)
    else:
        sup.set_enabled(action == "on", now)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, min_size=10, max_size=60))
def test_fuzzed_supervisor_sequences_never_raise_and_never_leave_the_limits(events: list) -> None:
    """Any interleaving of junk and valid inputs, clock stalls and jumps back, e-stops and enables: every
    tick returns a finite command within the speed and per-tick limits, and holds while it must."""
    sup = SafetySupervisor(LIMITS, tool_point, start_enabled=True)
    now, previous = 100.0, np.zeros(7)
    joints: JointSample | None = None
    request: CommandRequest | None = None
    velocities = {
        "small": SMALL,
        "fast": 0.9 * LIMITS.velocity_limit,
        "huge": np.full(7, 1e300),
        "nan": np.full(7, math.nan),
        "bool": np.ones(7, dtype=bool),
        "str": np.array(["1"] * 7),
    }
    for kind, value in events:
        if kind == "joints":
            positions = {"nan": np.full(7, math.nan), "short": posture()[:3]}.get(value, posture())
            stamp = now - 2 * PERIOD if value == "aged" else now
            joints = None if value == "none" else JointSample(positions, stamp, 1.0)
        elif kind == "request":
            velocity = velocities.get(value, SMALL)
            gripper = math.nan if value == "gripper_nan" else 1.0
            request = None if value == "none" else CommandRequest(velocity, gripper, now)
        elif kind == "operator":
            operate(sup, value, now)
        else:
            now += value * PERIOD
            must_hold = sup.estop_latched or not sup.enabled or joints is None or request is None
            out = sup.tick(now, joints, request)
            v = out.joint_velocity
            assert v.shape == (7,) and np.all(np.isfinite(v))
            assert np.all(np.abs(v) <= LIMITS.velocity_limit + 1e-9)
            braking = (v * previous >= 0.0) & (np.abs(v) <= np.abs(previous) + 1e-12)
            assert np.all((np.abs(v - previous) <= LIMITS.max_velocity_change_per_tick + 1e-9) | braking)
            if must_hold or out.hold:
                assert out.hold and np.all(v == 0.0)
            if out.gripper is not None:
                assert LIMITS.gripper_low <= out.gripper <= LIMITS.gripper_high
            previous = v


# -- config edges -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override", ["safety.workspace.search_steps=1000000000", "safety.workspace.search_steps=2.5"]
)
def test_workspace_search_steps_must_be_a_small_integer(override: str) -> None:
    with pytest.raises(SafetyConfigError):
        SafetyLimits.from_config(load_config([override]))


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_start_enabled_must_be_a_real_boolean(value: object) -> None:
    with pytest.raises(SafetyConfigError):
        config_flag(value, "safety.start_enabled")
    assert config_flag(False, "safety.start_enabled") is False


# -- the policy node's observation freshness ----------------------------------------------------------
def test_policy_refuses_observations_stamped_ahead_of_a_clock_that_went_back() -> None:
    assembler = ObservationAssembler(CFG, [], kinematics())
    q, gripper = posture(), 0.0
    assembler.add_joints(q, gripper, stamp_s=100.0, received_s=0.0)
    assert not isinstance(assembler.assemble(now_s=100.0), str)
    # the twin restarts: its clock starts again near zero, the last joint state is from the old timeline
    assembler.reset()  # the new episode number clears what was acted on
    reason = assembler.assemble(now_s=1.0)
    assert isinstance(reason, str) and "future" in reason
    # the new twin's joint state is acted on at once, not once the new clock passes 100 s
    assembler.add_joints(q, gripper, stamp_s=1.0, received_s=0.1)
    assert not isinstance(assembler.assemble(now_s=1.0), str)


def test_policy_forgets_what_it_acted_on_when_the_clock_goes_back_without_a_new_episode() -> None:
    assembler = ObservationAssembler(CFG, [], kinematics())
    assembler.add_joints(posture(), 0.0, stamp_s=50.0, received_s=0.0)
    assert not isinstance(assembler.assemble(now_s=50.0), str)
    assembler.add_joints(posture(), 0.0, stamp_s=2.0, received_s=0.1)  # same episode number, clock back
    assert not isinstance(assembler.assemble(now_s=2.0), str)


def test_policy_accepts_the_twins_one_period_lead() -> None:
    assembler = ObservationAssembler(CFG, [], kinematics())
    assembler.add_joints(posture(), 0.0, stamp_s=10.0 + PERIOD, received_s=0.0)  # before the clock msg
    assert not isinstance(assembler.assemble(now_s=10.0), str)
    assembler.add_joints(posture(), 0.0, stamp_s=10.0 + 3 * PERIOD, received_s=0.0)
    assert isinstance(assembler.assemble(now_s=10.0 + PERIOD), str)


def test_policy_under_sim_time_waits_for_the_clock_to_reach_the_twins_observation() -> None:
    """The twin publishes tick t's observation just before its clock reads t: acted on at once, the action
    would reach the command node while its clock still reads t - 1 (a period old on arrival, stale one
    period later). With `wait_for_clock` the observation waits, unconsumed, for the clock."""
    assembler = ObservationAssembler(CFG, [], kinematics())
    assembler.add_joints(posture(), 0.0, stamp_s=10.0 + PERIOD, received_s=0.0)  # before the clock msg
    reason = assembler.assemble(now_s=10.0, wait_for_clock=True)
    assert isinstance(reason, str) and reason.startswith(WAITING_FOR_CLOCK)
    assert not isinstance(assembler.assemble(now_s=10.0 + PERIOD, wait_for_clock=True), str)  # not used up
    again = assembler.assemble(now_s=10.0 + PERIOD, wait_for_clock=True)
    assert isinstance(again, str) and "no new observation" in again  # acted on once


def test_policy_drops_an_action_whose_observation_aged_out_while_decoding() -> None:
    max_age = float(CFG.policy.max_observation_age_s)
    assembler = ObservationAssembler(CFG, [], kinematics())
    assembler.add_joints(posture(), 0.0, stamp_s=10.0, received_s=0.0)
    observation = assembler.assemble(now_s=10.0)
    assert not isinstance(observation, str)
    assert assembler.expired(observation, 10.0 + PERIOD) is None  # decoded within a period: sent
    assert assembler.expired(observation, 10.0 + max_age + PERIOD) is None
    late = assembler.expired(observation, 10.0 + max_age + 2 * PERIOD)  # a slow step: dropped
    assert late is not None and "dropped" in late


# -- the nodes ----------------------------------------------------------------------------------------
def test_twin_treats_the_command_nodes_empty_trajectory_as_stop() -> None:
    q = posture()
    moving = JointTrajectory(joint_names=ARM)
    moving.points = [JointTrajectoryPoint(velocities=SMALL.tolist())]
    np.testing.assert_allclose(trajectory_velocity(moving, ARM, q, PERIOD), SMALL)
    # the command node's hold without a fresh joint state: names, no point
    stop = JointTrajectory(joint_names=ARM)
    np.testing.assert_array_equal(trajectory_velocity(stop, ARM, q, PERIOD), np.zeros(7))
    assert np.all(trajectory_velocity(JointTrajectory(), ARM, q, PERIOD) == 0.0)
    empty_point = JointTrajectory(joint_names=ARM, points=[JointTrajectoryPoint()])
    assert trajectory_velocity(empty_point, ARM, q, PERIOD) is None  # a point without values: ignored
    nan_point = JointTrajectory(joint_names=ARM, points=[JointTrajectoryPoint(positions=[math.nan] * 7)])
    assert trajectory_velocity(nan_point, ARM, q, PERIOD) is None


def test_twin_stops_on_the_command_nodes_empty_trajectory(ros_context) -> None:
    """Before, the twin ignored the empty trajectory and kept the last velocity until its timeout."""
    cfg = load_config(["ros.twin.wait_for_stack_s=0", "safety.command_interface=trajectory"])
    twin = TwinNode(cfg, context=ros_context)
    try:
        moving = JointTrajectory(joint_names=ARM)
        moving.points = [JointTrajectoryPoint(velocities=SMALL.tolist())]
        twin.on_trajectory_command(moving)
        np.testing.assert_allclose(twin.current_command()[0], SMALL)
        twin.tick()
        twin.on_trajectory_command(JointTrajectory(joint_names=ARM))  # the command node's stop
        assert np.all(twin.current_command()[0] == 0.0)
        # without any command the twin zeroes the velocity itself within its timeout (plus one tick)
        twin.on_trajectory_command(moving)
        timeout_ticks = round(float(cfg.ros.twin.command_timeout_s) / PERIOD)
        applied = 0
        for _ in range(timeout_ticks + 4):
            applied += bool(np.any(twin.current_command()[0] != 0.0))
            twin.tick()
        assert applied <= timeout_ticks + 1
    finally:
        twin.close()
        twin.destroy_node()


def test_command_node_callbacks_never_raise_and_junk_holds(ros_context, capfd) -> None:
    cfg = load_config(["safety.start_enabled=true", "safety.ramp_in_seconds=0.1"])
    node = CommandNode(cfg, context=ros_context)
    listener = rclpy.create_node("adversarial_listener", context=ros_context)
    velocity: list[Float64MultiArray] = []
    topic = contract.JOINT_VELOCITY_COMMAND
    listener.create_subscription(topic.msg_type, topic.name, velocity.append, topic.qos.profile())
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    try:
        # messages that rclpy's typed fields would refuse but a broken bridge or a test can hand over
        node.on_action(SimpleNamespace(data=object()))  # type: ignore[arg-type]
        assert node.action_fault is Reason.MALFORMED_ACTION and node.latest_action is None
        node.on_joint_state(SimpleNamespace(header=None, name=ARM, position=[0.0] * 7))  # type: ignore[arg-type]
        assert node.joint_fault is Reason.MALFORMED_JOINT_STATE and node.latest_joints is None
        # a clamp of a moving command is logged with its reasons (holds are logged on their own)
        node.log_hold_transitions(
            SafeCommand(SMALL, 1.0, False, frozenset({Reason.WORKSPACE, Reason.RAMP_IN}), 0.5)
        )
        assert "command clamped: workspace" in capfd.readouterr().err
        node.on_estop_request(SimpleNamespace(data="no"))  # type: ignore[arg-type]
        assert node.supervisor.estop_latched  # an unreadable e-stop message latches
        node.on_tick()
        assert node.supervisor.last_output is not None and node.supervisor.last_output.hold

        # shutdown leaves a zero command even right after motion
        node.on_estop_request(Bool(data=False))
        assert node.supervisor.release_estop(node.now_s())[0]
        deadline = time.monotonic() + 5.0
        while node.velocity_pub.get_subscription_count() == 0:  # discovery
            assert time.monotonic() < deadline
            executor.spin_once(timeout_sec=0.01)
        joint_state = JointState(name=[*ARM, GRIPPER_JOINT], position=[*posture().tolist(), 0.0])
        for _ in range(8):  # a driver on the node's clock: freshness is judged by the stamps
            joint_state.header.stamp = time_msg(node.now_s())
            node.on_joint_state(joint_state)
            node.on_action(Float64MultiArray(data=[0.05, 0.0, 0.0, 0.0, 1.0]))
            node.on_tick()
            time.sleep(PERIOD)
        assert not node.supervisor.holding
        # a frozen driver re-sending its last reading (same stamp) does not keep the arm moving
        for _ in range(4):
            node.on_joint_state(joint_state)
            node.on_action(Float64MultiArray(data=[0.05, 0.0, 0.0, 0.0, 1.0]))
            node.on_tick()
            time.sleep(PERIOD)
        assert Reason.STALE_JOINT_STATE in node.supervisor.last_output.reasons
        assert node.events["repeated_joint_state_stamps"] >= 4
        for _ in range(8, 14):  # new readings: moving again
            joint_state.header.stamp = time_msg(node.now_s())
            node.on_joint_state(joint_state)
            node.on_action(Float64MultiArray(data=[0.05, 0.0, 0.0, 0.0, 1.0]))
            node.on_tick()
            time.sleep(PERIOD)
        assert not node.supervisor.holding
        node.close()

        def stopped_after_moving() -> bool:
            moving = [bool(np.any(np.array(m.data) != 0.0)) for m in velocity]
            return any(moving) and not moving[-1]

        deadline = time.monotonic() + 5.0
        while not stopped_after_moving():  # the ticks moved the arm, then the shutdown command is zero
            assert time.monotonic() < deadline, [list(m.data) for m in velocity]
            executor.spin_once(timeout_sec=0.01)
    finally:
        executor.shutdown()
        listener.destroy_node()
        node.destroy_node()


def test_command_node_shutdown_in_trajectory_mode_sends_stop(ros_context) -> None:
    cfg = load_config(["safety.start_enabled=true", "safety.command_interface=trajectory"])
    node = CommandNode(cfg, context=ros_context)
    listener = rclpy.create_node("adversarial_trajectory_listener", context=ros_context)
    received: list[JointTrajectory] = []
    topic = contract.JOINT_TRAJECTORY_COMMAND
    listener.create_subscription(topic.msg_type, topic.name, received.append, topic.qos.profile())
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + 5.0
        while node.trajectory_pub.get_subscription_count() == 0:
            assert time.monotonic() < deadline
            executor.spin_once(timeout_sec=0.01)
        joint_state = JointState(name=[*ARM, GRIPPER_JOINT], position=[*posture().tolist(), 0.0])
        joint_state.header.stamp = time_msg(node.now_s())
        node.on_joint_state(joint_state)
        node.on_tick()  # a hold (no action) with a fresh joint state: a point where the arm is
        node.close()  # shutdown: the empty trajectory, "stop where you are"
        while len(received) < 2:
            assert time.monotonic() < deadline
            executor.spin_once(timeout_sec=0.01)
        assert len(received[0].points) == 1 and np.all(np.array(received[0].points[0].velocities) == 0.0)
        assert received[-1].points == [] and list(received[-1].joint_names) == ARM
        np.testing.assert_array_equal(trajectory_velocity(received[-1], ARM, posture(), PERIOD), np.zeros(7))
    finally:
        executor.shutdown()
        listener.destroy_node()
        node.destroy_node()
