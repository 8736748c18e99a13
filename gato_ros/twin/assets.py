"""The RGB objects: which meshes the twin uses, read in place from the dm-robotics-manipulation wheel.

Object ids follow the dataset's naming (the file-name prefix, e.g. `r3` in `r3_sds4_shr75_...stl`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from gato_ros.paths import installed_package_dir

COLORS = ("red", "green", "blue")
OBJECT_SETS = ("test_triplets", "train", "heldout")


@cache
def rgb_meshes_dir() -> Path:
    root = installed_package_dir("dm_robotics.manipulation", "the RGB objects")
    return root / "props/rgb_objects/assets/rgb_v1.3/meshes"


@cache
def object_meshes(object_set: str) -> dict[str, Path]:
    """Object id -> STL path for one of OBJECT_SETS."""
    if object_set not in OBJECT_SETS:
        raise ValueError(f"unknown object set {object_set!r}; expected one of {OBJECT_SETS}")
    return {path.name.split("_")[0]: path for path in sorted((rgb_meshes_dir() / object_set).glob("*.stl"))}


def mesh_path(object_id: str) -> Path:
    for object_set in OBJECT_SETS:
        path = object_meshes(object_set).get(object_id)
        if path is not None:
            return path
    raise KeyError(f"no RGB object mesh named {object_id!r}")


def select_objects(twin_cfg: DictConfig, rng: np.random.Generator) -> tuple[str, str, str]:
    """(red, green, blue) object ids for one episode: a fixed test triplet, or a draw from a distribution.

    `train`/`heldout`: three distinct objects drawn uniformly from that set, one per colour.
    """
    mode = str(twin_cfg.objects)
    if mode == "triplet":
        key = str(twin_cfg.triplet)
        if key not in twin_cfg.triplets:
            raise ValueError(f"twin.triplet={key} is not one of {list(twin_cfg.triplets)}")
        red, green, blue = (str(name) for name in twin_cfg.triplets[key])
        return red, green, blue
    if mode in ("train", "heldout"):
        ids = sorted(object_meshes(mode))
        red, green, blue = (str(name) for name in rng.choice(ids, size=3, replace=False))
        return red, green, blue
    raise ValueError(f"twin.objects must be triplet, train or heldout, got {mode!r}")
