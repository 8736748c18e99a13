"""`gato-ros <tool> [hydra overrides...]`: one entry point for every user-facing tool.

Each tool lives in `gato_ros.tools.<name>` and exposes `main(argv: list[str]) -> int`; it is imported
only when asked for, so `gato-ros params` does not pay for MuJoCo or rclpy.
"""

from __future__ import annotations

import importlib
import sys

TOOLS: dict[str, str] = {
    "demo": "the scripted expert in the twin (no ROS), with a video of a camera",
    "launch": "start the ROS 2 stack as separate processes (stand-in for `ros2 launch`)",
    "collect": "record scripted-expert episodes in the twin for training (parallel, resumable)",
    "train": "train a Gato policy on recorded episodes",
    "eval": "success rates per object triplet through the ROS 2 stack in the twin (JSON, Markdown, plots)",
    "check": "quick success rates of checkpoints in lock-step twin episodes, in-process, no ROS",
    "params": "print a model config's parameter count",
    "calibrate": "write camera calibration into calibration/",
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: gato-ros <tool> [key=value ...]", "", "tools:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name = args[0].replace("-", "_")
    if name not in TOOLS:
        print(f"gato-ros: unknown tool '{args[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"gato_ros.tools.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"gato_ros.tools.{name}":
            print(f"gato-ros: tool '{name}' is not available in this build", file=sys.stderr)
            return 2
        raise
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
