"""The recorder on the twin, in-process: takes kept with their labels, metadata and object shapes, a
discarded take leaves no trace and gives its number back, and a new recorder continues the numbering."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool, Trigger

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset, episode_indices
from gato_ros.ros import contract
from gato_ros.ros.command_node import CommandNode
from gato_ros.ros.record_node import RecordNode
from gato_ros.ros.twin_node import TwinNode
from gato_ros.twin.shape import object_geometry, objects_shape


def spin_until(executor, predicate, timeout_s: float = 60.0, state=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {state()}"
        executor.spin_once(timeout_sec=0.01)


def call(executor, client, request):
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(request)
    spin_until(executor, future.done, 30.0)
    return future.result()


def test_takes_are_kept_labelled_discarded_without_a_trace_and_numbered_on(ros_context, tmp_path) -> None:
    out = tmp_path / "takes"
    cfg = load_config(
        [
            "ros.use_sim_time=true",
            # real time: in one process and executor a lock-step twin outpaces the recorder's subscriptions
            "ros.twin.realtime_factor=1.0",
            "ros.twin.action_source=expert",  # the twin publishes the actions (the policy's topic)
            "ros.twin.wait_for_stack_s=0",
            "safety.start_enabled=true",
            "cameras.width=64",
            "cameras.height=64",
            f"record.out_dir={out}",
            "record.object_shapes=true",  # the poses, and the shapes from them and the episode's objects
            "record.gripper_velocity=true",  # the twin's joint states carry it
            "record.reset_seconds=0",
            "record.max_seconds=0",
        ]
    )
    twin = TwinNode(cfg, context=ros_context)
    command = CommandNode(cfg, context=ros_context)
    recorder = RecordNode(cfg, context=ros_context)
    operator = Node("operator", context=ros_context)
    start = operator.create_client(Trigger, contract.RECORD_START.name)
    end = operator.create_client(SetBool, contract.RECORD_END.name)
    discard = operator.create_client(Trigger, contract.RECORD_DISCARD.name)
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (twin, command, recorder, operator):
        executor.add_node(node)
    try:
        assert call(executor, start, Trigger.Request()).success

        def state() -> str:
            take = recorder.take
            if take is None:
                return "no take"
            return f"take {take.index}: {take.steps} steps, {dict(take.dropped)}: {recorder.last_drop}"

        spin_until(executor, lambda: recorder.take is not None and recorder.take.steps >= 8, state=state)
        kept = call(executor, end, SetBool.Request(data=True))
        assert kept.success, kept.message
        # a take that is discarded: nothing written, its number given back
        assert call(executor, start, Trigger.Request()).success
        assert recorder.take is not None and recorder.take.index == 1
        spin_until(executor, lambda: recorder.take.steps >= 3, state=state)
        assert call(executor, discard, Trigger.Request()).success
        assert call(executor, start, Trigger.Request()).success
        assert recorder.take.index == 1
        spin_until(executor, lambda: recorder.take.steps >= 4, state=state)
        assert call(executor, end, SetBool.Request(data=False)).success
    finally:
        recorder.close()
        for node in (recorder, command, twin, operator):
            node.destroy_node()
        twin.close()
    assert episode_indices(out) == [0, 1]
    assert not list(out.glob(".episode_*"))  # no partial file left behind

    dataset = EpisodeDataset(out)
    first, second = dataset[0], dataset[1]
    meta = first.metadata
    assert meta["success"] is True and meta["operator_label"] == "success"
    assert meta["source"] == "twin/policy"  # the expert published on the policy's topic throughout
    assert meta["calibration"].startswith("rgb_stacking_cell.yaml:")
    assert meta["steps_by_source"] == {"policy": len(first), "teleop": 0}
    assert len(first) >= 8 and second.metadata["success"] is False
    keys = set(first.observations)
    for camera in cfg.cameras.policy_cameras:
        assert f"{camera}/pixels" in keys
        assert first.observations[f"{camera}/pixels"][0].shape == (64, 64, 3)
    assert {"objects/pose", "sawyer/joints/angle", "sawyer/pinch/pose", "gripper/joints/angle"} <= keys
    speed = first.observations["gripper/joints/velocity"]
    assert speed.shape == (len(first), 1) and np.all(np.isfinite(speed))
    # the shapes: those of the twin's objects in the recorded poses, the objects named in the metadata
    assert "objects/shape" in keys and meta["object_ids"] == meta["twin_end"]["objects"]
    geometries = tuple(object_geometry(i) for i in meta["object_ids"])
    for step in (0, len(first) - 1):
        expected = objects_shape(geometries, first.observations["objects/pose"][step])
        np.testing.assert_allclose(first.observations["objects/shape"][step], expected, atol=1e-6)
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    assert np.all(first.action >= low - 1e-6) and np.all(first.action <= high + 1e-6)
    assert np.all(np.diff(first.timestamp) > 0)  # one step per period, in order

    # the raw logs: every topic of the contract as received, read back by an independent reader (the mcap
    # library's, decoding ROS 2 CDR with the schemas in the file itself)
    assert sorted(p.name for p in out.glob("*.mcap")) == ["episode_000000.mcap", "episode_000001.mcap"]
    assert not list(out.glob("*.active"))  # the discarded take's log is gone with it
    raw_log = first.metadata["raw_log"]
    assert raw_log["file"] == "episode_000000.mcap" and raw_log["messages"]["/joint_states"] > 0
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(out / "episode_000000.mcap", "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert summary is not None  # a finished file: summary and index
        topics = {c.topic for c in summary.channels.values()}
        assert {"/joint_states", "/gato/action", "/joint_velocity_controller/commands", "/clock"} <= topics
        decoded = Counter()
        for _schema, channel, _message, ros_msg in reader.iter_decoded_messages(
            topics=["/joint_states", "/gato/action", "/cameras/basket_front_left/image_raw"]
        ):
            decoded[channel.topic] += 1
            if channel.topic == "/joint_states":
                assert list(ros_msg.name[:7]) == list(cfg.robot.joint_names)
            elif channel.topic == "/gato/action":
                assert len(ros_msg.data) == 5
            else:
                assert (ros_msg.height, ros_msg.width, ros_msg.encoding) == (64, 64, "rgb8")
    assert decoded["/joint_states"] == raw_log["messages"]["/joint_states"]
    assert decoded["/cameras/basket_front_left/image_raw"] > 0

    # a new recorder on the same directory continues the numbering
    again = RecordNode(cfg, context=ros_context)
    try:
        assert again.writer.next_index == 2
    finally:
        again.close()
        again.destroy_node()


def test_on_the_twin_a_take_can_end_with_the_twins_episode_and_its_outcome(ros_context, tmp_path) -> None:
    """record.end_on_twin_outcome: unattended collection. A status still showing the previous, finished
    episode does not end the new take; the end of the episode the take saw running does, with its label."""
    import json

    from std_msgs.msg import String

    cfg = load_config([f"record.out_dir={tmp_path / 'takes'}", "record.end_on_twin_outcome=true",
                       "record.keyboard=false", "record.mcap=false"])  # fmt: skip
    recorder = RecordNode(cfg, context=ros_context)
    twin = Node("twin_status", context=ros_context)
    status = twin.create_publisher(
        String, contract.EPISODE_STATUS.name, contract.EPISODE_STATUS.qos.profile()
    )
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(recorder)
    executor.add_node(twin)
    ended: list[bool] = []
    recorder.end_take = lambda success: ended.append(success) or ""  # the label it would be kept with

    def send(**fields) -> None:
        received = dict(recorder.twin_status or {})
        status.publish(String(data=json.dumps(fields)))
        spin_until(executor, lambda: (recorder.twin_status or {}) != received or fields == received)

    try:
        assert "recording" in recorder.start_take()
        send(episode=3, done=True, success=True)  # the previous episode, finished before the reset
        assert not ended and recorder.take is not None
        send(episode=4, done=False, success=False)
        send(episode=4, done=True, success=True)
        assert ended == [True]
    finally:
        recorder.close()
        recorder.destroy_node()
        twin.destroy_node()


@pytest.mark.slow
def test_a_killed_recorder_loses_only_its_take_in_progress_and_resumes(tmp_path) -> None:
    """SIGKILL mid-take: every finished take stays readable, the killed take's raw log keeps what was
    flushed (completed into episode_N.interrupted.mcap on the next start), and the numbering goes on."""
    import os
    import signal
    import subprocess
    import sys

    from mcap.reader import make_reader

    from gato_ros.ros.launcher import (
        NodeProcesses,
        isolated_domain_id,
        launch_overrides,
        ros_domain,
        stack_plan,
    )

    out = tmp_path / "takes"
    stack = launch_overrides(True, None, None, ["ros.twin.action_source=expert", "cameras.width=64",
                                                "cameras.height=64"])  # fmt: skip
    cfg = load_config(stack)
    recorder = [
        sys.executable, "-m", "gato_ros.ros.record_node", *stack, f"record.out_dir={out}",
        "record.auto_start=true", "record.reset_seconds=0", "record.max_seconds=6", "record.keyboard=false",
    ]  # fmt: skip

    def wait_for(predicate, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    with ros_domain(isolated_domain_id()):
        processes = NodeProcesses(env=dict(os.environ))
        for spec in stack_plan(cfg, True, stack):
            processes.start(spec)
        try:
            first = subprocess.Popen(
                recorder, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

            import shutil

            from gato_ros.ros.mcap_log import recover

            def mid_take() -> bool:
                """Two takes are on disk and the next one (6 sim s long) already holds messages that a
                recovery would keep: its raw log was flushed (every 1 sim s), well before its end. Judged by
                the file, not by wall time: a loaded machine runs the twin slower than real time. The take
                is long so that it cannot end between this look (a copy and a recovery: slow under load)
                and the kill: the next take's log would not exist yet."""
                if not out.exists():
                    return False
                finished = episode_indices(out)
                active = list(out.glob("*.mcap.active"))
                name = f"episode_{len(finished):06d}.mcap.active"
                if len(finished) < 2 or [p.name for p in active] != [name]:
                    return False
                probe = tmp_path / "probe.mcap.active"
                try:
                    shutil.copyfile(active[0], probe)  # recover() consumes its source
                    return recover(probe, tmp_path / "probe.mcap") > 0
                except Exception:  # the take just ended, or the flush is being written: look again
                    return False

            wait_for(mid_take)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            finished = episode_indices(out)
            active = sorted(out.glob("*.mcap.active"))
            assert len(active) == 1 and active[0].name == f"episode_{len(finished):06d}.mcap.active"
            dataset = EpisodeDataset(out)
            assert all(len(dataset[i]) > 0 for i in range(len(dataset)))  # finished takes: whole, readable
            try:  # the recorder logs to stderr: on a failure, its last lines say what it was doing
                again = subprocess.run([*recorder, "record.episodes=1"], env=dict(os.environ), timeout=120,
                                       capture_output=True, text=True)  # fmt: skip
            except subprocess.TimeoutExpired as err:
                tail = (
                    (err.stderr or b"").decode(errors="replace")
                    if isinstance(err.stderr, bytes)
                    else err.stderr
                )
                pytest.fail(f"the second recorder did not finish its take in 120 s:\n{(tail or '')[-4000:]}")
            assert again.returncode == 0, again.stderr[-4000:]
        finally:
            processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)
    # the numbering went on where the killed take was
    assert episode_indices(out) == [*finished, len(finished)]
    interrupted = out / f"episode_{len(finished):06d}.interrupted.mcap"
    assert interrupted.exists() and not list(out.glob("*.active"))
    with open(interrupted, "rb") as stream:
        messages = sum(1 for _ in make_reader(stream).iter_messages())
    assert messages > 0


def test_a_take_whose_stamps_go_back_is_discarded_and_the_tick_goes_on(ros_context, tmp_path) -> None:
    """A restarted twin or driver sends stamps from before the take's last step: the recorder discards the
    take with an error line and keeps sampling (the tick that flushed the step must not touch the take)."""
    from types import SimpleNamespace

    cfg = load_config(
        [
            "ros.use_sim_time=true",
            f"record.out_dir={tmp_path / 'takes'}",
            "record.mcap=false",
            "record.reset_seconds=0",
        ]
    )
    recorder = RecordNode(cfg, context=ros_context)
    try:
        assert recorder.start_take() == "recording take 0"

        def pending(stamp_s: float) -> None:
            observation = SimpleNamespace(
                values={"sawyer/joints/angle": np.zeros(7, np.float32)},
                newest_stamp_s=stamp_s,
                oldest_stamp_s=stamp_s,
            )
            recorder.pending = (observation, time.monotonic())
            recorder.actions[recorder.source] = (np.zeros(5, np.float32), time.monotonic())

        pending(10.0)
        recorder.on_tick()  # flushes the step stamped 10 s; nothing new to sample
        assert recorder.take is not None and recorder.take.steps == 1
        pending(5.0)  # the clock went back
        recorder.on_tick()
        assert recorder.take is None and recorder.pending is None
        assert episode_indices(tmp_path / "takes") == []  # nothing written
        recorder.on_tick()  # no take: the tick waits for the next one
        assert recorder.start_take() == "recording take 0"  # the number is given back
    finally:
        recorder.close()
        recorder.destroy_node()
