"""Twin node as its own action source (random baseline), its object poses topic and its divergence flag.

Its own module so that no other twin or listener shares the ROS graph: each test waits until its own
endpoints have matched, then every message it publishes arrives.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from gato_ros.config import load_config
from gato_ros.ros import contract
from gato_ros.ros.launcher import launch_overrides, stack_plan
from gato_ros.ros.messages import float_array_msg, pose_array
from gato_ros.ros.twin_node import TwinNode


def spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not predicate():
        executor.spin_once(timeout_sec=0.01)
    return predicate()


class Recorder:
    """A test node that records chosen topics and publishes joint velocity commands."""

    def __init__(self, name: str, topics: list[contract.Topic]) -> None:
        self.node = rclpy.create_node(name)
        self.messages: dict[str, list] = {}
        self.subscriptions: dict[str, object] = {}
        for topic in topics:
            store = self.messages.setdefault(topic.name, [])
            self.subscriptions[topic.name] = self.node.create_subscription(
                topic.msg_type, topic.name, store.append, topic.qos.profile()
            )
        command = contract.JOINT_VELOCITY_COMMAND
        self.velocity = self.node.create_publisher(command.msg_type, command.name, command.qos.profile())
        self.reset = self.node.create_client(contract.RESET_EPISODE.srv_type, contract.RESET_EPISODE.name)

    def __getitem__(self, topic: contract.Topic) -> list:
        return self.messages[topic.name]

    def hears(self, topic: contract.Topic, publisher, subscribers: int = 1) -> bool:
        """Both ends of `topic` have matched (`subscribers`: the publisher's matched subscriptions, ours
        included): from now on nothing published is lost."""
        subscription = self.subscriptions[topic.name]
        return publisher.get_subscription_count() >= subscribers and subscription.get_publisher_count() > 0


def manual_twin_config(*overrides: str):
    """Lock-step with its fallback timer far off: the twin ticks only on a joint command (when it is its
    own action source) or when the test calls `tick()`, so every tick is the test's."""
    return load_config(
        ["ros.twin.realtime_factor=0", "ros.twin.lockstep_wait_s=600", "twin.objects=triplet", *overrides]
    )


def stamped(messages: list, seconds: float) -> list:
    return [m for m in messages if contract.stamp_to_seconds(m.header.stamp) == pytest.approx(seconds)]


def test_random_plan_has_no_policy_node() -> None:
    overrides = launch_overrides(True, "/ckpt", "cpu", ["ros.twin.action_source=random"])
    assert [n.name for n in stack_plan(load_config(overrides), True, overrides)] == ["twin", "command_node"]


def test_twin_random_source_publishes_in_bounds_actions_reproducible_per_seed(ros_default_context) -> None:
    cfg = manual_twin_config(
        "ros.twin.action_source=random",
        "ros.twin.seed_stride=0",  # every episode runs with the same seed: it must repeat its actions
        "ros.twin.wait_for_stack_s=600",  # held until the first joint command
    )
    twin = TwinNode(cfg)
    recorder = Recorder("random_test_listener", [contract.ACTION])
    actions = recorder[contract.ACTION]
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(recorder.node)
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)

    def expected(draws: int) -> np.ndarray:
        rng = np.random.default_rng(cfg.seed)  # the episode's seed (stride 0: every episode's)
        return np.array([rng.uniform(low, high) for _ in range(draws)])

    def command_ticks(count: int) -> None:
        for _ in range(count):  # lock-step: each joint command is answered by one tick (and one action)
            before = len(actions)
            recorder.velocity.publish(float_array_msg(np.zeros(7)))
            assert spin_until(executor, lambda b=before: len(actions) > b, 10)

    try:
        # the twin listens to ACTION itself (to know the stack is up): ours is the second subscription
        assert spin_until(executor, lambda: recorder.hears(contract.ACTION, twin.action_pub, 2), 10)
        assert spin_until(executor, lambda: recorder.velocity.get_subscription_count() > 0, 10)
        # held ticks before the stack is up (no joint command yet) repeat the first draw of episode 0
        held_ticks = 3
        for _ in range(held_ticks):
            twin.tick()
        assert spin_until(executor, lambda: len(actions) >= held_ticks, 10)
        held = np.asarray([m.data for m in actions])
        np.testing.assert_array_equal(held, np.repeat(expected(1), held_ticks, axis=0))
        steps = 6
        actions.clear()
        command_ticks(steps)  # the world moves: a new draw per new observation
        first = np.asarray([m.data for m in actions])
        np.testing.assert_array_equal(first, expected(steps + 1)[1:])

        # the next episode, same seed: the same actions again, from its first observation on; it starts at
        # the next tick (here the next joint command's), which publishes its first observation and draw
        actions.clear()
        future = recorder.reset.call_async(contract.RESET_EPISODE.srv_type.Request())
        assert spin_until(executor, future.done, 10)
        assert not actions  # no new episode between ticks
        command_ticks(1 + steps)
        assert twin.twin.step_count == steps  # the reset took the first of those ticks
        second = np.asarray([m.data for m in actions])
    finally:
        executor.shutdown()
        twin.close()
        twin.destroy_node()
        recorder.node.destroy_node()
    np.testing.assert_array_equal(second, expected(steps + 1))
    assert np.all(second >= low) and np.all(second <= high)
    assert len({tuple(a) for a in second}) == len(second)  # a fresh draw every tick


def test_twin_publishes_object_poses_with_the_ticks_stamp(ros_default_context) -> None:
    cfg = manual_twin_config("ros.twin.wait_for_stack_s=0")
    twin = TwinNode(cfg)
    recorder = Recorder("poses_test_listener", [contract.OBJECT_POSES, contract.JOINT_STATES])
    poses, joints = recorder[contract.OBJECT_POSES], recorder[contract.JOINT_STATES]
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(recorder.node)
    try:
        assert spin_until(executor, lambda: recorder.hears(contract.OBJECT_POSES, twin.poses_pub), 10)
        assert spin_until(executor, lambda: recorder.hears(contract.JOINT_STATES, twin.joint_pub), 10)
        for lift in (0.0, 0.05, 0.1):
            # move red up (it falls during the tick), so every tick's poses differ
            placed = twin.twin.object_poses()
            placed[0, 2] += lift
            twin.twin.set_object_poses(placed)
            twin.tick()
            clock = twin.clock_s
            assert spin_until(executor, lambda c=clock: stamped(poses, c) and stamped(joints, c), 10)
            msg = stamped(poses, clock)[-1]
            truth = twin.twin.object_poses()  # nothing ticked since
            assert msg.header.frame_id == contract.WORLD_FRAME and len(msg.poses) == 3
            np.testing.assert_array_equal(pose_array(msg), truth)
            # the twin's own privileged observation: the same poses, flattened
            np.testing.assert_allclose(truth.reshape(-1), twin.twin.observation()["objects/pose"], atol=1e-6)
            red = msg.poses[0]  # ROS quaternion fields, not just our round trip
            assert (red.position.z, red.orientation.w, red.orientation.z) == tuple(truth[0, [2, 3, 6]])
    finally:
        executor.shutdown()
        twin.close()
        twin.destroy_node()
        recorder.node.destroy_node()


def test_twin_status_flags_diverged_physics(ros_default_context) -> None:
    cfg = manual_twin_config("ros.twin.wait_for_stack_s=0")
    twin = TwinNode(cfg)
    recorder = Recorder("divergence_test_listener", [contract.EPISODE_STATUS])
    executor = SingleThreadedExecutor()
    executor.add_node(twin)
    executor.add_node(recorder.node)

    def statuses() -> list[dict]:
        return [json.loads(m.data) for m in recorder[contract.EPISODE_STATUS]]

    try:
        assert spin_until(executor, lambda: recorder.hears(contract.EPISODE_STATUS, twin.status_pub), 10)
        twin.tick()
        assert spin_until(executor, lambda: len(statuses()) > 0, 10)
        assert statuses()[-1]["physics_unstable"] is False and not statuses()[-1]["done"]
        # a force no physics survives on the red object: MuJoCo reports a bad acceleration
        twin.twin.data.qfrc_applied[twin.twin.index.object_dof[0] + 2] = 1e12
        twin.tick()
        assert spin_until(executor, lambda: any(s["done"] for s in statuses()), 10)
    finally:
        executor.shutdown()
        twin.close()
        twin.destroy_node()
        recorder.node.destroy_node()
    done = next(s for s in statuses() if s["done"])
    assert done["physics_unstable"] is True and not done["success"] and not done["time_limit"]
    assert done["episode"] == 0
