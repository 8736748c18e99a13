"""Which episode a message of the stack belongs to (ROS-free: it sees decoded messages only).

One tracker per job (one stack launch). The twin publishes EPISODE_STATUS on every tick; the policy node
publishes POLICY_LATENCY after each action, and the command node its cumulative clamp and hold counters
on DIAGNOSTICS. Attribution:

- An episode starts at its *last* status at step 0: before the first episode the twin holds the world
  still (status repeats at step 0) until the stack is up, and the policy's answers to those held
  observations are startup, not the episode. Latency samples that arrive while the status is at step 0
  are kept aside and count only if the next status is step 1 of the same episode (they answered the
  observation the episode started from); a newer step-0 status discards them.
- It ends at its first status with ``done``; samples after that are dropped. The twin (run without
  auto-reset) holds the world and repeats the done status until the next episode is asked for, so a
  lost message does not lose the outcome.
- Safety counters are cumulative and stamped with the command node's clock (the twin's sim clock). Every
  status carries that clock (``clock``) and the episode's ``step``; while the episode steps, clock -
  step x period is its start on the clock, so the start is known from any status of the episode (a
  monitor that joined late included), and its end is start + the done status's step x period (a repeated
  done status carries a later clock; the status's ``sim_time`` restarts when MuJoCo resets a diverged
  simulation, so durations are counted in steps). An episode's interventions are the counters at its
  end minus those at its start, each the newest diagnostics stamped at or before that clock. A job
  waits for diagnostics stamped past its last episode's end (`settled`) before it stops the stack.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gato_ros.safety.limits import Reason

CLOCK_TOLERANCE_S = 1e-6  # stamps are integer nanoseconds; float slack when comparing them to a status clock
NOT_A_CLAMP = frozenset({Reason.RAMP_IN})  # the ramp-in after a hold is the normal start of motion


def safety_counters(values: Mapping[str, str]) -> dict[str, int]:
    """The clamp and hold reason counters of one diagnostics status (other keys are state, not counts)."""
    counters: dict[str, int] = {}
    for reason in Reason:
        text = values.get(reason.value)
        if text is None:
            continue
        try:
            counters[reason.value] = int(text)
        except ValueError:
            continue
    return counters


def interventions(delta: Mapping[str, int]) -> tuple[int, int]:
    """(clamps, holds) of a counter difference: reason counts per command-node tick, as on /diagnostics."""
    clamps = holds = 0
    for key, count in delta.items():
        reason = Reason(key)
        if reason.is_hold:
            holds += count
        elif reason not in NOT_A_CLAMP:
            clamps += count
    return clamps, holds


@dataclass
class EpisodeObservation:
    """One finished episode as a job saw it."""

    episode: int
    seed: int
    objects: list[str]
    triplet: int | None
    success: bool
    steps: int
    sim_time: float  # steps x control period (simulated seconds)
    time_limit: bool
    physics_unstable: bool
    start_clock: float | None
    end_clock: float | None
    wall_s: float
    start_heard: bool  # a status at the episode's start arrived (else its latency samples are partial)
    latencies_s: list[float] = field(default_factory=list)
    safety: dict[str, int] | None = None
    # sim s at which the stack that made the episode a success was first standing (time to success)
    stacked_since: float | None = None  # per-reason counter differences; None when not measurable
    # lock-step ticks that came on the twin's timeout, not on the stack's answer (a late stack)
    lockstep_timeouts: int = 0


@dataclass
class _Current:
    episode: int
    seed: int | None
    start_clock: float | None = None
    start_wall: float = 0.0
    start_heard: bool = False  # a step-0 status of this episode arrived
    live: bool = False  # a status past step 0 was seen
    done: bool = False
    pending: list[float] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)


class EpisodeTracker:
    """Attributes statuses, latency samples and diagnostics to the episodes of one job (thread-safe)."""

    def __init__(self, seeds: Sequence[int], period_s: float) -> None:
        self.seeds = [int(s) for s in seeds]
        self.period_s = float(period_s)  # the control period: one twin step
        self._expected = set(self.seeds)
        self._finished: dict[int, EpisodeObservation] = {}  # by seed
        self._current: _Current | None = None
        self._stamps: list[float] = []
        self._snapshots: list[dict[str, int]] = []
        self.heard = False  # any status
        self.started = False  # any status past step 0: the stack is up and an episode ran
        self._lock = threading.Lock()

    # -- inputs ------------------------------------------------------------------------------------
    def on_status(self, status: Mapping[str, Any], wall_s: float) -> EpisodeObservation | None:
        """Record a status; returns the episode it finished, if it finished one of this job's seeds."""
        with self._lock:
            self.heard = True
            try:
                episode, step = int(status["episode"]), int(status["step"])
            except (KeyError, TypeError, ValueError):
                return None
            clock = status.get("clock")
            current = self._current
            if current is None or current.episode != episode:
                seed = status.get("seed")
                current = self._current = _Current(episode, None if seed is None else int(seed))
                current.start_wall = wall_s
            if current.done:  # the world held after the end: the same outcome again
                return None
            if status.get("done"):
                current.done = self.started = True
                if not current.live:  # only its end was heard (a monitor that joined late)
                    current.pending.clear()
                return self._finish(current, status, wall_s)
            if clock is not None:
                current.start_clock = float(clock) - step * self.period_s
            if step == 0:  # the start, or the world held still at it: the episode starts at the last one
                current.start_wall, current.start_heard = wall_s, True
                current.pending.clear()
            elif not current.live:
                current.live = True
                self.started = True
                current.samples.extend(current.pending)
                current.pending.clear()
            return None

    def on_latency(self, seconds: float) -> None:
        with self._lock:
            current = self._current
            if current is None or current.done:
                return
            (current.samples if current.live else current.pending).append(float(seconds))

    def on_diagnostics(self, stamp_s: float, counters: dict[str, int]) -> None:
        """Cumulative counters of the command node, stamped with its clock (arrivals may be reordered)."""
        with self._lock:
            index = bisect.bisect_right(self._stamps, stamp_s)
            self._stamps.insert(index, stamp_s)
            self._snapshots.insert(index, dict(counters))

    # -- queries -----------------------------------------------------------------------------------
    def done_episode(self) -> int | None:
        """The episode the twin is holding at its end (waiting to be reset), if it is."""
        with self._lock:
            current = self._current
            return current.episode if current is not None and current.done else None

    def finished_count(self) -> int:
        with self._lock:
            return len(self._finished)

    def missing_seeds(self) -> list[int]:
        with self._lock:
            return [s for s in self.seeds if s not in self._finished]

    def settled(self) -> bool:
        """Diagnostics stamped at or after the end of every finished episode have arrived."""
        with self._lock:
            ends = [e.end_clock for e in self._finished.values() if e.end_clock is not None]
            return not ends or (bool(self._stamps) and self._stamps[-1] + CLOCK_TOLERANCE_S >= max(ends))

    def episodes(self) -> list[EpisodeObservation]:
        """The finished episodes of this job's seeds, in seed order, with their safety counter differences."""
        with self._lock:
            out = []
            for seed in self.seeds:
                episode = self._finished.get(seed)
                if episode is None:
                    continue
                episode.safety = self._difference(episode.start_clock, episode.end_clock)
                out.append(episode)
            return out

    # -- internals ---------------------------------------------------------------------------------
    def _finish(
        self, current: _Current, status: Mapping[str, Any], wall_s: float
    ) -> EpisodeObservation | None:
        seed = current.seed
        if seed is None or seed not in self._expected or seed in self._finished:
            return None
        triplet = status.get("triplet")
        steps = int(status["step"])
        sim_time = steps * self.period_s
        start = current.start_clock
        episode = EpisodeObservation(
            episode=current.episode,
            seed=seed,
            objects=[str(o) for o in status.get("objects") or ()],
            triplet=None if triplet is None else int(triplet),
            success=bool(status.get("success")),
            steps=steps,
            sim_time=sim_time,
            time_limit=bool(status.get("time_limit", False)),
            physics_unstable=bool(status.get("physics_unstable", False)),
            start_clock=start,
            end_clock=None if start is None else start + sim_time,
            wall_s=max(0.0, wall_s - current.start_wall),
            start_heard=current.start_heard,
            latencies_s=list(current.samples),
            stacked_since=None if status.get("stacked_since") is None else float(status["stacked_since"]),
            lockstep_timeouts=int(status.get("lockstep_timeouts") or 0),
        )
        self._finished[seed] = episode
        return episode

    def _at(self, clock: float) -> dict[str, int] | None:
        index = bisect.bisect_right(self._stamps, clock + CLOCK_TOLERANCE_S)
        return self._snapshots[index - 1] if index else None

    def _difference(self, start: float | None, end: float | None) -> dict[str, int] | None:
        if start is None or end is None:
            return None
        before, after = self._at(start), self._at(end)
        if before is None or after is None:
            return None
        return {key: after.get(key, 0) - before.get(key, 0) for key in sorted(set(before) | set(after))}
