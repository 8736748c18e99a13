"""Copy a training checkpoint's weights and config (no optimizer state) into a shipped policy directory.

    python scripts/export_policy.py outputs/train/state_policy/checkpoints/latest policies/default

The result loads with `gato_ros.gato.checkpoint.load_policy` and is what `policy.checkpoint=<name>` finds
under policies/. Write the policy's model card (README.md: data, command, steps, eval table) beside it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from gato_ros.gato.checkpoint import CONFIG_FILE, MODEL_FILE, load_policy, resolve_checkpoint

SIZE_LIMIT_MB = 50.0  # shipped policies live in git and in every install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint directory (or `latest` link) of a training run")
    parser.add_argument("destination", help="the policy directory to (re)write, e.g. policies/default")
    args = parser.parse_args(argv)
    source = resolve_checkpoint(args.checkpoint).resolve()
    destination = Path(args.destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copyfile(source / name, destination / name)
    size_mb = sum((destination / n).stat().st_size for n in (MODEL_FILE, CONFIG_FILE)) / 1e6
    policy = load_policy(destination)  # it must load exactly as the policy node will load it
    print(f"exported {source} (step {policy.step}) to {destination}: {size_mb:.1f} MB")
    if size_mb > SIZE_LIMIT_MB:
        print(f"error: {size_mb:.1f} MB is over the {SIZE_LIMIT_MB:g} MB limit for shipped policies")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
