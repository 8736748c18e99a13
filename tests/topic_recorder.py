"""A probe as a process of its own: records the stack's contract topics as JSON lines.

The two-host test runs it inside the cell's network namespace (a test process cannot join one), so it
hears exactly what the command node hears. Every line: the topic, the newest /clock (sim s) when the
message arrived, and the message's payload. Stops on SIGINT or SIGTERM.

    python tests/topic_recorder.py OUT.jsonl
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import rclpy
from rclpy.signals import SignalHandlerOptions

from gato_ros.ros import contract

TOPICS = (
    contract.CLOCK,
    contract.ACTION,
    contract.JOINT_VELOCITY_COMMAND,
    contract.GRIPPER_COMMAND,
    contract.DIAGNOSTICS,
)


def payload(topic: contract.Topic, msg: Any) -> dict[str, Any]:
    if topic is contract.CLOCK:
        return {"clock": contract.stamp_to_seconds(msg.clock)}
    if topic is contract.DIAGNOSTICS:
        return {"values": {kv.key: kv.value for status in msg.status for kv in status.values}}
    return {"data": [float(x) for x in msg.data]}


def main(path: str) -> int:
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("topic_recorder")
    state = {"clock": 0.0, "running": True}
    with open(path, "w", buffering=1) as out:

        def on(topic: contract.Topic):
            def callback(msg: Any) -> None:
                data = payload(topic, msg)
                if topic is contract.CLOCK:
                    state["clock"] = data["clock"]
                    return
                out.write(json.dumps({"topic": topic.name, "clock": state["clock"], **data}) + "\n")

            return callback

        for topic in TOPICS:
            node.create_subscription(topic.msg_type, topic.name, on(topic), topic.qos.profile())

        def stop(*_: Any) -> None:
            state["running"] = False

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        out.write(json.dumps({"topic": "recorder", "clock": 0.0}) + "\n")  # up and subscribed
        while state["running"]:
            rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
