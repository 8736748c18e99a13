"""`gato-ros replay EPISODE [key=value ...] [--ros-args ...]`: drive the cell with a recorded episode.

Takes over the command node (like `gato-ros teleop`) and sends the episode's actions, one per control
period, through it: inside every safety limit, on the twin or the real arm; then hands control back to
the policy and exits. EPISODE is an episode file (episode_N.npz, written by `gato-ros record` or `gato-ros
collect`). To check data on the twin, start the stack on the episode's seed first: the tool prints it
(the twin's episodes are seeded; `gato-ros launch stacking sim:=true seed=S twin.triplet=T`).

Example:
  gato-ros replay data/my_takes/episode_000003.npz
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gato_ros.control.teleop import FileDevice
from gato_ros.gato.data import load_episode
from gato_ros.ros.runtime import config_from_argv, run_node
from gato_ros.ros.teleop_node import TeleopNode


def episode_start(metadata: dict[str, Any]) -> str:
    """Where the episode started, as far as its metadata says (seed, triplet, objects)."""
    start = metadata.get("twin_start") or metadata
    parts = [f"{key}={start[key]}" for key in ("seed", "triplet", "objects") if start.get(key) is not None]
    return ", ".join(parts) or "not recorded"


def main(argv: list[str]) -> int:
    if not argv or "=" in argv[0] or argv[0].startswith("-"):
        print("usage: gato-ros replay EPISODE.npz [key=value ...]", file=sys.stderr)
        return 2
    path, rest = Path(argv[0]), ["gato-ros-replay", *argv[1:]]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such episode file")
    episode = load_episode(path)
    device = FileDevice(episode.action, name=path.name)
    cfg = config_from_argv([*rest, "teleop.take_over_on_start=true", "teleop.exit_when_done=true"])
    start = episode_start(episode.metadata)
    print(f"replaying {len(device.actions)} actions of {path.name} (recorded at {start})")

    def build(cfg: Any, **kwargs: Any) -> TeleopNode:
        return TeleopNode(cfg, device=device, **kwargs)

    return run_node(build, rest, cfg=cfg)
