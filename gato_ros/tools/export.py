"""`gato-ros export --format lerobot --out DIR EPISODES_DIR [EPISODES_DIR ...] [key=value ...]`: episodes as
a LeRobotDataset v3.0 (parquet + mp4 + meta/), for LeRobot's training scripts, viewers and the Hub.

EPISODES_DIR is a dataset directory of this project (written by `gato-ros record` or `gato-ros collect`);
several are exported into one dataset, in order. The codec, file sizes and robot type come from
``export.lerobot.*``; the layout and what maps to what: gato_ros/gato/lerobot.py. DIR must be new or empty.

Example:
  gato-ros export --format lerobot --out exports/my_takes data/my_takes
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

from gato_ros.config import load_config
from gato_ros.gato.data import Episode, EpisodeDataset
from gato_ros.gato.lerobot import LeRobotSettings, export_lerobot

FORMATS = ("lerobot",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gato-ros export", add_help=False)
    parser.add_argument("--format", choices=FORMATS, default="lerobot", help="the format written (lerobot)")
    parser.add_argument("--out", required=True, type=Path, help="the new dataset's directory")
    parser.add_argument("sources", nargs="+", type=Path, help="episode directories to export")
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(arguments, hydra overrides): a ``key=value`` that is not an option's value is an override."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [a for a in argv if a not in overrides], overrides


def episodes_of(sources: list[Path], successful_only: bool) -> Iterator[Episode]:
    for source in sources:
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: no such episode directory")
        yield from EpisodeDataset(source, successful_only=successful_only)


def main(argv: list[str]) -> int:
    arguments, overrides = split_overrides(argv)
    args = build_parser().parse_args(arguments)
    cfg = load_config(overrides)
    settings = LeRobotSettings.from_config(cfg)
    episodes = episodes_of(args.sources, bool(cfg.export.lerobot.successful_only))
    first = next(episodes, None)
    if first is None:
        raise ValueError(f"no episodes in {', '.join(map(str, args.sources))}")
    started = time.monotonic()
    summary = export_lerobot(itertools.chain([first], episodes), args.out, settings)
    print(f"exported {summary.describe()} in {time.monotonic() - started:.1f} s")
    return 0
