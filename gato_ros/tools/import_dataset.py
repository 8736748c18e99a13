"""`gato-ros import --format lerobot --out EPISODES_DIR LEROBOT_DIR [key=value ...]`: a LeRobotDataset v3.0
into this project's episode format, ready for a training data mixture.

The episodes keep the metadata this project exported with them; a foreign dataset's episodes are tagged
``source=export.import_source`` and its features become observation keys (``observation.images.X`` ->
``X/pixels``, ``observation.a.b`` -> ``a/b``; the policy's observation spec must name them). The tool
prints the override that adds the result to the mixture. EPISODES_DIR continues its numbering if it exists.

Example:
  gato-ros import --format lerobot --out data/from_lerobot exports/my_takes
  gato-ros train +experiment=finetune '+training.data.mixture.from_lerobot={path: /abs/dir, weight: 1}'
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeWriter
from gato_ros.gato.lerobot import read_info, read_lerobot
from gato_ros.tools.export import FORMATS, split_overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gato-ros import", add_help=False)
    parser.add_argument("--format", choices=FORMATS, default="lerobot", help="the format read (lerobot)")
    parser.add_argument("--out", required=True, type=Path, help="the episode directory written")
    parser.add_argument("source", type=Path, help="the dataset's root (holds meta/info.json)")
    return parser


def main(argv: list[str]) -> int:
    arguments, overrides = split_overrides(argv)
    args = build_parser().parse_args(arguments)
    cfg = load_config(overrides)
    info = read_info(args.source)
    started = time.monotonic()
    count = steps = 0
    with EpisodeWriter(
        args.out, control_rate_hz=float(info["fps"]), source=str(cfg.export.import_source), clock="lerobot"
    ) as writer:
        for episode in read_lerobot(args.source):
            metadata = {k: v for k, v in episode.metadata.items() if k not in ("task", "success")}
            metadata["imported_from"] = str(args.source)
            writer.begin_episode(task=episode.task, **metadata)
            for t in range(len(episode)):
                writer.add_step(
                    episode.observation(t),
                    episode.action[t],
                    reward=float(episode.reward[t]),
                    success=bool(episode.success[t]),
                    timestamp=float(episode.timestamp[t]),
                )
            writer.end_episode(success=episode.succeeded)
            count, steps = count + 1, steps + len(episode)
    out = args.out.resolve()
    print(f"imported {count} episodes, {steps} steps from {args.source} into {out} "
          f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    print(f"add it to the training mixture: '+training.data.mixture.{out.name}={{path: {out}, weight: 0.3}}'")
    return 0
