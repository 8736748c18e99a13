"""Why an episode failed, read off the scripted expert's stages: the expert's own episodes
(`benchmarks/twin.py --explain`) and a policy's, with the expert following every state as a shadow
(`gato-ros check check.explain=true`). The feedback expert's stage is a function of the state, so the same
reading works whoever drives."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from gato_ros.twin.expert import Stage

# Stage names as `expert.stage.name` gives them (from the enum: a renamed stage fails here, not silently).
HOLDING_STAGES = tuple(s.name for s in (Stage.CLOSE, Stage.LIFT, Stage.CARRY, Stage.LOWER))  # red held
PLACED_STAGES = tuple(s.name for s in (Stage.RELEASE, Stage.RETREAT, Stage.DONE))
RETRY_STAGES = tuple(
    s.name
    for s in (
        Stage.RECOVER,
        Stage.APPROACH,
        Stage.DESCEND,
        Stage.TIP_APPROACH,
        Stage.TIP_DESCEND,
        Stage.TIP_PUSH,
    )
)


def stage_runs(stages: Iterable[str]) -> list[tuple[str, int]]:
    """Consecutive equal stages collapsed into (stage, steps)."""
    runs: list[tuple[str, int]] = []
    for stage in stages:
        if runs and runs[-1][0] == stage:
            runs[-1] = (stage, runs[-1][1] + 1)
        else:
            runs.append((stage, 1))
    return runs


def first_setback(runs: Sequence[tuple[str, int]]) -> str:
    """Why a failed episode failed, as far as the stage sequence shows: the first time the expert went back
    to grasping red after holding it (lost it) or after releasing it (the stack came apart), else the stage
    it was still in when the episode ended."""
    closed = False  # the fingers closed on red since the last retry (a brief LIFT after a tip push is not)
    for (stage, _), (following, _) in itertools.pairwise(runs):
        closed = closed or stage == Stage.CLOSE.name
        if following in RETRY_STAGES and stage in HOLDING_STAGES and closed:
            return f"lost red after {stage}"
        if following in RETRY_STAGES and stage in PLACED_STAGES:
            return "stack came apart after the release"
        closed = closed and following not in RETRY_STAGES
    return f"time ran out in {runs[-1][0]}" if runs else "no steps"


def format_runs(runs: Sequence[tuple[str, int]]) -> str:
    return " ".join(f"{stage}:{steps}" for stage, steps in runs)


@dataclass(frozen=True)
class EpisodeExplanation:
    """One episode seen through the shadow expert: its stage at every step and how far the executed
    actions were from its labels (mean |action - label| per action dimension, in action units)."""

    seed: int
    success: bool
    runs: list[tuple[str, int]]
    action_error: list[float]

    @classmethod
    def from_trace(
        cls, seed: int, success: bool, stages: Sequence[str], actions: np.ndarray, labels: np.ndarray
    ) -> EpisodeExplanation:
        error = np.abs(np.asarray(actions, float) - np.asarray(labels, float))
        mean = error.mean(axis=0) if len(error) else []
        return cls(seed, success, stage_runs(stages), [round(float(e), 4) for e in mean])

    @property
    def setback(self) -> str:
        return first_setback(self.runs)

    def record(self) -> dict:
        return {
            "seed": self.seed,
            "success": self.success,
            "setback": None if self.success else self.setback,
            "stage_runs": format_runs(self.runs),
            "action_error": self.action_error,
        }
