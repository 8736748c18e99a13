"""`gato-ros <tool> [hydra overrides...]`: one entry point for every user-facing tool.

Each tool lives in `gato_ros.tools.<name>` and exposes `main(argv: list[str]) -> int`; it is imported
only when asked for, so `gato-ros params` does not pay for MuJoCo or rclpy.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable

TOOLS: dict[str, str] = {
    "demo": "the scripted expert in the twin (no ROS), with a video of a camera",
    "launch": "start the ROS 2 stack as separate processes (stand-in for `ros2 launch`)",
    "collect": "record scripted-expert episodes in the twin for training (parallel, resumable)",
    "train": "train a Gato policy on recorded episodes",
    "eval": "success rates per object triplet through the ROS 2 stack in the twin (JSON, Markdown, plots)",
    "check": "quick success rates of checkpoints in lock-step twin episodes, in-process, no ROS",
    "params": "print a model config's parameter count",
    "calibrate": "write camera calibration into calibration/",
    "teleop": "drive the arm from a keyboard, SpaceMouse or gamepad through the command node (takeover)",
    "record": "record episodes from the live topics (teleop, interventions) for fine-tuning",
    "replay": "drive the cell (twin or arm) through the command node with a recorded episode's actions",
    "view": "a live view of cameras, actions and safety events for Foxglove (WebSocket)",
    "export": "episodes as a LeRobotDataset v3.0 (parquet + mp4 + meta/)",
    "import": "a LeRobotDataset v3.0 into episodes for the training mixture",
}
# Tools whose module is not named after them (`import` is a Python keyword).
TOOL_MODULES: dict[str, str] = {"import": "import_dataset"}


# The config groups each tool mainly reads: `gato-ros <tool> --help` lists their top-level keys.
TOOL_SETTINGS: dict[str, tuple[str, ...]] = {
    "demo": ("twin",),
    "launch": ("ros", "policy"),
    "collect": ("collection",),
    "train": ("training",),
    "eval": ("evaluation",),
    "check": ("check", "evaluation"),
    "params": ("model",),
    "calibrate": ("calibration",),
    "teleop": ("teleop",),
    "record": ("record",),
    "replay": ("teleop",),
    "view": ("live_view",),
    "export": ("export",),
    "import": ("export",),
}
HELP_FLAGS = {"-h", "--help"}
DEBUG_FLAG = "--debug"
DEBUG_ENV = "GATO_ROS_DEBUG"  # any non-empty value: tracebacks instead of one-line errors
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = ["usage: gato-ros <tool> [key=value ...]   (gato-ros <tool> --help: its usage and settings)"]
    lines += ["", "tools:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in TOOLS.items()]
    lines += ["", f"{DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an error instead of one line"]
    return "\n".join(lines)


def group_settings(group: str) -> list[str]:
    """The top-level ``key: default  # comment`` lines of a config group's default option."""
    from omegaconf import OmegaConf

    from gato_ros.paths import CONFIG_DIR

    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml").defaults)
    assert isinstance(defaults, list)
    option = next((d[group] for d in defaults if isinstance(d, dict) and group in d), "default")
    path = CONFIG_DIR / group / f"{option}.yaml"
    lines = []
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")) and ":" in line:
            lines.append(f"  {group}.{line}")
    return lines


def tool_help(name: str, module: object) -> str:
    """The tool's docstring, its own options (argparse tools) and the settings it mainly reads."""
    import inspect

    parts = [inspect.cleandoc(module.__doc__ or f"gato-ros {name}")]
    build_parser = getattr(module, "build_parser", None)
    if callable(build_parser):
        parts.append(build_parser().format_help().rstrip())
    settings = [line for group in TOOL_SETTINGS.get(name, ()) for line in group_settings(group)]
    if settings:
        groups = ", ".join(f"gato_ros/config/{g}/" for g in TOOL_SETTINGS[name])
        parts.append(f"main settings (override as key=value; defaults and comments from {groups}):")
        parts.append("\n".join(settings))
    parts.append(
        "any key of the config tree can be overridden the same way (`gato-ros params` loads it; "
        f"{DEBUG_FLAG} shows tracebacks)"
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or bool(os.environ.get(DEBUG_ENV))
    args = [a for a in args if a != DEBUG_FLAG]
    if not args or args[0] in HELP_FLAGS | {"help"}:
        print(usage())
        return 0
    name = args[0].replace("-", "_")
    if name not in TOOLS:
        close = difflib.get_close_matches(name, TOOLS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"gato-ros: unknown tool '{args[0]}'{hint}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        module = importlib.import_module(f"gato_ros.tools.{TOOL_MODULES.get(name, name)}")
    except ModuleNotFoundError as err:
        if err.name == f"gato_ros.tools.{TOOL_MODULES.get(name, name)}":
            print(f"gato-ros: tool '{name}' is not available in this build", file=sys.stderr)
            return EXIT_USAGE
        raise
    tool_args = args[1:]
    if any(a in HELP_FLAGS for a in tool_args):
        print(tool_help(name, module))
        return 0
    if debug:
        return int(module.main(tool_args) or 0)
    return run_tool(name, module.main, tool_args)


def run_tool(name: str, tool_main: Callable[[list[str]], int | None], tool_args: list[str]) -> int:
    """Run a tool; an error it raises becomes one line on stderr and a non-zero exit (the traceback
    with --debug): a refused config key or value, a bad checkpoint, a full disk."""
    from gato_ros.config import ConfigError

    try:
        return int(tool_main(tool_args) or 0)
    except ConfigError as err:
        print(f"gato-ros {name}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"gato-ros {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as err:
        print(f"gato-ros {name}: {one_line(err)} ({DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return EXIT_REFUSED


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (the type only where it adds something, e.g. OSError)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    kind = type(err).__name__
    if isinstance(err, ValueError | KeyError) and text:
        return text.strip("'\"") if isinstance(err, KeyError) else text
    return f"{kind}: {text}" if text else kind


if __name__ == "__main__":
    sys.exit(main())
