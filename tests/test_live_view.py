"""The live view node in-process: what the stack publishes reaches a Foxglove WebSocket client.

The client here speaks the Foxglove WebSocket protocol itself (the `websockets` library, not foxglove's
own code): serverInfo and advertise on connect, subscribe by channel id, binary message frames
(opcode 1, subscription id, timestamp, payload)."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import Bool, String
from websockets.sync.client import connect

from gato_ros.config import load_config
from gato_ros.ros import contract
from gato_ros.ros.command_node import DIAGNOSTIC_NAME
from gato_ros.ros.launcher import stack_plan
from gato_ros.ros.live_view_node import LiveViewNode
from gato_ros.ros.messages import float_array_msg, image_msg, time_msg

SUBPROTOCOL = "foxglove.sdk.v1"
MESSAGE_DATA = 1  # binary opcode of a message on a subscribed channel


def spin_until(executor: SingleThreadedExecutor, predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        executor.spin_once(timeout_sec=0.01)


def test_cameras_actions_and_safety_events_reach_a_foxglove_client(ros_context) -> None:
    cfg = load_config(["live_view.port=0", "live_view.image_rate_hz=0"])
    view = LiveViewNode(cfg, context=ros_context)
    cell = Node("test_cell", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(view)
    executor.add_node(cell)
    camera = str(cfg.cameras.policy_cameras[0])
    publishers = {
        topic.name: cell.create_publisher(topic.msg_type, topic.name, topic.qos.profile())
        for topic in (contract.camera_image(camera), contract.ACTION, contract.DIAGNOSTICS,
                      contract.ESTOP_STATE, contract.ACTION_SOURCE)
    }  # fmt: skip
    try:
        with connect(f"ws://127.0.0.1:{view.port}", subprotocols=[SUBPROTOCOL], open_timeout=30) as client:
            advertised: dict[str, int] = {}
            while not {f"/{camera}/image", "/gato/action", "/safety/status", "/safety/events"} <= set(
                advertised
            ):
                message = json.loads(client.recv(timeout=30))
                if message["op"] == "advertise":
                    advertised |= {c["topic"]: c["id"] for c in message["channels"]}
            subscriptions = dict(enumerate(advertised.values(), start=1))
            topic_of = {
                sid: next(t for t, c in advertised.items() if c == cid) for sid, cid in subscriptions.items()
            }
            wanted = [{"id": s, "channelId": c} for s, c in subscriptions.items()]
            client.send(json.dumps({"op": "subscribe", "subscriptions": wanted}))
            time.sleep(0.5)  # the subscription is applied by the server's own thread

            pixels = np.zeros((16, 24, 3), np.uint8)
            pixels[..., 0] = 200
            status = DiagnosticStatus(level=DiagnosticStatus.WARN, name=DIAGNOSTIC_NAME, message="holding",
                                      values=[KeyValue(key="hold_stale_action", value="3")])  # fmt: skip
            received: dict[str, list[bytes]] = {}

            def publish_and_receive() -> bool:
                publishers[contract.camera_image(camera).name].publish(
                    image_msg(pixels, time_msg(1.0), camera)
                )
                publishers[contract.ACTION.name].publish(float_array_msg([0.01, 0.0, -0.02, 0.1, 1.0]))
                publishers[contract.DIAGNOSTICS.name].publish(DiagnosticArray(status=[status]))
                publishers[contract.ESTOP_STATE.name].publish(Bool(data=True))
                publishers[contract.ACTION_SOURCE.name].publish(String(data="teleop"))
                spin_until(executor, lambda: view.counts["images"] > 0 and view.counts["events"] >= 3)
                try:
                    while True:
                        frame = client.recv(timeout=0.5)
                        if isinstance(frame, bytes) and frame[0] == MESSAGE_DATA:
                            sid = struct.unpack_from("<I", frame, 1)[0]
                            received.setdefault(topic_of[sid], []).append(frame[13:])
                except TimeoutError:
                    pass
                wanted = {f"/{camera}/image", "/gato/action", "/safety/status", "/safety/events"}
                return wanted <= set(received)

            deadline = time.monotonic() + 60
            while not publish_and_receive():
                assert time.monotonic() < deadline, sorted(received)
    finally:
        view.close()
        view.destroy_node()
        cell.destroy_node()

    action = json.loads(received["/gato/action"][0])
    assert action == {"vx": 0.01, "vy": 0.0, "vz": -0.02, "wz": 0.1, "gripper": 1.0}
    safety = json.loads(received["/safety/status"][0])
    assert safety["state"] == "holding" and safety["hold_stale_action"] == "3"
    events = b"".join(received["/safety/events"])
    assert (
        b"command node: holding" in events
        and b"e-stop: latched" in events
        and b"action source: teleop" in events
    )
    # the image: a foxglove RawImage (protobuf) carrying the frame's bytes as rgb8
    image = received[f"/{camera}/image"][0]
    assert b"rgb8" in image and pixels.tobytes() in image


def test_the_launched_stack_has_a_live_view_only_when_enabled() -> None:
    assert "live_view" not in [n.name for n in stack_plan(load_config(), True)]
    enabled = stack_plan(load_config(["live_view.enabled=true"]), True)
    assert enabled[-1].name == "live_view" and enabled[-1].module == "gato_ros.ros.live_view_node"
