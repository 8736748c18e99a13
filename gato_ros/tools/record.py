"""`gato-ros record [key=value ...] [--ros-args ...]`: record episodes from the live topics.

Runs the recorder node (`gato_ros.ros.record_node`) beside a running stack (`gato-ros launch stacking ...`,
same ROS_DOMAIN_ID) and, usually, `gato-ros teleop`. Every control period it records what the policy would
see (the policy's own observation assembly) with the action the arm obeyed (the policy's, or the
operator's after a takeover), into `record.out_dir` with the project's crash-safe episode writer; the
numbering continues across runs. In this terminal: n starts a take, s / f end it as success / failure
(the operator's label), d discards it (nothing is written), q quits; the same as services under
/record/. After each take the twin resets itself (`record.reset_seconds` on the real cell).

Examples:
  gato-ros record record.out_dir=data/my_teleop                        # keys in this terminal
  gato-ros record ros.use_sim_time=true record.object_shapes=true record.auto_start=true record.episodes=10
"""

from __future__ import annotations

import os
from typing import Any

from gato_ros.control.teleop import TerminalKeys
from gato_ros.ros.record_node import RecordNode
from gato_ros.ros.runtime import config_from_argv, run_node


def main(argv: list[str]) -> int:
    argv = ["gato-ros-record", *argv]  # a node's command line: the program name first
    cfg = config_from_argv(argv)
    keys = TerminalKeys(needed_for="record.keyboard") if bool(cfg.record.keyboard) and os.isatty(0) else None

    def build(cfg: Any, **kwargs: Any) -> RecordNode:
        return RecordNode(cfg, keys=keys, **kwargs)

    return run_node(build, argv, cfg=cfg)
