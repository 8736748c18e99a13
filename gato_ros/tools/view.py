"""`gato-ros view [key=value ...] [--ros-args ...]`: a live view of a running stack for Foxglove.

Starts the live view node (`gato_ros.ros.live_view_node`) beside a running stack, on the same ROS_DOMAIN_ID:
the policy cameras, the policy's and the operator's actions, the command node's commands, its state (moving,
holding, e-stop) and every change of it, and the twin's episode status, served on a Foxglove WebSocket.
Open Foxglove (desktop app or app.foxglove.dev) -> Open connection -> Foxglove WebSocket ->
ws://localhost:8765. It only listens. `live_view.enabled=true` on `gato-ros launch` starts it with the stack.

Examples:
  gato-ros view                                           # ws://127.0.0.1:8765
  gato-ros view live_view.host=0.0.0.0 live_view.image_rate_hz=10
"""

from __future__ import annotations

from gato_ros.ros.live_view_node import LiveViewNode
from gato_ros.ros.runtime import run_node


def main(argv: list[str]) -> int:
    return run_node(LiveViewNode, ["gato-ros-view", *argv])
