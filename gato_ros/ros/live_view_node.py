"""The live view: cameras, actions and safety events on a Foxglove WebSocket, for watching a run.

Optional and off by default (``live_view.enabled=true`` adds it to the launched stack; `gato-ros view` starts
it beside a running one). It listens to the contract's topics and serves them on
``ws://live_view.host:live_view.port`` (Foxglove app or web: Open connection -> Foxglove WebSocket):

- ``/<camera>/image``: each policy camera (foxglove RawImage), at most ``live_view.image_rate_hz``;
- ``/gato/action``, ``/teleop/action``: the policy's and the operator's actions, by name (vx ... gripper);
- ``/commands``: the command node's joint velocity and gripper commands;
- ``/safety/status``: the command node's state (moving, holding, e-stop latched), hold reasons, counters;
- ``/safety/events`` (foxglove Log): every change of that state, of the action source and of the e-stop, as a
  line the Log panel lists;
- ``/twin/episode``: the twin's episode status (seed, step, success) when the twin runs.

Requires ``foxglove-sdk`` (requirements-python.txt). It only listens: nothing it does reaches the arm.

    python -m gato_ros.ros.live_view_node [key=value ...] [--ros-args ...]     (or: gato-ros view)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from omegaconf import DictConfig
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, Float64MultiArray, String

from gato_ros.ros import contract
from gato_ros.ros.command_node import DIAGNOSTIC_NAME
from gato_ros.ros.messages import image_array
from gato_ros.ros.runtime import GatoNode, run_node


class LiveViewNode(GatoNode):
    SETTINGS = ("control", "live_view")

    def __init__(self, cfg: DictConfig, **kwargs: Any) -> None:
        super().__init__("live_view", cfg, **kwargs)
        try:
            import foxglove
            from foxglove.channels import LogChannel, RawImageChannel
        except ImportError as err:
            raise RuntimeError(
                "the live view needs foxglove-sdk: pip install -r requirements-python.txt"
            ) from err
        view = cfg.live_view
        self.foxglove = foxglove
        self.action_names = [str(n) for n in cfg.control.action_names]
        self.image_period_s = 1.0 / float(view.image_rate_hz) if float(view.image_rate_hz) > 0 else 0.0
        self.foxglove_context = foxglove.Context()
        self.server = foxglove.start_server(
            name="gato_ros", host=str(view.host), port=int(view.port), context=self.foxglove_context
        )
        self.port = int(self.server.port)
        cameras = [str(c) for c in (view.cameras or cfg.cameras.policy_cameras)]
        self.image_channels = {
            c: RawImageChannel(f"/{c}/image", context=self.foxglove_context) for c in cameras
        }
        self.last_image_s = dict.fromkeys(cameras, -float("inf"))
        self.json_channels = {
            name: foxglove.Channel(name, context=self.foxglove_context)
            for name in ("/gato/action", "/teleop/action", "/commands", "/safety/status", "/twin/episode")
        }
        self.events = LogChannel("/safety/events", context=self.foxglove_context)
        self.state: dict[str, str] = {}  # what the last event said, per subject
        self.counts = {"images": 0, "messages": 0, "events": 0}
        self.gripper: float | None = None
        for camera in cameras:
            self.subscription(contract.camera_image(camera), lambda msg, c=camera: self.on_image(c, msg))
        self.subscription(contract.ACTION, lambda msg: self.on_action("/gato/action", msg))
        self.subscription(contract.TELEOP_ACTION, lambda msg: self.on_action("/teleop/action", msg))
        self.subscription(contract.JOINT_VELOCITY_COMMAND, self.on_velocity_command)
        self.subscription(contract.GRIPPER_COMMAND, self.on_gripper_command)
        self.subscription(contract.DIAGNOSTICS, self.on_diagnostics)
        self.subscription(contract.ACTION_SOURCE, self.on_action_source)
        self.subscription(contract.ESTOP_STATE, self.on_estop_state)
        self.subscription(contract.EPISODE_STATUS, self.on_episode)
        host = str(view.host)
        self.get_logger().info(
            f"live view on ws://{host}:{self.port} (Foxglove: Open connection -> WebSocket)"
        )

    # -- channels ----------------------------------------------------------------------------------
    def log_json(self, channel: str, message: dict[str, Any]) -> None:
        self.json_channels[channel].log(message)
        self.counts["messages"] += 1

    def event(self, subject: str, value: str, level: str = "Info") -> None:
        """A line on /safety/events when `subject` changes (not on every repeat)."""
        if self.state.get(subject) == value:
            return
        self.state[subject] = value
        messages = self.foxglove.messages
        self.events.log(
            messages.Log(
                timestamp=messages.Timestamp.from_epoch_secs(time.time()),
                level=getattr(messages.LogLevel, level),
                message=f"{subject}: {value}",
                name=self.get_name(),
            )
        )
        self.counts["events"] += 1

    # -- callbacks -----------------------------------------------------------------------------------
    def on_image(self, camera: str, msg: Image) -> None:
        now = time.monotonic()
        if now - self.last_image_s[camera] < self.image_period_s:
            return
        self.last_image_s[camera] = now
        try:
            pixels = image_array(msg)
        except Exception as err:
            self.get_logger().warning(f"{camera}: unreadable image: {err}", throttle_duration_sec=5.0)
            return
        messages = self.foxglove.messages
        height, width = pixels.shape[:2]
        self.image_channels[camera].log(
            messages.RawImage(
                timestamp=messages.Timestamp(sec=msg.header.stamp.sec, nsec=msg.header.stamp.nanosec),
                frame_id=msg.header.frame_id,
                width=width,
                height=height,
                encoding="rgb8",
                step=3 * width,
                data=pixels.tobytes(),
            )
        )
        self.counts["images"] += 1

    def on_action(self, channel: str, msg: Float64MultiArray) -> None:
        values = [float(v) for v in msg.data]
        names = (
            self.action_names
            if len(values) == len(self.action_names)
            else [str(i) for i in range(len(values))]
        )
        self.log_json(channel, dict(zip(names, values, strict=True)))

    def on_velocity_command(self, msg: Float64MultiArray) -> None:
        self.log_json("/commands", {"joint_velocity": [float(v) for v in msg.data], "gripper": self.gripper})

    def on_gripper_command(self, msg: Float64MultiArray) -> None:
        self.gripper = float(msg.data[0]) if len(msg.data) else None

    def on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name != DIAGNOSTIC_NAME:
                continue
            values = {kv.key: kv.value for kv in status.values}
            level = status.level[0] if isinstance(status.level, bytes) else int(status.level)  # a ROS `byte`
            self.log_json("/safety/status", {"state": status.message, "level": level, **values})
            self.event("command node", status.message, {0: "Info", 1: "Warning"}.get(level, "Error"))

    def on_action_source(self, msg: String) -> None:
        self.event("action source", msg.data)

    def on_estop_state(self, msg: Bool) -> None:
        self.event("e-stop", "latched" if msg.data else "released", "Error" if msg.data else "Info")

    def on_episode(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(status, dict):
            self.log_json("/twin/episode", status)

    def close(self) -> None:
        self.server.stop()


def main(argv: list[str] | None = None) -> int:
    return run_node(LiveViewNode, argv)


if __name__ == "__main__":
    sys.exit(main())
