"""The benchmark's sparse success: red stacked on blue, resting on blue alone.

All of: red and blue centres closer than `max_horizontal_distance` horizontally; red higher than blue by
more than `min_height_above`; red touches blue; red touches neither the ground, the basket floor nor the
robot. (The original code's name check misses the basket floor; this one includes it.)
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.twin.scene import SceneIndex

RED, GREEN, BLUE = 0, 1, 2


@dataclass(frozen=True)
class StackCheck:
    """Each condition of the success test, so failures can be explained (and logged)."""

    horizontal_ok: bool
    height_ok: bool
    touches_blue: bool
    touches_support: bool
    touches_robot: bool

    @property
    def success(self) -> bool:
        return (
            self.horizontal_ok
            and self.height_ok
            and self.touches_blue
            and not self.touches_support
            and not self.touches_robot
        )


def touching_geoms(data: mujoco.MjData, geoms: frozenset[int], contact_distance: float) -> set[int]:
    """Geoms in contact (distance <= contact_distance) with any geom of `geoms`."""
    count = data.ncon
    if count == 0:
        return set()
    pairs = data.contact.geom[:count]
    close = data.contact.dist[:count] <= contact_distance
    touching: set[int] = set()
    for (a, b), near in zip(pairs.tolist(), close.tolist(), strict=True):
        if not near:
            continue
        if a in geoms:
            touching.add(b)
        elif b in geoms:
            touching.add(a)
    return touching


def check_stack(data: mujoco.MjData, index: SceneIndex, success_cfg: DictConfig) -> StackCheck:
    red_pos = data.xpos[index.object_bodies[RED]]
    blue_pos = data.xpos[index.object_bodies[BLUE]]
    touched = touching_geoms(data, index.object_geoms[RED], float(success_cfg.contact_distance))
    return StackCheck(
        horizontal_ok=bool(
            np.linalg.norm(red_pos[:2] - blue_pos[:2]) < float(success_cfg.max_horizontal_distance)
        ),
        height_ok=bool(red_pos[2] - blue_pos[2] > float(success_cfg.min_height_above)),
        touches_blue=bool(touched & index.object_geoms[BLUE]),
        touches_support=bool(touched & index.support_geoms),
        touches_robot=bool(touched & index.robot_geoms),
    )


def is_stacked(data: mujoco.MjData, index: SceneIndex, success_cfg: DictConfig) -> bool:
    return check_stack(data, index, success_cfg).success
