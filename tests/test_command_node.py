"""The command node in-process with rclpy: commands in limits, holds on bad input, e-stop latch/release.

A test node plays the cell (joint states) and the policy (actions) on an isolated ROS domain and
listens to everything the command node publishes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import SetBool, Trigger

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics
from gato_ros.ros import contract
from gato_ros.ros.command_node import CommandNode
from gato_ros.ros.messages import time_msg
from gato_ros.safety import Reason, SafetyLimits

OVERRIDES = ["safety.start_enabled=true", "safety.ramp_in_seconds=0.1", "safety.diagnostics_period_s=0.2"]
ACTION = [0.05, -0.03, 0.02, 0.5, 1.0]  # inside the benchmark's action bounds; gripper closes


@cache
def posture() -> np.ndarray:
    cfg = load_config()
    limits = SafetyLimits.from_config(cfg)
    q, converged = ArmKinematics(cfg.robot).inverse_kinematics(
        0.5 * (limits.workspace_low + limits.workspace_high), 0.0
    )
    assert converged
    return q


@dataclass
class Cell:
    """Publishes joint states and actions like the robot driver and the policy; records the node's output."""

    node: Node
    cfg: object
    velocity: list = field(default_factory=list)
    gripper: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)
    estop_state: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    action: list[float] | None = None
    send_joint_states: bool = True
    joint_stamp: float = 0.0
    stamp_offset: float = 0.0  # a driver clock behind (< 0) or ahead of the node's

    def __post_init__(self) -> None:
        n = self.node
        self.joint_pub = n.create_publisher(
            JointState, contract.JOINT_STATES.name, contract.Qos.RELIABLE.profile()
        )
        self.action_pub = n.create_publisher(
            Float64MultiArray, contract.ACTION.name, contract.Qos.RELIABLE.profile()
        )
        self.estop_pub = n.create_publisher(
            Bool, contract.ESTOP_REQUEST.name, contract.Qos.RELIABLE.profile()
        )
        for topic, store in (
            (contract.JOINT_VELOCITY_COMMAND, self.velocity),
            (contract.GRIPPER_COMMAND, self.gripper),
            (contract.JOINT_TRAJECTORY_COMMAND, self.trajectory),
            (contract.ESTOP_STATE, self.estop_state),
            (contract.DIAGNOSTICS, self.diagnostics),
        ):
            n.create_subscription(topic.msg_type, topic.name, store.append, topic.qos.profile())
        self.estop_client = n.create_client(Trigger, contract.ESTOP_SERVICE.name)
        self.release_client = n.create_client(Trigger, contract.RELEASE_SERVICE.name)
        self.enable_client = n.create_client(SetBool, contract.ENABLE_SERVICE.name)
        n.create_timer(1.0 / float(self.cfg.control.rate_hz), self.publish_inputs)

    def joint_state(self, names=None, positions=None, stamp=None) -> JointState:
        msg = JointState()
        msg.header.stamp = time_msg(self.joint_stamp if stamp is None else stamp)
        msg.name = list(names if names is not None else [*self.cfg.robot.joint_names, "gripper_driver"])
        msg.position = list(positions if positions is not None else [*posture().tolist(), 0.0])
        return msg

    def publish_inputs(self) -> None:
        # stamped by the cell's clock (the node's, sim time when set), as a driver on a synced clock does
        self.joint_stamp = self.node.get_clock().now().nanoseconds * 1e-9 + self.stamp_offset
        if self.send_joint_states:
            self.joint_pub.publish(self.joint_state())
        if self.action is not None:
            self.action_pub.publish(Float64MultiArray(data=list(self.action)))


def start(context: Context, overrides: list[str]) -> tuple[CommandNode, Cell, SingleThreadedExecutor]:
    cfg = load_config(overrides)
    command = CommandNode(cfg, context=context)
    # the cell follows the same clock as the node (sim time when set), like the twin and the driver
    sim_time = Parameter("use_sim_time", Parameter.Type.BOOL, bool(cfg.ros.use_sim_time))
    cell = Cell(Node("test_cell", context=context, parameter_overrides=[sim_time]), cfg)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(command)
    executor.add_node(cell.node)
    return command, cell, executor


def spin_until(
    executor: SingleThreadedExecutor, predicate: Callable[[], bool], timeout_s: float = 60.0
) -> None:
    """Spin until `predicate` holds; the timeout only stops a hung test (a loaded machine is slow, not
    wrong)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the command node"
        executor.spin_once(timeout_sec=0.01)


def spin_for(executor: SingleThreadedExecutor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)


def call(executor: SingleThreadedExecutor, client, request):
    assert client.wait_for_service(timeout_sec=60.0)
    future = client.call_async(request)
    spin_until(executor, future.done)
    return future.result()


def timer_runs(command: CommandNode) -> int:
    """How often the period timer has run (ticked or skipped): a test waits for it after a clock step."""
    return command.events["timer_ticks"] + command.events["timer_ticks_skipped"]


def moving(cell: Cell, count: int = 3) -> bool:
    return len(cell.velocity) >= count and all(
        np.any(np.array(m.data) != 0.0) for m in cell.velocity[-count:]
    )


def holding(cell: Cell, count: int = 2) -> bool:
    return len(cell.velocity) >= count and all(
        np.all(np.array(m.data) == 0.0) for m in cell.velocity[-count:]
    )


def assert_commands_in_limits(cell: Cell, limits: SafetyLimits) -> None:
    for previous, msg in zip(cell.velocity, cell.velocity[1:], strict=False):
        v, p = np.array(msg.data), np.array(previous.data)
        assert v.shape == (7,) and np.all(np.isfinite(v))
        assert np.all(np.abs(v) <= limits.velocity_limit + 1e-9)
        braking = (v * p >= 0.0) & (np.abs(v) <= np.abs(p))
        # the node's own dt may jitter up to a late tick; the per-tick cap holds regardless
        assert np.all((np.abs(v - p) <= limits.max_velocity_change_per_tick + 1e-9) | braking)
    for msg in cell.gripper:
        assert len(msg.data) == 1 and limits.gripper_low <= msg.data[0] <= limits.gripper_high


def test_commands_follow_the_action_in_limits_and_bad_input_holds(ros_context, capfd) -> None:
    command, cell, executor = start(ros_context, OVERRIDES)
    limits = command.limits
    cell.action = ACTION
    spin_until(executor, lambda: moving(cell, 5))
    assert cell.gripper[-1].data[0] == limits.gripper_high
    assert_commands_in_limits(cell, limits)

    # NaN action: logged, held, no crash; the gripper keeps its last command (does not drop the object)
    cell.action = [math.nan, 0.0, 0.0, 0.0, 1.0]
    spin_until(executor, lambda: holding(cell, 3))
    assert command.supervisor.counters[Reason.MALFORMED_ACTION] > 0
    assert cell.gripper[-1].data[0] == limits.gripper_high
    assert "malformed action" in capfd.readouterr().err
    cell.action = [0.0, 0.0]  # wrong length
    malformed = command.events["malformed_action_messages"]
    spin_until(executor, lambda: command.events["malformed_action_messages"] >= malformed + 2)
    assert holding(cell, 2)
    cell.action = ACTION
    spin_until(executor, lambda: moving(cell, 3))

    # a malformed joint state (an arm joint missing, a stamp going back) holds until a valid one arrives
    bad_joint_states = [
        cell.joint_state(names=cell.cfg.robot.joint_names[:6], positions=posture()[:6]),
        cell.joint_state(stamp=cell.joint_stamp - 10.0),
    ]
    for count, bad in enumerate(bad_joint_states, start=1):
        cell.send_joint_states = False
        cell.joint_pub.publish(bad)
        spin_until(executor, lambda count=count: command.events["malformed_joint_state_messages"] == count)
        spin_until(executor, lambda: holding(cell, 2))
        assert Reason.MALFORMED_JOINT_STATE in command.supervisor.last_output.reasons
        cell.send_joint_states = True
        spin_until(executor, lambda: moving(cell, 3))
    assert "malformed joint state" in capfd.readouterr().err

    # stale actions (the policy stops) hold within two control periods (+ one tick)
    cell.action = None
    stopped = len(cell.velocity)
    spin_until(executor, lambda: holding(cell, 1) and len(cell.velocity) > stopped)
    ticks_to_hold = len(cell.velocity) - stopped
    assert ticks_to_hold <= math.ceil(limits.stale_after_periods) + 2  # + one tick of executor jitter
    assert command.supervisor.counters[Reason.STALE_ACTION] > 0

    # an exception inside the tick still publishes a hold
    cell.action = ACTION
    spin_until(executor, lambda: moving(cell, 3))

    def broken(*_args: object) -> np.ndarray:
        raise RuntimeError("controller bug")

    command.controller.joint_velocity = broken
    before = len(cell.velocity)
    spin_until(executor, lambda: len(cell.velocity) > before + 2 and holding(cell, 2))
    assert command.events["tick_exceptions"] > 0
    assert "control tick failed" in capfd.readouterr().err
    assert_commands_in_limits(cell, limits)

    # diagnostics carry the counters of every clamp and hold
    published = len(cell.diagnostics)
    spin_until(executor, lambda: len(cell.diagnostics) > published)
    status = cell.diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert int(values[Reason.MALFORMED_ACTION.value]) > 0 and int(values[Reason.INTERNAL_ERROR.value]) > 0
    assert all(reason.value in values for reason in Reason)
    assert isinstance(cell.diagnostics[-1], DiagnosticArray)
    command.destroy_node()


def test_estop_service_and_topic_latch_and_release(ros_context) -> None:
    command, cell, executor = start(ros_context, OVERRIDES)
    cell.action = ACTION
    spin_until(executor, lambda: moving(cell, 3) and len(cell.estop_state) > 0)
    assert cell.estop_state[-1].data is False

    # service: latches, survives fresh actions, released by the release service
    assert call(executor, cell.estop_client, Trigger.Request()).success
    spin_until(executor, lambda: holding(cell, 5) and cell.estop_state[-1].data is True)
    spin_for(executor, 0.2)
    assert holding(cell, 4)
    reply = call(executor, cell.release_client, Trigger.Request())
    assert reply.success
    spin_until(executor, lambda: moving(cell, 3) and cell.estop_state[-1].data is False)

    # topic: True latches; release refused while asserted; False alone does not release
    cell.estop_pub.publish(Bool(data=True))
    spin_until(executor, lambda: holding(cell, 2) and cell.estop_state[-1].data is True)
    reply = call(executor, cell.release_client, Trigger.Request())
    assert not reply.success and "asserted" in reply.message
    cell.estop_pub.publish(Bool(data=False))
    spin_until(executor, lambda: not command.supervisor.estop_input_asserted)
    spin_for(executor, 0.15)
    assert holding(cell, 2) and command.supervisor.estop_latched
    assert call(executor, cell.release_client, Trigger.Request()).success
    spin_until(executor, lambda: moving(cell, 3))

    # enable service: disable holds, enable ramps back in
    assert call(executor, cell.enable_client, SetBool.Request(data=False)).success
    spin_until(executor, lambda: holding(cell, 3))
    assert call(executor, cell.enable_client, SetBool.Request(data=True)).success
    spin_until(executor, lambda: moving(cell, 3))
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_trajectory_interface_and_disabled_start(ros_context) -> None:
    overrides = [*OVERRIDES[1:], "safety.command_interface=trajectory"]  # starts disabled (the default)
    command, cell, executor = start(ros_context, overrides)
    cell.action = ACTION
    spin_until(executor, lambda: len(cell.trajectory) >= 3 and command.latest_joints is not None)
    count = len(cell.trajectory)  # ticks before the first joint state arrived send the empty trajectory
    spin_until(executor, lambda: len(cell.trajectory) >= count + 2)
    assert not cell.velocity
    held = cell.trajectory[-1]
    assert len(held.points) == 1 and np.all(np.array(held.points[0].velocities) == 0.0)
    np.testing.assert_allclose(held.points[0].positions, posture(), atol=1e-12)
    assert command.supervisor.counters[Reason.DISABLED] > 0
    assert call(executor, cell.enable_client, SetBool.Request(data=True)).success
    spin_until(executor, lambda: np.any(np.array(cell.trajectory[-1].points[0].velocities) != 0.0))
    point = cell.trajectory[-1].points[0]
    period = command.limits.control_period
    np.testing.assert_allclose(point.positions, posture() + np.array(point.velocities) * period, atol=1e-9)
    assert point.time_from_start.nanosec == round(period * 1e9)

    # moving, the point starts where the joints are now: the reading advanced by the last command over
    # its age (at most the stale limit), so a position-controlled arm is never pulled back
    def moving_points(msg) -> bool:
        return len(msg.points) == 1 and np.any(np.array(msg.points[0].velocities) != 0.0)

    count = len(cell.trajectory)
    spin_until(
        executor,
        lambda: len(cell.trajectory) >= count + 3 and all(map(moving_points, cell.trajectory[-2:])),
    )
    previous, latest = cell.trajectory[-2].points[0], cell.trajectory[-1].points[0]
    v_prev, v = np.array(previous.velocities), np.array(latest.velocities)
    offset = np.array(latest.positions) - v * period - posture()
    assert np.any(v_prev != 0.0)
    age = float(offset @ v_prev / (v_prev @ v_prev))
    assert -1e-9 <= age <= command.limits.stale_after_seconds + 1e-9
    np.testing.assert_allclose(offset, v_prev * age, atol=1e-9)
    command.destroy_node()


def test_sim_time_drives_the_ticks_and_the_watchdog(ros_context) -> None:
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    cell.action = ACTION
    sim_time = 50.0

    def advance(periods: int) -> None:
        nonlocal sim_time
        for _ in range(periods):
            sim_time += command.limits.control_period
            clock_pub.publish(Clock(clock=time_msg(sim_time)))
            spin_until(executor, lambda now=sim_time: abs(command.now_s() - now) < 1e-9)  # the node has it
            spin_for(executor, 0.02)  # its joint state and timer tick

    advance(40)
    assert abs(command.now_s() - sim_time) < 1e-6
    assert moving(cell, 3)
    # the wall clock runs but sim time stands still: no tick, so no stale hold either
    published = len(cell.velocity)
    spin_for(executor, 0.3)
    assert len(cell.velocity) <= published + 1
    # sim time runs on without new actions: the watchdog holds on sim time
    cell.action = None
    advance(4)
    assert holding(cell, 1) and command.supervisor.counters[Reason.STALE_ACTION] > 0
    # the twin restarts: its clock starts again from zero. The node keeps ticking on the new clock (the
    # inputs received on the old one read as from the future: held), then moves on fresh inputs.
    cell.action = ACTION
    advance(10)
    assert moving(cell, 3)
    sim_time = 1.0
    jumped = len(cell.velocity)
    stale_joints = command.supervisor.counters[Reason.STALE_JOINT_STATE]
    advance(3)  # rcl re-arms a timer one period after a backward jump
    assert any(np.all(np.array(m.data) == 0.0) for m in cell.velocity[jumped:])
    assert command.supervisor.counters[Reason.STALE_JOINT_STATE] > stale_joints
    advance(10)
    assert len(cell.velocity) >= jumped + 8 and moving(cell, 3)
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_acts_on_arrival_and_the_timer_still_holds_a_dead_policy(ros_context) -> None:
    """A fresh action is commanded at once (sim time standing still: no timer tick could have done it);
    one command per action, none doubled by the timer; with no more actions the timer's watchdog holds
    within two periods of staleness, as before."""
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period
    sim_time = 20.0

    def tick_clock() -> None:
        nonlocal sim_time
        sim_time += period
        clock_pub.publish(Clock(clock=time_msg(sim_time)))
        spin_until(executor, lambda: abs(command.now_s() - sim_time) < 1e-9)
        spin_for(executor, 0.02)  # the joint state and the timer of this tick

    def act() -> None:
        before = len(cell.velocity)
        cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
        spin_until(executor, lambda: len(cell.velocity) > before)  # answered without a clock tick
        spin_for(executor, 0.02)
        assert len(cell.velocity) == before + 1, "one command per action"

    for _ in range(5):  # the stack comes up: joint states, timer ticks (holding, no action yet)
        tick_clock()
    # the first action shares its clock reading with this period's watchdog tick: it replaces that tick
    # (undone and ticked again with the action) instead of a second tick with dt = 0
    before = len(cell.velocity)
    cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
    spin_until(executor, lambda: len(cell.velocity) > before)
    assert command.events["timer_ticks_replaced"] == 1 and not command.action_pending
    assert Reason.INVALID_TIME_STEP not in command.supervisor.counters
    arrivals = command.events["arrival_ticks"]
    for _ in range(30):
        tick_clock()
        act()
    assert command.events["arrival_ticks"] == arrivals + 30
    assert command.events["timer_ticks_skipped"] >= 25  # the timer stayed quiet while actions came
    assert moving(cell, 3)
    # the policy dies: the timer takes over and holds once the action is stale
    stale_after = command.limits.stale_after_periods
    for _ in range(math.ceil(stale_after) + 2):
        tick_clock()
    assert holding(cell, 1) and command.supervisor.counters[Reason.STALE_ACTION] > 0
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_timer_only_mode_waits_for_the_tick(ros_context) -> None:
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(
        ros_context, [*OVERRIDES, "ros.use_sim_time=true", "safety.act_on_arrival=false"]
    )
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    clock_pub.publish(Clock(clock=time_msg(20.0)))
    spin_until(executor, lambda: command.now_s() > 0)
    spin_for(executor, 0.1)
    before = len(cell.velocity)
    cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
    spin_until(executor, lambda: command.latest_action is not None)
    spin_for(executor, 0.1)
    assert len(cell.velocity) == before and command.events["arrival_ticks"] == 0
    command.destroy_node()


def test_joint_state_freshness_is_judged_by_its_stamp_and_future_stamps_are_dropped(
    ros_context, capfd
) -> None:
    """A reading from the future is dropped and never becomes the reference for later ones (the fault
    campaign's 1000 s stamp locked the arm in a hold); one stamped long ago is stale however fresh its
    arrival."""
    command, cell, executor = start(ros_context, OVERRIDES)
    cell.action = ACTION
    spin_until(executor, lambda: moving(cell, 3))
    future = cell.joint_state(positions=[*(posture() + 0.3).tolist(), 0.0], stamp=cell.joint_stamp + 1000.0)
    cell.joint_pub.publish(future)
    spin_until(executor, lambda: command.events["future_joint_state_stamps"] == 1)
    assert command.last_joint_stamp < cell.joint_stamp + 1.0  # not adopted as the reference
    assert not np.allclose(command.latest_joints.positions, posture() + 0.3)  # its posture never used
    spin_for(executor, 0.2)
    assert moving(cell, 3) and command.events["malformed_joint_state_messages"] == 0  # real ones go on
    assert "ahead of this node's clock" in capfd.readouterr().err
    command.destroy_node()
    # a driver whose readings are all stamped half a second ago: stale on arrival, held from the start
    command, cell, executor = start(ros_context, OVERRIDES)
    cell.stamp_offset = -0.5
    cell.action = ACTION
    spin_until(
        executor, lambda: command.events["stale_joint_state_arrivals"] >= 5 and len(cell.velocity) >= 5
    )
    assert holding(cell, 5) and command.supervisor.counters[Reason.STALE_JOINT_STATE] > 0
    assert "arrived 0.5" in capfd.readouterr().err
    cell.stamp_offset = 0.0  # the clock is synced again: it moves
    spin_until(executor, lambda: moving(cell, 3))
    command.destroy_node()


def test_a_dead_policy_is_held_exactly_two_periods_after_its_last_action(ros_context) -> None:
    """Repeated kills on the node's own clock (sim time, advanced in small steps): the watchdog's hold
    lands within stale_after_periods (2) of the last action's receipt, never later (the fault campaign
    measured up to 4 periods)."""
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period
    sim_time = 10.0
    step = period / 5  # the clock moves in fifths of a period: the hold's tick is seen to a fifth

    def advance(seconds: float) -> None:
        nonlocal sim_time
        for _ in range(round(seconds / step)):
            sim_time += step
            clock_pub.publish(Clock(clock=time_msg(sim_time)))
            spin_until(executor, lambda now=sim_time: abs(command.now_s() - now) < 1e-9)
            spin_for(executor, 0.005)

    rng = np.random.default_rng(0)
    for trial in range(6):
        for _ in range(12):  # a live policy, its actions at a random phase to the timer
            advance(period)
            cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
            spin_until(executor, lambda: command.latest_action is not None and command.now_s() >= sim_time)
            spin_for(executor, 0.01)
        advance(step * int(rng.integers(0, 5)))
        assert moving(cell, 2), trial
        killed = len(command.stale_hold_latencies_s)
        advance(3 * period)  # the policy is dead
        assert len(command.stale_hold_latencies_s) == killed + 1, trial
        latency = command.stale_hold_latencies_s[-1]
        assert latency <= command.limits.stale_after_seconds + 1e-6, (trial, latency / period)
        assert holding(cell, 1)
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_a_late_action_replaces_the_tick_at_its_reading_and_is_held_two_periods_after_receipt(
    ros_context,
) -> None:
    """A policy late on one step: its next action arrives at the clock reading of the previous (late)
    action's tick. It replaces that tick at once (it was deferred a whole period to the timer: action ->
    command p99 55 ms for the large model, issue 12), one tick per reading. Issue 13: once the policy dies,
    the hold still comes two periods after the last receipt, not three."""
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period
    sim_time = 30.0

    def tick_clock() -> None:
        """One discrete clock step, as the lock-step twin makes them; returns once the timer has run."""
        nonlocal sim_time
        sim_time += period
        before = timer_runs(command)
        clock_pub.publish(Clock(clock=time_msg(sim_time)))
        spin_until(executor, lambda: abs(command.now_s() - sim_time) < 1e-9)
        timer_ran = lambda: timer_runs(command) > before  # noqa: E731
        spin_until(executor, lambda: timer_ran() and command.latest_joints is not None)
        spin_until(executor, lambda: command.latest_joints.stamp >= sim_time - 1e-9)

    def act() -> None:
        received = command.events["action_messages"]
        cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
        spin_until(executor, lambda: command.events["action_messages"] > received)

    for _ in range(5):
        tick_clock()
    for _ in range(10):  # a live policy: one action a period, each acted on arrival
        tick_clock()
        act()
    assert moving(cell, 3)
    # a late action lands at the same clock reading as the one before it: it replaces that tick, now
    replaced, published = command.events["arrival_ticks_replaced"], len(cell.velocity)
    ticks = command.events["arrival_ticks"]
    act()
    spin_until(executor, lambda: len(cell.velocity) > published)
    assert command.events["arrival_ticks_replaced"] == replaced + 1 and not command.action_pending
    assert command.events["arrival_ticks"] == ticks + 1 and command.events["arrivals_deferred"] == 0
    assert abs(command.last_tick_s - sim_time) < 1e-9 and moving(cell, 1)
    assert Reason.INVALID_TIME_STEP not in command.supervisor.counters
    receipt = command.latest_action[1]
    holds = len(command.stale_hold_latencies_s)
    tick_clock()  # the policy is dead: a period after the receipt the timer stays quiet (moving)
    assert moving(cell, 1)
    tick_clock()  # two periods after the receipt the action is stale, and held
    assert len(command.stale_hold_latencies_s) == holds + 1, "no hold two periods after the last action"
    assert (
        abs(command.stale_hold_latencies_s[-1] - 2 * period) < 1e-9
        and abs(sim_time - receipt - 2 * period) < 1e-9
    )
    spin_until(executor, lambda: holding(cell, 1))  # the hold command itself reaches the cell
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_an_action_too_soon_after_the_last_tick_is_acted_on_once_the_interval_has_passed(
    ros_context,
) -> None:
    """A continuous clock (a real cell): an action arriving less than MIN_ARRIVAL_INTERVAL_PERIODS after the
    last tick waits for a one-shot at that interval, not for the period timer (a whole period after its
    receipt), and a flood meanwhile adds no tick. Driven by a sim clock in fractions of a period."""
    from rosgraph_msgs.msg import Clock

    from gato_ros.ros.command_node import MIN_ARRIVAL_INTERVAL_PERIODS

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period
    sim_time = 40.0

    def set_clock(t: float) -> None:
        nonlocal sim_time
        sim_time = t
        clock_pub.publish(Clock(clock=time_msg(sim_time)))
        spin_until(executor, lambda: abs(command.now_s() - sim_time) < 1e-9)
        spin_for(executor, 0.02)

    def act() -> None:
        received = command.events["action_messages"]
        cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
        spin_until(executor, lambda: command.events["action_messages"] > received)

    for _ in range(5):
        set_clock(sim_time + period)
        spin_until(executor, lambda: command.latest_joints is not None)
    for _ in range(5):  # a live policy: one action a period, each acted on arrival
        set_clock(sim_time + period)
        act()
        spin_until(executor, lambda: not command.action_pending)
    last_tick = command.last_tick_s
    ticks = dict(command.events)
    published = sum(ticks.get(f"{kind}_ticks", 0) for kind in ("arrival", "timer", "deferred"))
    spin_until(executor, lambda: len(cell.velocity) == published)  # every tick's command is in
    set_clock(last_tick + 0.2 * period)
    for _ in range(3):  # too soon: deferred, once, however many come
        act()
    assert command.action_pending and command.events["arrivals_deferred"] == 3
    set_clock(last_tick + 0.4 * period)  # still inside the interval: nothing ticks
    assert command.action_pending and len(cell.velocity) == published
    assert command.events["deferred_ticks"] == 0
    deadline = last_tick + MIN_ARRIVAL_INTERVAL_PERIODS * period
    set_clock(last_tick + 0.6 * period)  # past it: the one-shot acts on the newest action
    spin_until(executor, lambda: command.events["deferred_ticks"] == 1)
    assert not command.action_pending and abs(command.last_tick_s - (last_tick + 0.6 * period)) < 1e-9
    assert command.last_tick_s >= deadline and moving(cell, 1)
    assert command.events["timer_ticks"] == ticks.get("timer_ticks", 0), "the period timer was not needed"
    assert command.events["arrival_ticks"] == ticks["arrival_ticks"]
    set_clock(last_tick + 0.9 * period)  # the one-shot does not fire again
    assert command.events["deferred_ticks"] == 1
    assert Reason.INVALID_TIME_STEP not in command.supervisor.counters
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_an_action_that_beats_its_clock_update_counts_from_its_observation_not_a_period_earlier(
    ros_context,
) -> None:
    """The lock-step twin writes a tick's joint state, then its clock; on a loaded machine the policy can
    take that clock, act, and have its action here before the clock reaches this node. The action answers
    the new tick's observation, so it is received at that tick's time (the joint state's stamp), not a
    period earlier: no stale-action hold at the next clock update (eval: 10-30 holds per 400 steps in
    some launches), and a dead policy is still held two periods after that receipt."""
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    cell.send_joint_states = False  # the test publishes them, in the twin's order
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period
    sim_time = 50.0

    def observe(t: float) -> None:
        """The twin's joint state of the tick at `t` (published before that tick's clock)."""
        cell.joint_pub.publish(cell.joint_state(stamp=t))
        spin_until(executor, lambda: command.last_joint_stamp is not None and command.last_joint_stamp >= t)

    def clock(t: float) -> None:
        """The tick's clock update; returns once the timer has run on it."""
        nonlocal sim_time
        sim_time = t
        before = timer_runs(command)
        clock_pub.publish(Clock(clock=time_msg(t)))
        spin_until(executor, lambda: abs(command.now_s() - t) < 1e-9)
        timer_ran = lambda: timer_runs(command) > before  # noqa: E731
        spin_until(executor, timer_ran)

    def act() -> None:
        received = command.events["action_messages"]
        cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
        spin_until(executor, lambda: command.events["action_messages"] > received)

    clock(sim_time)
    for _ in range(10):  # the usual order: joint state, clock, then the policy's answer
        observe(sim_time + period)
        clock(sim_time + period)
        act()
    assert moving(cell, 3) and command.events["actions_ahead_of_clock"] == 0
    holds = len(command.stale_hold_latencies_s)
    for _ in range(5):  # the answer beats the clock update, every other tick
        tick = sim_time + period
        observe(tick)
        act()  # the node's clock still reads the tick before
        assert abs(command.now_s() - (tick - period)) < 1e-9
        assert abs(command.latest_action[1] - tick) < 1e-9 and abs(command.last_tick_s - tick) < 1e-9
        clock(tick)
        observe(sim_time + period)
        clock(sim_time + period)  # a period after the receipt: no hold (before: stale, held)
        assert len(command.stale_hold_latencies_s) == holds and not holding(cell, 1)
        act()
    assert command.events["actions_ahead_of_clock"] == 5 and moving(cell, 3)
    assert Reason.INVALID_TIME_STEP not in command.supervisor.counters
    # the policy dies after an early answer: held two periods after that receipt, in the cell's time
    tick = sim_time + period
    observe(tick)
    act()
    receipt = command.latest_action[1]
    clock(tick)
    observe(sim_time + period)
    clock(sim_time + period)
    assert len(command.stale_hold_latencies_s) == holds
    observe(sim_time + period)
    clock(sim_time + period)
    assert len(command.stale_hold_latencies_s) == holds + 1, "no hold two periods after the last action"
    assert abs(sim_time - receipt - 2 * period) < 1e-9
    assert abs(command.stale_hold_latencies_s[-1] - 2 * period) < 1e-9
    spin_until(executor, lambda: holding(cell, 1))
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_joint_states_before_the_first_clock_message_are_named_as_such_and_the_start_holds_nothing(
    ros_context, capfd
) -> None:
    """Under sim time this node's /clock subscription can match the twin's writer after its joint-state
    one (discovery order): the twin's first readings then arrive while ROS time still reads 0. They were
    dropped as "stamped 0.200 s ahead of this node's clock" (one eval launch in 50, read as a clock lag);
    they are dropped as readings before the first clock, and once the clock runs the stack starts with
    no stale hold."""
    from rosgraph_msgs.msg import Clock

    command, cell, executor = start(ros_context, [*OVERRIDES, "ros.use_sim_time=true"])
    cell.send_joint_states = False  # the test publishes them, in the twin's order
    clock_pub = cell.node.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    period = command.limits.control_period

    def observe(t: float, before_clock: bool = False) -> None:
        """The twin's joint state of the tick at `t` (published before that tick's clock)."""
        dropped = command.events["joint_states_before_clock"]
        cell.joint_pub.publish(cell.joint_state(stamp=t))
        if before_clock:
            spin_until(executor, lambda: command.events["joint_states_before_clock"] > dropped)
        else:
            spin_until(executor, lambda: abs((command.last_joint_stamp or 0.0) - t) < 1e-9)

    def clock(t: float) -> None:
        before = timer_runs(command)
        clock_pub.publish(Clock(clock=time_msg(t)))
        spin_until(executor, lambda: abs(command.now_s() - t) < 1e-9 and timer_runs(command) > before)

    def act() -> None:
        received = command.events["action_messages"]
        cell.action_pub.publish(Float64MultiArray(data=list(ACTION)))
        spin_until(executor, lambda: command.events["action_messages"] > received)

    for tick in range(4):  # ticks 0-3 of the twin: joint states only, this node's clock not matched yet
        observe((tick + 1) * period, before_clock=True)
    assert command.now_s() == 0.0 and command.last_joint_stamp is None
    assert command.events["future_joint_state_stamps"] == 0 and not cell.velocity
    err = capfd.readouterr().err
    assert "came before this node's first /clock message" in err and "ahead of this node's clock" not in err
    clock(4 * period)  # tick 3's clock reaches it at last
    for tick in range(5, 13):  # then the twin's order: joint state, clock, the policy's answer
        observe(tick * period)
        clock(tick * period)
        act()
    assert moving(cell, 3) and not command.stale_hold_latencies_s
    assert command.events["joint_states_before_clock"] == 4
    assert command.events["future_joint_state_stamps"] == 0
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()


def test_settings_are_read_only_ros_parameters_and_ros_overrides_apply(ros_context) -> None:
    """`ros2 param get /command_node safety.stale_after_periods` shows the effective setting; `--ros-args
    -p safety.stale_after_periods:=1.5` overrides the config like the hydra override does; set is refused."""
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterValue
    from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters

    cfg = load_config(OVERRIDES)
    node = CommandNode(
        cfg, context=ros_context, cli_args=["--ros-args", "-p", "safety.stale_after_periods:=1.5"]
    )
    assert node.limits.stale_after_periods == 1.5 and cfg.safety.stale_after_periods == 1.5
    assert node.ros_overrides == {"safety.stale_after_periods": 1.5}
    client_node = Node("param_client", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(client_node)
    try:
        lister = client_node.create_client(ListParameters, "/command_node/list_parameters")
        names = call(executor, lister, ListParameters.Request(depth=0)).result.names
        assert {"safety.stale_after_periods", "control.rate_hz", "robot.joint_names"} <= set(names)
        getter = client_node.create_client(GetParameters, "/command_node/get_parameters")
        values = call(
            executor, getter, GetParameters.Request(names=["safety.stale_after_periods", "control.rate_hz"])
        ).values
        assert [values[0].double_value, values[1].double_value] == [1.5, float(cfg.control.rate_hz)]
        setter = client_node.create_client(SetParameters, "/command_node/set_parameters")
        change = ParameterMsg(
            name="safety.stale_after_periods", value=ParameterValue(type=3, double_value=0.5)
        )
        result = call(executor, setter, SetParameters.Request(parameters=[change])).results[0]
        assert not result.successful and node.limits.stale_after_periods == 1.5  # read-only
    finally:
        executor.shutdown()
        client_node.destroy_node()
        node.destroy_node()


def test_a_ros_override_of_the_wrong_type_stops_the_node(ros_context) -> None:
    import pytest

    with pytest.raises(ValueError, match=r"safety\.start_enabled"):
        CommandNode(load_config(OVERRIDES), context=ros_context,
                    cli_args=["--ros-args", "-p", "safety.start_enabled:=3.5"])  # fmt: skip


def test_namespaced_nodes_talk_only_inside_their_namespace(ros_context) -> None:
    """The contract's names are relative: two command nodes under /cell_a and /cell_b share a graph, and
    an e-stop on /cell_a/safety/estop latches only cell_a's."""
    cfg = load_config(OVERRIDES)
    cell_a = CommandNode(cfg, context=ros_context, namespace="/cell_a")
    cell_b = CommandNode(load_config(OVERRIDES), context=ros_context, namespace="/cell_b")
    tester = Node("namespace_tester", context=ros_context)
    publisher = tester.create_publisher(
        Bool, f"/cell_a/{contract.ESTOP_REQUEST.name}", contract.ESTOP_REQUEST.qos.profile()
    )
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (cell_a, cell_b, tester):
        executor.add_node(node)
    try:
        assert cell_a.resolve_topic_name(contract.ACTION.name) == "/cell_a/gato/action"
        assert cell_b.resolve_topic_name(contract.ACTION.name) == "/cell_b/gato/action"
        spin_until(executor, lambda: publisher.get_subscription_count() == 1)  # cell_a's only
        publisher.publish(Bool(data=True))
        spin_until(executor, lambda: cell_a.supervisor.estop_latched)
        spin_for(executor, 0.1)
        assert not cell_b.supervisor.estop_latched
    finally:
        executor.shutdown()
        for node in (cell_a, cell_b, tester):
            node.destroy_node()


TELEOP_ACTION = [-0.05, 0.03, -0.02, -0.5, -1.0]  # the operator's: the other way, gripper opening


def test_operator_takeover_switches_the_source_at_once_and_ramps_in(ros_context) -> None:
    """Policy and operator both publish all along. Before the takeover the commands follow the policy
    (the operator's actions are dropped); after it they follow the operator at once, starting from rest;
    handing back does the same the other way. Every switch is counted on /diagnostics and published on
    the latched action-source topic; every command stays inside the limits."""
    from std_msgs.msg import String

    command, cell, executor = start(ros_context, OVERRIDES)
    node = cell.node
    teleop_pub = node.create_publisher(
        Float64MultiArray, contract.TELEOP_ACTION.name, contract.TELEOP_ACTION.qos.profile()
    )
    node.create_timer(
        1.0 / float(cell.cfg.control.rate_hz),
        lambda: teleop_pub.publish(Float64MultiArray(data=list(TELEOP_ACTION))),
    )
    sources: list = []
    node.create_subscription(
        String, contract.ACTION_SOURCE.name, sources.append, contract.ACTION_SOURCE.qos.profile()
    )
    takeover = node.create_client(SetBool, contract.TAKEOVER_SERVICE.name)
    expected = {
        name: command.controller.joint_velocity(posture(), np.asarray(action))
        for name, action in (("policy", ACTION), ("teleop", TELEOP_ACTION))
    }

    def along(v: np.ndarray, name: str) -> bool:
        norm = np.linalg.norm(v) * np.linalg.norm(expected[name])
        return bool(norm > 0.0 and v @ expected[name] / norm > 0.99)

    def follows(name: str) -> bool:
        return moving(cell, 3) and along(np.asarray(cell.velocity[-1].data), name)

    cell.action = ACTION
    spin_until(executor, lambda: follows("policy"))
    assert command.events["teleop_actions_ignored"] > 0
    assert cell.gripper[-1].data[0] > 0.0  # the policy closes

    for takeover_on, source in ((True, "teleop"), (False, "policy")):
        before = len(cell.velocity)
        response = call(executor, takeover, SetBool.Request(data=takeover_on))
        assert response.success, response.message
        assert command.action_source == source
        spin_until(executor, lambda s=source: follows(s))
        # the arm stops at the switch, then ramps in: a zero command before the first one of the new source
        since = [np.asarray(m.data) for m in cell.velocity[before:]]
        first_new = next(i for i, v in enumerate(since) if along(v, source))
        assert any(np.abs(v).max() == 0.0 for v in since[:first_new]), since[: first_new + 1]
        spin_until(executor, lambda s=source: bool(sources) and sources[-1].data == s)
        if source == "teleop":
            assert cell.gripper[-1].data[0] < 0.0  # the operator opens
            assert command.events["policy_actions_ignored"] > 0
    assert command.events["switches_to_teleop"] == 1 and command.events["switches_to_policy"] == 1

    diagnostics_before = len(cell.diagnostics)
    spin_until(executor, lambda: len(cell.diagnostics) > diagnostics_before)
    values = {kv.key: kv.value for kv in cell.diagnostics[-1].status[0].values}
    assert values["action_source"] == "policy" and values["action_source_switches"] == "2"
    assert call(executor, takeover, SetBool.Request(data=False)).success  # already the policy: no switch
    assert command.events["action_source_switches"] == 2
    assert_commands_in_limits(cell, command.limits)
    command.destroy_node()
