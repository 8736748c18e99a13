"""Add `objects/shape` (gato_ros/twin/shape.py) to recorded state episodes, from their object ids and poses.

    python scripts/add_shape_features.py SRC_DIR DST_DIR [--workers 2] [--object-ids r3,s0,b2] \
        [--shape-version 3]

Episodes recorded before the twin published shapes hold `objects/pose` and the episode's object ids
(`gato-ros collect`: `object_ids`; a take recorded on the twin: its `twin_start` status); the features are a
function of those, so a dataset gains them without collecting again. `--object-ids` names the objects of
takes that do not say (a real cell's, with the triplet it had loaded). Writes every episode
of SRC_DIR (and its collection.jsonl) to DST_DIR with the new key; resumable: files already in DST_DIR are
kept. SRC_DIR is never changed. Episodes that hold the key already get it rewritten in `--shape-version` (the
current one by default): how a dataset follows a new version of the features.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gato_ros.gato.data import OBS_PREFIX, episode_filename, episode_indices
from gato_ros.twin.shape import SHAPE_KEY, SHAPE_VERSION, SHAPE_VERSIONS, shape_metadata, shape_track


def episode_object_ids(metadata: dict) -> list[str] | None:
    """The red, green, blue object ids an episode's metadata names (collection or twin take), if any."""
    twin_start = metadata.get("twin_start")
    return metadata.get("object_ids") or (twin_start.get("objects") if isinstance(twin_start, dict) else None)


def add_shapes(
    source: Path, target: Path, object_ids: tuple[str, ...] | None = None, version: int = SHAPE_VERSION
) -> int:
    """Write one episode with its shape track (replacing one it had); returns its number of steps."""
    with np.load(source, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    metadata = json.loads(str(arrays["metadata"]))
    poses = arrays.get(f"{OBS_PREFIX}objects/pose")
    ids = episode_object_ids(metadata) or object_ids
    if poses is None or not ids:
        raise ValueError(f"{source}: no objects/pose or object ids to compute shapes from (--object-ids)")
    arrays[f"{OBS_PREFIX}{SHAPE_KEY}"] = shape_track(tuple(ids), poses, version)
    metadata.update(shape_metadata(version))
    metadata["object_ids"] = list(ids)
    metadata["observation_keys"] = sorted({*metadata.get("observation_keys", []), SHAPE_KEY})
    arrays["metadata"] = np.asarray(json.dumps(metadata))
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(partial, target)
    return len(arrays["action"])


def _job(job: tuple[Path, Path, tuple[str, ...] | None, int]) -> int:
    return add_shapes(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--object-ids", help="red,green,blue ids for episodes that do not name theirs")
    parser.add_argument(
        "--shape-version",
        type=int,
        default=SHAPE_VERSION,
        choices=SHAPE_VERSIONS,
        help="the features' version (twin.shape_version; gato_ros/twin/shape.py)",
    )
    args = parser.parse_args(argv)
    fallback = tuple(args.object_ids.split(",")) if args.object_ids else None
    args.target.mkdir(parents=True, exist_ok=True)
    log = args.source / "collection.jsonl"
    if log.exists():
        shutil.copyfile(log, args.target / log.name)
    jobs = [
        (args.source / episode_filename(i), args.target / episode_filename(i), fallback, args.shape_version)
        for i in episode_indices(args.source)
        if not (args.target / episode_filename(i)).exists()
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        steps = sum(pool.map(_job, jobs, chunksize=8))
    print(f"{args.target}: {len(jobs)} episodes written ({steps} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
