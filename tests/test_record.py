"""The recorder on the twin, in-process: takes kept with their labels and metadata, a discarded take leaves
no trace and gives its number back, and a new recorder continues the numbering."""

from __future__ import annotations

import time

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_srvs.srv import SetBool, Trigger

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset, episode_indices
from gato_ros.ros import contract
from gato_ros.ros.command_node import CommandNode
from gato_ros.ros.record_node import RecordNode
from gato_ros.ros.twin_node import TwinNode


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
            "record.object_poses=true",
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
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    assert np.all(first.action >= low - 1e-6) and np.all(first.action <= high + 1e-6)
    assert np.all(np.diff(first.timestamp) > 0)  # one step per period, in order

    # a new recorder on the same directory continues the numbering
    again = RecordNode(cfg, context=ros_context)
    try:
        assert again.writer.next_index == 2
    finally:
        again.close()
        again.destroy_node()
