"""Policy node: acts only on fresh, synchronized observations; its observation matches the twin's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from omegaconf import OmegaConf
from rclpy.executors import SingleThreadedExecutor
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String

from gato_ros.config import load_config
from gato_ros.control.kinematics import ArmKinematics
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.images import fit_image
from gato_ros.gato.model import build_model
from gato_ros.ros import contract
from gato_ros.ros.messages import image_msg, joint_state_msg, pose_array_msg, time_msg
from gato_ros.ros.observation import GRIPPER_VELOCITY_PART
from gato_ros.ros.policy_node import ObservationAssembler, PolicyNode, placeholder_object_poses

T0 = 100.0  # sim time at the start of the test


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config()
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("policy") / "random_tiny", model, cfg)


# a state-based checkpoint: joint state + the privileged object poses, no cameras
STATE_TRAINING = ["tokenizer.observation.use_privileged=true", "tokenizer.observation.image_keys=[]"]


@pytest.fixture(scope="module")
def state_checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(STATE_TRAINING)
    model = build_model(cfg)
    return save_checkpoint(tmp_path_factory.mktemp("policy") / "random_tiny_state", model, cfg)


class FakeCell:
    """Publishes clock, joint states and camera images with chosen stamps; records the policy's output."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.node = rclpy.create_node("policy_test_cell")
        self.cameras = list(cfg.cameras.policy_cameras)

        def pub(topic):
            return self.node.create_publisher(topic.msg_type, topic.name, topic.qos.profile())

        self.clock = pub(contract.CLOCK)
        self.joints = pub(contract.JOINT_STATES)
        self.status = pub(contract.EPISODE_STATUS)
        self.images = {c: pub(contract.camera_image(c)) for c in self.cameras}
        self.actions, self.tokens, self.latencies = [], [], []
        for topic, store in (
            (contract.ACTION, self.actions),
            (contract.ACTION_TOKENS, self.tokens),
            (contract.POLICY_LATENCY, self.latencies),
        ):
            self.node.create_subscription(topic.msg_type, topic.name, store.append, topic.qos.profile())
        self.rng = np.random.default_rng(0)

    def publish(self, now: float, image_stamp: float, joint_stamp: float) -> None:
        q = np.asarray(self.cfg.robot.nominal_posture)
        self.joints.publish(
            joint_state_msg(
                [*self.cfg.robot.joint_names, self.cfg.robot.gripper.joint_name],
                [*q, 0.4],
                [0.0] * 8,
                time_msg(joint_stamp),
            )
        )
        for camera, publisher in self.images.items():
            pixels = self.rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)  # resized by the node
            publisher.publish(image_msg(pixels, time_msg(image_stamp), contract.camera_optical_frame(camera)))
        self.clock.publish(Clock(clock=time_msg(now)))


def spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)


def run_ticks(
    executor, cell: FakeCell, start: float, ticks: int, image_lag: float, joint_lag: float
) -> float:
    period = 1.0 / cell.cfg.control.rate_hz
    now = start
    for _ in range(ticks):
        now += period
        cell.publish(now, now - image_lag, now - joint_lag)
        spin_for(executor, 0.06)
    return now


def test_policy_node_acts_only_on_fresh_synchronized_observations(
    ros_default_context, checkpoint: Path
) -> None:
    overrides = ["ros.use_sim_time=true", f"policy.checkpoint={checkpoint}", "policy.device=auto"]
    # an age limit well above the skew limit, so each check below is tested on its own (with lags of
    # whole periods: sensor messages of one tick may arrive around the clock of the previous one)
    cfg = load_config([*overrides, "policy.max_observation_age_s=0.5", "policy.max_observation_skew_s=0.1"])
    policy = PolicyNode(cfg)
    cell = FakeCell(cfg)
    executor = SingleThreadedExecutor()
    executor.add_node(policy)
    executor.add_node(cell.node)
    try:
        deadline = time.monotonic() + 10
        while cell.clock.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        max_age = cfg.policy.max_observation_age_s
        max_skew = cfg.policy.max_observation_skew_s
        period = 1.0 / cfg.control.rate_hz

        # stale: every part older than the allowed age -> no action at all
        now = run_ticks(executor, cell, T0, 6, image_lag=max_age + 2 * period, joint_lag=max_age + 2 * period)
        assert cell.actions == []
        # unsynchronized: fresh enough, but images and joints stamped too far apart
        now = run_ticks(executor, cell, now, 6, image_lag=max_skew + 2 * period, joint_lag=0.0)
        assert cell.actions == []
        # fresh and synchronized -> one action per control period
        now = run_ticks(executor, cell, now, 6, image_lag=0.0, joint_lag=0.0)
        spin_for(executor, 0.2)
        assert 4 <= len(cell.actions) <= 7
        low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
        for msg in cell.actions:
            action = np.asarray(msg.data)
            assert action.shape == (5,) and np.all(action >= low) and np.all(action <= high)
        value_low = cfg.tokenizer.text_vocab_size
        for msg in cell.tokens:
            assert len(msg.data) == 5 and all(
                value_low <= t < value_low + cfg.tokenizer.num_bins for t in msg.data
            )
        assert cell.latencies and all(0.0 <= m.data < 5.0 for m in cell.latencies)

        # data stops (e.g. a camera dies): nothing new -> the policy stops acting (the first clock tick
        # may still act on the last data, if a busy executor merged two timer periods into one)
        count = None
        for tick in range(6):
            now += period
            cell.clock.publish(Clock(clock=time_msg(now)))
            spin_for(executor, 0.06)
            if tick == 1:
                count = len(cell.actions)
        assert len(cell.actions) == count

        # a new episode on the twin's status clears the cache (and the node keeps acting afterwards)
        cell.status.publish(String(data='{"episode": 0}'))
        spin_for(executor, 0.1)
        cell.status.publish(String(data='{"episode": 1}'))
        spin_for(executor, 0.1)
        assert policy.decoder.history().tokens.size == 0
        run_ticks(executor, cell, now, 3, image_lag=0.0, joint_lag=0.0)
        assert len(cell.actions) > count
    finally:
        executor.shutdown()
        policy.destroy_node()
        cell.node.destroy_node()


def test_observation_matches_the_twin() -> None:
    """The policy's observation built from joint states equals the twin's own for the same state."""
    from gato_ros.twin.env import StackingTwin

    cfg = load_config()
    twin = StackingTwin(cfg, render=False)
    try:
        obs = twin.reset(seed=3)
        assembler = ObservationAssembler(cfg, [], ArmKinematics(cfg.robot))
        low, high = cfg.robot.gripper.driver_range
        gripper_rad = (
            low + (high - low) * float(obs["gripper/joints/angle"][0]) / cfg.robot.gripper.command_range[1]
        )
        assembler.add_joints(twin.joint_positions(), gripper_rad, stamp_s=1.0, received_s=0.0)
        mine = assembler.assemble(now_s=1.0)
        assert not isinstance(mine, str), mine
        for key in ("gripper/joints/angle", "sawyer/joints/angle", "sawyer/pinch/pose", "sawyer/tcp/pose"):
            np.testing.assert_allclose(mine.values[key], obs[key], atol=1e-4, err_msg=key)
        assert "gripper/joints/velocity" not in mine.values  # not asked for
        # the same stamp is not acted on twice
        assert assembler.assemble(now_s=1.0).startswith("no new observation since the last action")
        assembler.add_joints(twin.joint_positions(), gripper_rad, stamp_s=1.05, received_s=0.05)
        assert not isinstance(assembler.assemble(now_s=1.05), str)
    finally:
        twin.close()


def test_gripper_velocity_from_joint_states_matches_the_twin() -> None:
    """The gripper's speed the twin observes, sent as a joint state's velocity (rad/s), comes back on the
    twin's scale; a policy that observes it gets no observation from joint states without it."""
    from gato_ros.twin.env import StackingTwin

    cfg = load_config()
    twin = StackingTwin(cfg, render=False)
    try:
        twin.reset(seed=3)
        for _ in range(4):  # close the fingers: the driver moves
            obs = twin.step(np.array([0.0, 0.0, 0.0, 0.0, 1.0])).observation
        speed = float(obs["gripper/joints/velocity"][0])
        assert speed > 10.0, speed  # units per second, positive closing
        low, high = cfg.robot.gripper.driver_range
        units = cfg.robot.gripper.command_range[1]
        gripper_rad = low + (high - low) * float(obs["gripper/joints/angle"][0]) / units
        gripper_rad_s = (high - low) * speed / units
        assembler = ObservationAssembler(cfg, [], ArmKinematics(cfg.robot), gripper_velocity=True)
        assembler.add_joints(twin.joint_positions(), gripper_rad, 1.0, 0.0, gripper_rad_s=gripper_rad_s)
        mine = assembler.assemble(now_s=1.0)
        assert not isinstance(mine, str), mine
        for key in ("gripper/joints/angle", "gripper/joints/velocity"):
            np.testing.assert_allclose(mine.values[key], obs[key], rtol=1e-4, atol=1e-3, err_msg=key)
        for missing in (None, float("nan")):
            assembler.add_joints(twin.joint_positions(), gripper_rad, 1.05, 0.05, gripper_rad_s=missing)
            reason = assembler.assemble(now_s=1.05)
            assert reason == f"joint states without {GRIPPER_VELOCITY_PART} (the policy observes it)"
    finally:
        twin.close()


def test_fit_image_crops_to_aspect_then_resizes() -> None:
    wide = np.zeros((480, 640, 3), np.uint8)
    wide[:, 80:560] = 255  # the centred square
    out = fit_image(wide, 128, 128)
    assert out.shape == (128, 128, 3) and out.min() == 255


class StateCell:
    """Publishes clock, joint states and object poses with chosen stamps; records the policy's actions."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.node = rclpy.create_node("policy_test_state_cell")

        def pub(topic):
            return self.node.create_publisher(topic.msg_type, topic.name, topic.qos.profile())

        self.clock = pub(contract.CLOCK)
        self.joints = pub(contract.JOINT_STATES)
        self.poses = pub(contract.OBJECT_POSES)
        self.actions: list = []
        topic = contract.ACTION
        self.node.create_subscription(topic.msg_type, topic.name, self.actions.append, topic.qos.profile())
        self.object_poses = placeholder_object_poses(cfg).reshape(3, 7)
        self.velocities: list[float] = [0.0] * 8  # arm joints, gripper (rad/s); [] as drivers may send

    def publish_joints(self, stamp: float) -> None:
        q = np.asarray(self.cfg.robot.nominal_posture)
        names = [*self.cfg.robot.joint_names, self.cfg.robot.gripper.joint_name]
        self.joints.publish(joint_state_msg(names, [*q, 0.4], self.velocities, time_msg(stamp)))

    def publish_poses(
        self, stamp: float, poses: np.ndarray | None = None, frame: str = contract.WORLD_FRAME
    ) -> None:
        poses = self.object_poses if poses is None else poses
        self.poses.publish(pose_array_msg(poses, time_msg(stamp), frame))

    def ticks(self, executor, start: float, count: int, pose_lag: float | None, **pose_kwargs) -> float:
        """`count` control periods of fresh joint states; object poses `pose_lag` s old (None: none)."""
        period = 1.0 / self.cfg.control.rate_hz
        now = start
        for _ in range(count):
            now += period
            self.publish_joints(now)
            if pose_lag is not None:
                self.publish_poses(now - pose_lag, **pose_kwargs)
            self.clock.publish(Clock(clock=time_msg(now)))
            spin_for(executor, 0.06)
        return now


def connected_executor(policy, cell_node, publishers) -> SingleThreadedExecutor:
    """One executor spinning the policy and the cell, spun until the policy subscribes to `publishers`."""
    executor = SingleThreadedExecutor()
    executor.add_node(policy)
    executor.add_node(cell_node)
    deadline = time.monotonic() + 10
    while any(p.get_subscription_count() == 0 for p in publishers) and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    return executor


def test_state_policy_acts_on_joint_states_and_object_poses(ros_default_context, state_checkpoint) -> None:
    overrides = ["ros.use_sim_time=true", f"policy.checkpoint={state_checkpoint}", "policy.device=cpu"]
    cfg = load_config(overrides)
    policy = PolicyNode(cfg)
    assert policy.cameras == [] and policy.object_poses
    cell = StateCell(cfg)
    executor = connected_executor(policy, cell.node, [cell.clock, cell.poses])
    try:
        max_age = cfg.policy.max_observation_age_s
        period = 1.0 / cfg.control.rate_hz

        # joint states alone: no action, the poses are missing
        now = cell.ticks(executor, T0, 5, pose_lag=None)
        assert cell.actions == [] and "no data yet from object poses" in policy._last_reason
        # malformed poses are ignored (nothing kept): two objects, a NaN, another frame
        two = cell.object_poses[:2]
        now = cell.ticks(executor, now, 2, pose_lag=0.0, poses=two)
        nan = cell.object_poses.copy()
        nan[1, 4] = np.nan
        now = cell.ticks(executor, now, 2, pose_lag=0.0, poses=nan)
        now = cell.ticks(executor, now, 2, pose_lag=0.0, frame="camera")
        assert cell.actions == [] and "no data yet from object poses" in policy._last_reason
        # stale poses: no action
        now = cell.ticks(executor, now, 5, pose_lag=max_age + 2 * period)
        assert cell.actions == [] and "objects/pose" in policy._last_reason
        # fresh joint states and poses: one action per control period
        now = cell.ticks(executor, now, 6, pose_lag=0.0)
        spin_for(executor, 0.2)
        assert 4 <= len(cell.actions) <= 7
        low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
        for msg in cell.actions:
            action = np.asarray(msg.data)
            assert action.shape == (5,) and np.all(action >= low) and np.all(action <= high)
        # the poses stop: the node may act on the last ones while they are fresh, then holds
        stale_after = int(np.ceil(max_age / period)) + 2
        now = cell.ticks(executor, now, stale_after, pose_lag=None)
        count = len(cell.actions)
        cell.ticks(executor, now, 4, pose_lag=None)
        assert len(cell.actions) == count and "stale observation: objects/pose" in policy._last_reason
    finally:
        executor.shutdown()
        policy.destroy_node()
        cell.node.destroy_node()


def test_assembler_object_poses_part() -> None:
    """``objects/pose`` is one more part: missing, malformed, stale, skewed and repeated like the others."""
    from gato_ros.twin.env import StackingTwin

    cfg = load_config(["policy.max_observation_age_s=0.15", "policy.max_observation_skew_s=0.1"])
    twin = StackingTwin(cfg, render=False)
    try:
        twin.reset(seed=5)
        truth = twin.object_poses()
        q = twin.joint_positions()
    finally:
        twin.close()
    assembler = ObservationAssembler(cfg, [], ArmKinematics(cfg.robot), object_poses=True)
    assembler.add_joints(q, 0.0, stamp_s=1.0, received_s=0.0)
    assert assembler.assemble(now_s=1.0) == "no data yet from object poses"
    for bad in (truth[:2], np.vstack([truth, truth[:1]]), np.where(np.arange(7) == 3, np.inf, truth)):
        with pytest.raises(ValueError):
            assembler.add_object_poses(bad, stamp_s=1.0, received_s=0.0)
    assert assembler.assemble(now_s=1.0) == "no data yet from object poses"  # nothing malformed was kept
    assembler.add_object_poses(truth, stamp_s=1.0, received_s=0.0)
    observation = assembler.assemble(now_s=1.0)
    assert not isinstance(observation, str), observation
    poses = observation.values["objects/pose"]
    assert poses.dtype == np.float32 and poses.shape == (21,)
    np.testing.assert_allclose(poses, truth.reshape(-1), atol=1e-6)
    assert list(observation.values) == sorted(observation.values)  # the observation's key order
    # the same poses are not acted on twice (all parts must be new) ...
    assembler.add_joints(q, 0.0, stamp_s=1.05, received_s=0.05)
    assert assembler.assemble(now_s=1.05) == "no new observation since the last action (objects/pose)"
    # ... unless a period went without action (one new part is enough), while they are fresh
    assert not isinstance(assembler.assemble(now_s=1.05, all_new=False), str)
    assembler.add_joints(q, 0.0, stamp_s=1.2, received_s=0.2)
    assert assembler.assemble(now_s=1.2, all_new=False).startswith("stale observation: objects/pose")
    # poses stamped too far from the joint state
    assembler.add_object_poses(truth, stamp_s=1.08, received_s=0.2)
    assert assembler.assemble(now_s=1.2).startswith("unsynchronized observation")
    assembler.add_object_poses(truth.reshape(-1), stamp_s=1.2, received_s=0.2)  # flat works too
    assert not isinstance(assembler.assemble(now_s=1.2), str)


def test_assembler_object_shapes_from_poses_and_ids() -> None:
    """``objects/shape`` follows from the poses part and the named objects' meshes: missing until the ids
    are known, then exactly the twin's features; unknown ids are refused and the old ones kept."""
    from gato_ros.twin.env import StackingTwin

    cfg = load_config(["twin.shape_observations=true"])
    twin = StackingTwin(cfg, render=False)
    try:
        twin.reset(seed=7)
        obs = twin.observation()
        ids = twin.object_ids
        q = twin.joint_positions()
    finally:
        twin.close()
    assembler = ObservationAssembler(cfg, [], ArmKinematics(cfg.robot), object_shapes=True)
    assert assembler.object_poses  # shapes need the poses
    assembler.add_joints(q, 0.0, stamp_s=1.0, received_s=0.0)
    assembler.add_object_poses(obs["objects/pose"], stamp_s=1.0, received_s=0.0)
    assert assembler.assemble(now_s=1.0) == "no data yet from object ids"
    with pytest.raises(KeyError):
        assembler.set_object_ids(["r3", "nope", "b2"])
    with pytest.raises(KeyError):
        assembler.set_object_ids(["r3", "s0"])
    assert assembler.assemble(now_s=1.0) == "no data yet from object ids"
    assembler.set_object_ids(ids)
    observation = assembler.assemble(now_s=1.0)
    assert not isinstance(observation, str), observation
    np.testing.assert_allclose(observation.values["objects/shape"], obs["objects/shape"], atol=1e-5)


def test_shape_policy_takes_the_object_ids_from_the_episode_status(ros_default_context, tmp_path) -> None:
    """A checkpoint that reads ``objects/shape`` holds until it knows the objects, then acts; under the twin
    the ids come with the episode status, on a real cell from ``policy.object_ids``."""
    cfg = load_config([*STATE_TRAINING, "tokenizer.observation.privileged_keys=[objects/pose,objects/shape]"])
    checkpoint = save_checkpoint(tmp_path / "random_tiny_shape", build_model(cfg), cfg)
    overrides = ["ros.use_sim_time=true", f"policy.checkpoint={checkpoint}", "policy.device=cpu"]
    fixed = PolicyNode(load_config([*overrides, "policy.object_ids=[r3,s0,b2]"]))
    try:
        assert fixed.assembler.object_ids == ("r3", "s0", "b2")
        assert fixed.assembler.shape_version == 3  # the checkpoint's own features
    finally:
        fixed.destroy_node()
    # a checkpoint from before twin.shape_version was trained on version 1 and is fed version 1
    older = OmegaConf.to_container(cfg, resolve=True)
    del older["twin"]["shape_version"]
    older = OmegaConf.create(older)
    old_checkpoint = save_checkpoint(tmp_path / "random_tiny_shape_v1", build_model(older), older)
    old = PolicyNode(
        load_config([*overrides, f"policy.checkpoint={old_checkpoint}", "policy.object_ids=[r3,s0,b2]"])
    )
    try:
        assert old.assembler.shape_version == 1
    finally:
        old.destroy_node()
    cfg = load_config(overrides)
    policy = PolicyNode(cfg)
    assert policy.object_shapes and policy.object_poses and policy.assembler.object_ids is None
    cell = StateCell(cfg)
    status = cell.node.create_publisher(
        contract.EPISODE_STATUS.msg_type, contract.EPISODE_STATUS.name, contract.EPISODE_STATUS.qos.profile()
    )
    executor = connected_executor(policy, cell.node, [cell.clock, cell.poses, status])
    try:
        now = cell.ticks(executor, T0, 4, pose_lag=0.0)
        assert cell.actions == [] and "no data yet from object ids" in policy._last_reason
        status.publish(String(data='{"episode": 0, "objects": ["r5", "g2", "b3"]}'))
        spin_for(executor, 0.1)
        assert policy.assembler.object_ids == ("r5", "g2", "b3")
        cell.ticks(executor, now, 6, pose_lag=0.0)
        spin_for(executor, 0.2)
        assert cell.actions, policy._last_reason
    finally:
        executor.shutdown()
        policy.destroy_node()
        cell.node.destroy_node()


def test_velocity_policy_holds_without_the_gripper_velocity(ros_default_context, tmp_path) -> None:
    """A checkpoint that observes ``gripper/joints/velocity`` (state_velocity_policy) holds while the joint
    states carry no finite gripper velocity (an empty field, a NaN), and acts once they do."""
    cfg = load_config(["+experiment=state_velocity_policy", "model=tiny", "model.context_length=80"])
    checkpoint = save_checkpoint(tmp_path / "random_tiny_velocity", build_model(cfg), cfg)
    overrides = ["ros.use_sim_time=true", f"policy.checkpoint={checkpoint}", "policy.device=cpu"]
    cfg = load_config([*overrides, "policy.object_ids=[r3,s0,b2]"])
    policy = PolicyNode(cfg)
    assert policy.assembler.gripper_velocity and policy.object_shapes
    cell = StateCell(cfg)
    executor = connected_executor(policy, cell.node, [cell.clock, cell.poses])
    try:
        cell.velocities = []
        now = cell.ticks(executor, T0, 4, pose_lag=0.0)
        assert cell.actions == [] and "without a finite velocity of the gripper joint" in policy._last_reason
        cell.velocities = [0.0] * 7 + [float("nan")]
        now = cell.ticks(executor, now, 3, pose_lag=0.0)
        assert cell.actions == [] and "without a finite velocity of the gripper joint" in policy._last_reason
        cell.velocities = [0.0] * 7 + [0.5]
        cell.ticks(executor, now, 6, pose_lag=0.0)
        spin_for(executor, 0.2)
        assert cell.actions, policy._last_reason
    finally:
        executor.shutdown()
        policy.destroy_node()
        cell.node.destroy_node()


def test_policy_node_fits_the_object_poses_to_its_camera_frames(ros_default_context, tmp_path) -> None:
    """``policy.object_pose_source=cameras``: the node subscribes to the policy cameras instead of
    OBJECT_POSES, holds until every object is seen, then acts on poses fitted to the frames (a real cell
    names its objects with ``policy.object_ids``)."""
    from gato_ros.twin.env import StackingTwin

    cfg = load_config([*STATE_TRAINING, "tokenizer.observation.privileged_keys=[objects/pose,objects/shape]"])
    checkpoint = save_checkpoint(tmp_path / "random_tiny_shape", build_model(cfg), cfg)
    with StackingTwin(load_config(["twin.objects=triplet", "twin.triplet=1"]), render=True) as twin:
        twin.reset(seed=2)
        frames = [twin.render(c) for c in twin.cfg.cameras.policy_cameras]
        truth, ids = twin.object_poses(), list(twin.object_ids)
    overrides = [
        "ros.use_sim_time=true", f"policy.checkpoint={checkpoint}", "policy.device=cpu",
        "policy.object_pose_source=cameras", f"policy.object_ids=[{','.join(ids)}]",
    ]  # fmt: skip
    cfg = load_config(overrides)
    policy = PolicyNode(cfg)
    assert policy.cameras == [] and policy.assembler.poses_from_cameras
    assert policy.assembler.sensor_cameras == list(cfg.cameras.policy_cameras)
    cell = StateCell(cfg)
    images = {
        c: cell.node.create_publisher(
            contract.camera_image(c).msg_type,
            contract.camera_image(c).name,
            contract.camera_image(c).qos.profile(),
        )
        for c in cfg.cameras.policy_cameras
    }
    executor = connected_executor(policy, cell.node, [cell.clock, *images.values()])
    try:
        assert cell.poses.get_subscription_count() == 0  # the object pose topic is not read
        now = cell.ticks(executor, T0, 3, pose_lag=None)
        assert cell.actions == [] and "no data yet from basket_front_left" in policy._last_reason
        period = 1.0 / cfg.control.rate_hz
        for _ in range(6):
            now += period
            cell.publish_joints(now)
            for camera, frame in zip(cfg.cameras.policy_cameras, frames, strict=True):
                images[camera].publish(image_msg(frame, time_msg(now), camera))
            cell.clock.publish(Clock(clock=time_msg(now)))
            spin_for(executor, 0.3)  # the first frame searches from scratch (~0.4 s on 2 cores)
        spin_for(executor, 1.0)
        assert cell.actions, policy._last_reason
        estimated = policy.assembler._estimator.tracks
        for track, true in zip(estimated, truth, strict=True):
            assert np.linalg.norm(track.pose[:3] - true[:3]) < 0.01
    finally:
        executor.shutdown()
        policy.destroy_node()
        cell.node.destroy_node()
