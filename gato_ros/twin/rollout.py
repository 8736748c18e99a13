"""Run one seeded episode of a policy in the twin; shared by the demo, benchmarks and data collection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gato_ros.twin.env import StackingTwin, TwinStep

Policy = Callable[[StackingTwin, dict[str, np.ndarray]], np.ndarray]
Observer = Callable[[dict[str, np.ndarray], np.ndarray, TwinStep], None]


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    object_ids: tuple[str, str, str]
    success: bool
    steps: int
    seconds: float  # simulated
    physics_unstable: bool
    time_to_success: float | None = None  # sim s at which the successful stack first stood


def run_episode(
    twin: StackingTwin, policy: Policy, seed: int, observer: Observer | None = None
) -> EpisodeResult:
    """Reset with `seed`, then step `policy(twin, observation)` until the episode is done (per
    `twin.episode.mode`: its last step, or an early success; a divergence ends it too).

    `observer(observation, action, step)` sees every transition (the observation the action was chosen on).
    """
    observation = twin.reset(seed=seed)
    step = None
    for _ in range(twin.max_steps):
        action = np.asarray(policy(twin, observation), dtype=np.float32)
        step = twin.step(action)
        if observer is not None:
            observer(observation, action, step)
        observation = step.observation
        if step.done:
            break
    assert step is not None and twin.object_ids is not None
    return EpisodeResult(
        seed=seed,
        object_ids=twin.object_ids,
        success=step.success,
        steps=twin.step_count,
        seconds=twin.time,
        physics_unstable=bool(step.info["physics_unstable"]),
        time_to_success=step.info["stacked_since"] if step.success else None,
    )
