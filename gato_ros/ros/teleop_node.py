"""The teleop node: an operator's input device -> TELEOP_ACTION at the control rate.

It polls the device (`gato_ros.control.teleop`) every control period and publishes the mapped action,
zero while the dead-man is released. The command node obeys these actions only after a takeover
(TAKEOVER_SERVICE): the device's takeover input (``t``, a gamepad's Start) toggles it, and
``teleop.take_over_on_start`` asks for control as soon as the command node answers. The arm is only ever
moved by the command node, inside every safety limit. On exit it publishes a zero action and, if it had
taken over, hands control back to the policy.

    python -m gato_ros.ros.teleop_node [key=value ...] [--ros-args ...]     (or: gato-ros teleop)
"""

from __future__ import annotations

import sys
import time
from typing import Any

from omegaconf import DictConfig
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool

from gato_ros.control.teleop import (
    KEYBOARD_HELP,
    TAKEOVER,
    FileDevice,
    InputDevice,
    KeyboardDevice,
    TeleopMapper,
    open_device,
)
from gato_ros.ros import contract
from gato_ros.ros.runtime import GatoNode, run_node


class TeleopNode(GatoNode):
    SETTINGS = ("control", "teleop")

    def __init__(self, cfg: DictConfig, device: InputDevice | None = None, **kwargs: Any) -> None:
        super().__init__("teleop_node", cfg, **kwargs)
        self.device = device if device is not None else open_device(cfg)
        self.mapper = TeleopMapper(cfg)
        self.action_pub = self.publisher(contract.TELEOP_ACTION)
        self.takeover_client = self.client(contract.TAKEOVER_SERVICE)
        self.subscription(contract.ACTION_SOURCE, self.on_action_source)
        self.source: str | None = None  # what the command node obeys, as it last said
        self.want_takeover = bool(cfg.teleop.take_over_on_start)
        self.exit_when_done = bool(cfg.teleop.exit_when_done)
        self.pending: Any = None  # the takeover request in flight
        self.timer = self.create_timer(1.0 / float(cfg.control.rate_hz), self.on_tick)
        name = type(self.device).__name__
        rate = float(cfg.control.rate_hz)
        self.get_logger().info(f"teleop from {name} at {rate:g} Hz on {contract.TELEOP_ACTION.name}")
        if isinstance(self.device, KeyboardDevice):
            self.get_logger().info(KEYBOARD_HELP)

    def on_action_source(self, msg: String) -> None:
        if msg.data != self.source:
            self.get_logger().info(f"the command node obeys: {msg.data}")
        self.source = msg.data

    def request_takeover(self, takeover: bool) -> None:
        if self.pending is not None and not self.pending.done():
            return
        if not self.takeover_client.service_is_ready():
            self.get_logger().warning(
                f"{contract.TAKEOVER_SERVICE.name} is not available: is the command node running?",
                throttle_duration_sec=2.0,
            )
            return
        self.pending = self.takeover_client.call_async(SetBool.Request(data=takeover))
        self.pending.add_done_callback(self._on_takeover_reply)

    def _on_takeover_reply(self, future: Any) -> None:
        try:
            reply = future.result()
            self.get_logger().info(f"takeover: {reply.message}")
        except Exception as err:
            self.get_logger().warning(f"takeover request failed: {err!r}")

    def on_tick(self) -> None:
        operator = self.device.poll(time.monotonic())  # key presses are wall-clock events
        if TAKEOVER in operator.events:
            self.request_takeover(self.source != "teleop")
        if self.want_takeover and self.takeover_client.service_is_ready():
            self.want_takeover = False
            self.request_takeover(True)
        self.action_pub.publish(Float64MultiArray(data=self.mapper.action(operator).tolist()))
        if isinstance(self.device, FileDevice) and self.device.finished and self.exit_when_done:
            if self.source == "teleop":  # hand back first; exit once the command node says it did
                self.request_takeover(False)
                return
            self.get_logger().info(f"replayed {len(self.device.actions)} actions ({self.device.name})")
            self.request_exit(0)

    def close(self) -> None:
        """A zero action, control handed back to the policy if the operator had it, the device released."""
        try:
            self.action_pub.publish(Float64MultiArray(data=[0.0] * 5))
            if self.source == "teleop" and self.takeover_client.service_is_ready():
                self.takeover_client.call_async(SetBool.Request(data=False))
        finally:
            self.device.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(TeleopNode, argv)


if __name__ == "__main__":
    sys.exit(main())
