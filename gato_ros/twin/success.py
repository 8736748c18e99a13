"""The benchmark's sparse success: red stacked on blue, resting on blue alone.

All of: red and blue centres closer than `max_horizontal_distance` horizontally; red higher than blue by
more than `min_height_above`; red touches blue; red touches neither the ground, the basket floor nor the
robot. (The original code's name check misses the basket floor; this one includes it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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


class EpisodeMode(Enum):
    """How an episode ends and what counts as a success (`twin.episode.mode`)."""

    BENCHMARK = "benchmark"  # run all steps; succeed when the sparse reward holds over the final steps
    EARLY_STOP = "early_stop"  # end at once when a released stack has held (fast data collection)


@dataclass(frozen=True)
class EpisodeVerdict:
    success: bool
    done: bool
    stacked_since: int | None  # first step of the current run of steps with the sparse reward (1-based)


class EpisodeJudge:
    """Turns the per-step sparse reward into an episode's end and success, per `twin.episode`.

    - benchmark: the episode always runs `max_steps`; it succeeds when the sparse reward held at each of
      the last `final_steps` steps (1 = at the final step). A stack that slides off before the end fails.
    - early_stop: the episode ends as a success once the sparse reward has held with the gripper open for
      `hold_seconds` (a stack still in the fingers, or one about to slide off, does not count).
    A physics divergence ends an episode in either mode and is never a success.
    """

    def __init__(self, episode_cfg: DictConfig, rate_hz: float, max_steps: int) -> None:
        self.mode = EpisodeMode(str(episode_cfg.mode))
        self.max_steps = int(max_steps)
        self.final_steps = int(episode_cfg.final_steps)
        self.hold_steps = max(1, round(float(episode_cfg.hold_seconds) * float(rate_hz)))
        self.open_gripper_threshold = float(episode_cfg.open_gripper_threshold)
        if not 1 <= self.final_steps <= self.max_steps:
            raise ValueError(
                f"twin.episode.final_steps must be in 1..{self.max_steps}, got {self.final_steps}"
            )
        self.stacked_run = 0  # consecutive steps with the sparse reward
        self.released_run = 0  # ...of which the gripper was open throughout

    def reset(self) -> None:
        self.stacked_run = self.released_run = 0

    def update(self, step: int, stacked: bool, gripper: float, unstable: bool) -> EpisodeVerdict:
        """`step`: control steps taken (1-based); `gripper`: 0..255 opening (0 open)."""
        if unstable:
            self.reset()
            return EpisodeVerdict(success=False, done=True, stacked_since=None)
        self.stacked_run = self.stacked_run + 1 if stacked else 0
        released = stacked and gripper < self.open_gripper_threshold
        self.released_run = self.released_run + 1 if released else 0
        since = step - self.stacked_run + 1 if self.stacked_run else None
        timeout = step >= self.max_steps
        if self.mode is EpisodeMode.BENCHMARK:
            success = timeout and self.stacked_run >= self.final_steps
            return EpisodeVerdict(success=success, done=timeout, stacked_since=since)
        success = self.released_run >= self.hold_steps
        return EpisodeVerdict(success=success, done=success or timeout, stacked_since=since)
