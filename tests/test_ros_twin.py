"""Twin node: publishes every contract topic of the cell, obeys joint commands, times them out, episodes."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from gato_ros.config import load_config
from gato_ros.ros import contract
from gato_ros.ros.launcher import isolated_domain_id, ros_domain
from gato_ros.ros.messages import float_array_msg, image_array, load_calibration
from gato_ros.ros.twin_node import TwinNode

EPISODE_STEPS = 20


@pytest.fixture(scope="module")
def ros_module_context():
    with ros_domain(isolated_domain_id()):
        rclpy.init()
        yield
        rclpy.shutdown()


class Listener:
    """Collects every message of the twin's output topics."""

    def __init__(self, cameras: list[str]) -> None:
        self.node = rclpy.create_node("twin_test_listener")
        self.messages: dict[str, list] = {}
        topics = [contract.JOINT_STATES, contract.CLOCK, contract.EPISODE_STATUS]
        topics += [f(c) for c in cameras for f in (contract.camera_image, contract.camera_info)]
        for topic in topics:
            store = self.messages.setdefault(topic.name, [])
            self.node.create_subscription(topic.msg_type, topic.name, store.append, topic.qos.profile())
        self.velocity = self.node.create_publisher(
            contract.JOINT_VELOCITY_COMMAND.msg_type,
            contract.JOINT_VELOCITY_COMMAND.name,
            contract.JOINT_VELOCITY_COMMAND.qos.profile(),
        )
        self.action = self.node.create_publisher(
            contract.ACTION.msg_type, contract.ACTION.name, contract.ACTION.qos.profile()
        )
        self.reset = self.node.create_client(contract.RESET_EPISODE.srv_type, contract.RESET_EPISODE.name)

    def __getitem__(self, topic: contract.Topic) -> list:
        return self.messages[topic.name]

    def statuses(self) -> list[dict]:
        return [json.loads(m.data) for m in self[contract.EPISODE_STATUS]]


def spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.01)
    return predicate()


@pytest.fixture(scope="module")
def stack(ros_module_context):
    cfg = load_config(
        [
            "ros.twin.realtime_factor=0",  # lock-step: every command is one tick
            "ros.twin.lockstep_wait_s=0.02",
            "ros.twin.lockstep_owed_command_wait_s=0.02",  # no command node here to owe a hold
            "ros.twin.wait_for_stack_s=0",
            f"control.episode_seconds={EPISODE_STEPS / 20.0}",
            "twin.objects=triplet",
        ]
    )
    twin = TwinNode(cfg)
    listener = Listener(list(cfg.cameras.policy_cameras))
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(listener.node)
    yield cfg, twin, listener, executor
    executor.shutdown()
    twin.close()
    twin.destroy_node()
    listener.node.destroy_node()


def test_twin_episodes_end_at_the_time_limit_and_reset_on_request(stack) -> None:
    cfg, _twin, listener, executor = stack
    statuses = listener.statuses
    # the fixture's episode runs into its time limit within EPISODE_STEPS ticks, then the next one starts
    assert spin_until(executor, lambda: any(s["done"] for s in statuses()), 20)
    done = next(s for s in statuses() if s["done"])
    assert done["episode"] == 0 and done["time_limit"] and not done["success"]
    assert done["physics_unstable"] is False
    assert done["step"] == EPISODE_STEPS
    assert done["seed"] == cfg.seed and done["triplet"] == cfg.twin.triplet
    assert spin_until(executor, lambda: statuses()[-1]["episode"] == 1, 10)
    assert statuses()[-1]["seed"] == cfg.seed + 1
    assert statuses()[-1]["step"] == 0

    future = listener.reset.call_async(contract.RESET_EPISODE.srv_type.Request())
    assert spin_until(executor, future.done, 10)
    assert future.result().success
    assert spin_until(executor, lambda: statuses()[-1]["episode"] == 2, 10)
    assert statuses()[-1]["seed"] == cfg.seed + 2


def test_twin_publishes_the_cell_and_follows_joint_commands(stack) -> None:
    cfg, twin, listener, executor = stack
    joints = listener[contract.JOINT_STATES]
    assert spin_until(executor, lambda: listener.velocity.get_subscription_count() > 0, 10)
    # a fresh episode, long enough for the commands and the timeout below
    assert spin_until(executor, lambda: len(listener.statuses()) > 0, 10)
    episode = listener.statuses()[-1]["episode"]
    future = listener.reset.call_async(contract.RESET_EPISODE.srv_type.Request())
    assert spin_until(executor, lambda: future.done() and listener.statuses()[-1]["episode"] > episode, 10)
    start = listener.statuses()[-1]
    assert start["step"] == 0

    def start_state() -> list:
        return [
            m for m in joints if contract.stamp_to_seconds(m.header.stamp) == pytest.approx(start["clock"])
        ]

    assert spin_until(executor, lambda: len(start_state()) > 0, 10)
    q_start = np.array(start_state()[-1].position[:7])
    qdot = np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2])
    commands = 4
    # Lock-step: the twin ticks as soon as the stack answered its last observation (an ACTION and a joint
    # command). Its fallback timer (lockstep_wait_s, 20 ms here) would also tick, and under CPU load a
    # timer tick can come before a command arrives, so two commands share a tick. Slow the fallback down
    # while commanding: exactly one tick per answered observation.
    fallback_period_ns = twin.timer.timer_period_ns
    twin.timer.timer_period_ns = int(30e9)
    twin.timer.reset()
    try:
        for _ in range(commands):
            before = len(joints)
            listener.action.publish(float_array_msg(np.zeros(5)))
            listener.velocity.publish(float_array_msg(qdot))
            assert spin_until(executor, lambda b=before: len(joints) > b, 10)
    finally:
        twin.timer.timer_period_ns = fallback_period_ns
        twin.timer.reset()
    # then no more commands: the twin holds the last one for at most command_timeout_s (2 ticks), then
    # zeroes the joint velocity itself, like a ros2_control controller; the lock-step timer keeps ticking
    before = len(joints)
    settle_ticks = 16  # timeout (2) + the actuators' lag behind their integrated target (~6)

    def still() -> bool:
        return len(joints) >= before + 4 and float(np.abs(joints[-1].velocity[:7]).max()) < 0.01

    assert spin_until(executor, lambda: still() or len(joints) >= before + settle_ticks, 60)
    assert still(), joints[-1].velocity
    state = joints[-1]
    assert list(state.name) == [*cfg.robot.joint_names, cfg.robot.gripper.joint_name]
    # the gripper's velocity too (policies may observe it: gripper/joints/velocity)
    assert all(len(m.velocity) == 8 and np.all(np.isfinite(m.velocity)) for m in joints)
    period = 1.0 / cfg.control.rate_hz
    timeout_ticks = round(cfg.ros.twin.command_timeout_s * cfg.control.rate_hz)
    moved = np.array(state.position[:7]) - q_start
    # integrated-velocity actuators: the arm ends where the commanded velocities integrate to
    low, high = qdot * commands * period, qdot * (commands + timeout_ticks) * period
    assert np.all(moved >= low - 0.01) and np.all(moved <= high + 0.01), (moved, low, high)
    assert moved[0] > 0.5 * low[0] and moved[6] > 0.5 * low[6]

    # every tick: the clock advances by one period; joint states and images share its stamp
    clocks = [contract.stamp_to_seconds(m.clock) for m in listener[contract.CLOCK]]
    assert np.all(np.diff(clocks) > 0)
    np.testing.assert_allclose(np.diff(clocks), period, atol=1e-6)
    calibration = load_calibration(cfg)
    spin_until(executor, lambda: False, 0.1)
    for camera in cfg.cameras.policy_cameras:
        images = listener[contract.camera_image(camera)]
        infos = listener[contract.camera_info(camera)]
        assert images and infos
        image = images[-1]
        assert (image.encoding, image.width, image.height) == ("rgb8", cfg.cameras.width, cfg.cameras.height)
        assert image.header.frame_id == contract.camera_optical_frame(camera)
        assert image_array(image).std() > 1.0  # a rendered scene, not a blank frame
        # images carry the stamp of their tick's joint state (the newest image's joint state may still
        # be in flight: compare those up to the newest joint state received)
        joint_stamps = {contract.stamp_to_seconds(m.header.stamp) for m in joints}
        image_stamps = [contract.stamp_to_seconds(m.header.stamp) for m in images]
        checked = [t for t in image_stamps if t <= max(joint_stamps)]
        assert checked and all(t in joint_stamps for t in checked)
        fovy = calibration["cameras"][camera]["fovy_deg"]
        focal = (cfg.cameras.height / 2) / math.tan(math.radians(fovy) / 2)
        assert infos[-1].k[0] == pytest.approx(focal)
        assert infos[-1].k[2] == pytest.approx((cfg.cameras.width - 1) / 2)  # pixel centres at integers


def test_trajectory_commands_become_joint_velocities() -> None:
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from gato_ros.ros.twin_node import trajectory_velocity

    names = [f"right_j{i}" for i in range(7)]
    q = np.linspace(-0.3, 0.3, 7)
    msg = JointTrajectory(joint_names=list(reversed(names)))
    point = JointTrajectoryPoint(time_from_start=Duration(sec=0, nanosec=100_000_000))
    point.positions = list(reversed((q + 0.02).tolist()))  # reached in 0.1 s: 0.2 rad/s
    msg.points = [point]
    np.testing.assert_allclose(trajectory_velocity(msg, names, q, 0.05), 0.2)
    point.velocities = list(reversed(np.arange(7.0).tolist()))  # velocities win, reordered by name
    np.testing.assert_allclose(trajectory_velocity(msg, names, q, 0.05), np.arange(7.0))
    point.velocities = [float("nan")] * 7
    assert trajectory_velocity(msg, names, q, 0.05) is None
    msg.joint_names = [*names[:6], "right_j0"]  # a joint twice, one missing
    assert trajectory_velocity(msg, names, q, 0.05) is None


def test_twin_publishes_the_scripted_experts_action(ros_module_context) -> None:
    cfg = load_config(
        ["ros.twin.action_source=expert", "ros.twin.realtime_factor=0", "ros.twin.lockstep_wait_s=0.02"]
    )
    twin = TwinNode(cfg)
    node = rclpy.create_node("expert_test_listener")
    actions: list = []
    topic = contract.ACTION
    node.create_subscription(topic.msg_type, topic.name, actions.append, topic.qos.profile())
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: len(actions) >= 5, 30)  # no camera subscribers: no rendering
    finally:
        executor.shutdown()
        twin.close()
        twin.destroy_node()
        node.destroy_node()
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    for msg in actions:
        action = np.asarray(msg.data)
        assert action.shape == (5,) and np.all(action >= low) and np.all(action <= high)
    assert any(np.abs(np.asarray(m.data)[:3]).max() > 0 for m in actions)  # it moves toward the red object


def test_twin_follows_the_command_nodes_trajectory_interface(ros_module_context) -> None:
    """The command node's one-point trajectories (safety.command_interface=trajectory) drive the twin."""
    from gato_ros.ros.command_node import CommandNode

    cfg = load_config(
        [
            "safety.command_interface=trajectory",
            "safety.start_enabled=true",
            "ros.use_sim_time=true",
            "ros.twin.action_source=expert",
            "ros.twin.realtime_factor=0",
            "ros.twin.lockstep_wait_s=0.5",  # ample: a loaded machine still answers every tick in time
        ]
    )
    twin = TwinNode(cfg)
    command = CommandNode(cfg)
    node = rclpy.create_node("trajectory_test_listener")
    joints: list = []
    trajectories: list = []
    for topic, store in ((contract.JOINT_STATES, joints), (contract.JOINT_TRAJECTORY_COMMAND, trajectories)):
        node.create_subscription(topic.msg_type, topic.name, store.append, topic.qos.profile())
    executor = SingleThreadedExecutor()
    for n in (twin, command, node):
        executor.add_node(n)
    try:
        assert spin_until(executor, lambda: len(trajectories) >= 40, 120)
    finally:
        executor.shutdown()
        for n in (command, node):
            n.destroy_node()
        twin.close()
        twin.destroy_node()
    # one point a period ahead; an empty trajectory ("stop where you are") is a hold for a joint reading
    # that aged out, which a loaded machine can cause when the lock-step twin ticks on its timeout
    assert all(len(t.points) in (0, 1) for t in trajectories)
    pointed = [t for t in trajectories if t.points]
    assert len(pointed) >= 0.5 * len(trajectories) and all(len(t.points[0].velocities) == 7 for t in pointed)
    moving = [t for t in pointed if np.abs(t.points[0].velocities).max() > 1e-3]
    assert moving, "the command node never moved the arm"
    travel = np.abs(np.asarray(joints[-1].position[:7]) - np.asarray(joints[0].position[:7])).max()
    assert travel > 0.005, travel


def test_lock_step_waits_for_the_hold_the_command_nodes_watchdog_owes(ros_module_context) -> None:
    """Once a tick passed without an ACTION, the command node's watchdog owes a command every tick: the
    lock-step twin waits for it (not just `lockstep_wait_s`), so a command node starved for longer than
    that still stamps its hold on time (issue 13: a hold stamped at 3 periods on the full stack)."""
    cfg = load_config(
        [
            "ros.twin.realtime_factor=0",
            # the answers below arrive well within it however loaded the machine; a silent tick times out
            "ros.twin.lockstep_wait_s=1.0",
            "ros.twin.lockstep_owed_command_wait_s=60",
            "ros.twin.wait_for_stack_s=0",
            "control.episode_seconds=30",
        ]
    )
    twin = TwinNode(cfg)
    listener = Listener([])
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(listener.node)
    clocks = listener[contract.CLOCK]
    try:
        assert spin_until(executor, lambda: listener.velocity.get_subscription_count() > 0, 10)
        for _ in range(2):  # the policy and the command node answer two observations
            before = len(clocks)
            listener.action.publish(float_array_msg(np.zeros(5)))
            listener.velocity.publish(float_array_msg(np.zeros(7)))
            assert spin_until(executor, lambda b=before: len(clocks) > b, 10)
        # the policy falls silent: the next tick comes on the short timeout (no command is due yet) ...
        before = len(clocks)
        assert spin_until(executor, lambda: len(clocks) > before, 10)
        # ... and from then on the clock waits for the watchdog's command, however late it comes
        waiting = len(clocks)
        spin_until(executor, lambda: len(clocks) > waiting, 3.0)  # 3 x lockstep_wait_s
        assert len(clocks) == waiting, "the clock advanced past a command the command node owed"
        listener.velocity.publish(float_array_msg(np.zeros(7)))  # the hold, without any ACTION
        assert spin_until(executor, lambda: len(clocks) > waiting, 10), "the owed command did not tick"
    finally:
        executor.shutdown()
        twin.close()
        twin.destroy_node()
        listener.node.destroy_node()


@pytest.mark.parametrize("reset_by", ["auto_reset", "service"])
def test_a_new_episode_starts_at_a_tick_so_late_answers_never_shift_its_commands(
    ros_module_context, reset_by: str
) -> None:
    """In lock-step the stack still answers an episode's last observation (an ACTION, then its command)
    after the twin decided the episode is over. The next episode starts at a tick, in place of a physics
    step, so that late answer never counts as the answer to the new episode's first observation: the new
    episode's first step applies the command computed for its own first observation. (The reset used to
    happen on the done tick or on the request itself: the late answer then released the new episode's
    first tick with the old command, and every later command came one tick late, one tick more per
    episode.) Callbacks are called directly, in the order the messages arrive, with nothing spinning: no
    timer can tick in between."""
    cfg = load_config(
        [
            "ros.twin.realtime_factor=0",
            "ros.twin.lockstep_wait_s=60",  # never fires: nothing spins
            "ros.twin.wait_for_stack_s=0",
            f"ros.twin.auto_reset={str(reset_by == 'auto_reset').lower()}",
            "control.episode_seconds=0.15",  # three steps
            "twin.objects=triplet",
        ]
    )
    node = TwinNode(cfg)
    applied: list[tuple[int, int, float]] = []  # (episode, step, commanded joint-0 velocity) per physics step
    step_joint_velocity = node.twin.step_joint_velocity

    def spy(qdot, gripper):
        applied.append((node.episode, node.twin.step_count, float(qdot[0])))
        return step_joint_velocity(qdot, gripper)

    node.twin.step_joint_velocity = spy

    def answer(velocity: float) -> None:
        """The policy's ACTION for the newest observation, then the command node's command for it."""
        node.on_action(float_array_msg(np.zeros(5)))
        node.on_velocity_command(float_array_msg(np.full(7, velocity)))

    try:
        for k in range(3):
            answer(0.01 * (k + 1))
        assert node.episode_done and node.episode == 0
        assert [a[2] for a in applied] == pytest.approx([0.01, 0.02, 0.03])
        if reset_by == "service":
            # the answer to the held final observation is in flight when the next episode is requested
            node.on_action(float_array_msg(np.zeros(5)))
            from std_srvs.srv import Trigger

            response = node.on_reset(Trigger.Request(), Trigger.Response())
            assert response.success and "episode 1" in response.message
            node.on_velocity_command(float_array_msg(np.full(7, -0.05)))
        else:
            answer(-0.05)  # the answer to the last observation of episode 0
        assert node.episode == 1 and node.twin.step_count == 0  # the reset took that tick; no step yet
        answer(0.04)  # the answer to episode 1's first observation
        answer(0.05)
        assert applied[3:] == [(1, 0, pytest.approx(0.04)), (1, 1, pytest.approx(0.05))]
        # a tick on the timeout (no answer in time) is counted in the episode's status, answered ones not
        assert node.status()["lockstep_timeouts"] == 0
        node._on_lockstep_timer()
        assert node.status()["lockstep_timeouts"] == 1 and node.twin.step_count == 3
    finally:
        node.close()
        node.destroy_node()
