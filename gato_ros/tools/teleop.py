"""`gato-ros teleop [key=value ...] [--ros-args ...]`: drive the arm from an input device.

Starts the teleop node (`gato_ros.ros.teleop_node`) in this terminal: it publishes the operator's action
on teleop/action at the control rate. The command node obeys it after a takeover (the device's takeover
input: `t` on the keyboard, Start on a gamepad; or `teleop.take_over_on_start=true`) and hands back to
the policy on the same input; either switch stops the arm and ramps in. Every action passes the command
node's safety limits, like the policy's. Run it beside a running stack (`gato-ros launch stacking ...`),
on the same ROS_DOMAIN_ID.

Devices: teleop.device=keyboard (default; this terminal), spacemouse (pyspacemouse), gamepad (evdev),
file (teleop.file=actions.npy: replays N x 5 actions, a scripted operator). A device that is missing or
not readable is one line saying how to fix it.

Examples:
  gato-ros teleop                                         # keyboard; press t to take over
  gato-ros teleop teleop.device=spacemouse teleop.take_over_on_start=true
  gato-ros teleop teleop.device=file teleop.file=demo_actions.npy teleop.take_over_on_start=true
"""

from __future__ import annotations

from typing import Any

from gato_ros.control.teleop import open_device
from gato_ros.ros.runtime import config_from_argv, run_node
from gato_ros.ros.teleop_node import TeleopNode


def main(argv: list[str]) -> int:
    argv = ["gato-ros-teleop", *argv]  # a node's command line: the program name first
    cfg = config_from_argv(argv)
    device = open_device(cfg)  # before ROS starts: a missing device is one line, not a traceback

    def build(cfg: Any, **kwargs: Any) -> TeleopNode:
        return TeleopNode(cfg, device=device, **kwargs)

    return run_node(build, argv, cfg=cfg)
