"""The safety supervisor: watchdog, e-stop latch, enable/disable and ramp-in around the `CommandLimiter`.

A pure state machine of explicit time: every method takes `now` (seconds on one clock, the node's clock
under sim time too), so tests drive it deterministically. One `tick` per control period returns the
command to publish. A hold is zero joint velocity with the gripper kept at its last safe command, so a
hold never drops a held object.

States and transitions:

- **disabled** (initial unless `start_enabled`): hold. `set_enabled(True)` starts a ramp-in.
- **e-stop**: latched by `request_estop` or by an asserted e-stop input; survives new actions, enable
  and disable; only `release_estop` clears it, and it refuses while the input is still asserted.
- **watchdog**: hold when the newest action or joint state is missing or older than
  `stale_after_periods` control periods (or stamped in the future: the clock went back).
- **reading age**: the limiter checks the limits from the newest joint state advanced by the last
  command over the reading's age (`predicted_positions`): the arm kept moving while the reading aged,
  and a check from the old reading lets a joint end up to a whole stale period further out.
- **ramp-in**: after any hold (disabled, e-stop, stale or bad input), the joint-velocity request is
  scaled by `(now - t_resume) / ramp_in_seconds` (clipped to [0, 1]), where `t_resume` is the first tick
  that does not hold. The ramp scales the request before the limiter, which stays the last step.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gato_ros.safety.limits import (
    NUM_JOINTS,
    CommandLimiter,
    Reason,
    SafetyLimits,
    ToolPointFn,
    is_real_scalar,
    real_vector,
)


@dataclass(frozen=True)
class JointSample:
    """The newest valid joint state: arm positions and, if measured, how far the gripper is closed."""

    positions: np.ndarray  # (7,) rad
    stamp: float  # s, when it was received (the supervisor's clock)
    gripper_closed_fraction: float | None = None  # 0 open .. 1 closed


@dataclass(frozen=True)
class CommandRequest:
    """What the controller asks for from the newest action: joint velocities and a gripper command."""

    joint_velocity: np.ndarray  # (7,) rad/s
    gripper: float
    stamp: float  # s, when the action it comes from was received


@dataclass(frozen=True)
class SafeCommand:
    """One tick's output. `gripper` is None only while no gripper command is known yet (send none)."""

    joint_velocity: np.ndarray
    gripper: float | None
    hold: bool
    reasons: frozenset[Reason] = field(default_factory=frozenset)
    ramp_scale: float = 0.0
    # Where the joints are estimated to be at this tick (the limits were checked from here); None without
    # a fresh, finite joint state. A position-interface target must start here, not at the older reading.
    joint_positions: np.ndarray | None = None


STALE_TOLERANCE_S = 1e-9


class SafetySupervisor:
    """Watchdog, e-stop latch, enable state and ramp-in; every output goes through the `CommandLimiter`."""

    def __init__(
        self, limits: SafetyLimits, tool_point: ToolPointFn, *, start_enabled: bool, stamp_lead_s: float = 0.0
    ) -> None:
        """`stamp_lead_s`: how far an input's stamp may lead `now` and still count as fresh (age 0): the
        twin stamps a tick's readings with the new time just before its clock says so."""
        self.limits = limits
        self.stamp_lead_s = max(0.0, float(stamp_lead_s))
        self.limiter = CommandLimiter(limits, tool_point)
        self.enabled = bool(start_enabled)
        self.estop_latched = False
        self.estop_input_asserted = False
        self.counters: Counter[Reason] = Counter()
        self.previous_velocity = np.zeros(NUM_JOINTS)
        self.last_safe_gripper: float | None = None
        self.last_gripper_closed_fraction: float | None = None
        self.last_tick: float | None = None
        self.ramp_start: float | None = None
        self.last_output: SafeCommand | None = None
        # (tick time, joint velocity) of the commands sent, oldest first: each in force until the next
        self.command_history: deque[tuple[float, np.ndarray]] = deque()

    # -- operator inputs ---------------------------------------------------------------------------
    def request_estop(self, now: float) -> None:
        """Latch the e-stop (a one-shot request, e.g. the trigger service)."""
        self.estop_latched = True

    def set_estop_input(self, asserted: bool, now: float) -> None:
        """The e-stop input (topic): True latches; False only de-asserts it, it does not release."""
        self.estop_input_asserted = bool(asserted)
        if asserted:
            self.estop_latched = True

    def release_estop(self, now: float) -> tuple[bool, str]:
        """Explicit release; refused while the e-stop input is still asserted."""
        if self.estop_input_asserted:
            return False, "e-stop input is still asserted: publish False on the e-stop topic first"
        if not self.estop_latched:
            return True, "e-stop was not latched"
        self.estop_latched = False
        state = "ramping in" if self.enabled else "still disabled: enable to move"
        return True, f"e-stop released, {state}"

    def set_enabled(self, enabled: bool, now: float) -> tuple[bool, str]:
        """Enable (ramp in) or disable (hold) policy control; enabling is refused while e-stopped."""
        if enabled and self.estop_latched:
            return False, "e-stop is latched: release it before enabling"
        self.enabled = bool(enabled)
        return True, "enabled, ramping in" if enabled else "disabled, holding"

    def restart_ramp_in(self) -> None:
        """The next motion starts from rest and ramps in again (a switch of action source: the new source's
        first command must not inherit the old one's speed)."""
        self.ramp_start = None

    # -- control tick ------------------------------------------------------------------------------
    def is_stale(self, stamp: float, now: float) -> bool:
        """True unless `stamp` is a number younger than `stale_after_periods` and not in the future: the hold
        comes when an input reaches that age, so a tick at exactly that age (the command node's watchdog
        tick, aligned to the last action) holds: within 2 periods, not after them."""
        if not (is_real_scalar(stamp) and is_real_scalar(now)):
            return True
        age = float(now) - float(stamp)
        # 1 ns of slack: an input exactly `stale_after_periods` old is stale whatever the float rounding.
        fresh_from = -self.stamp_lead_s - STALE_TOLERANCE_S if self.stamp_lead_s else 0.0
        return not (fresh_from <= age < self.limits.stale_after_seconds - STALE_TOLERANCE_S)

    def ramp_scale(self, now: float) -> float:
        if self.ramp_start is None:
            return 0.0
        return float(np.clip((now - self.ramp_start) / self.limits.ramp_in_seconds, 0.0, 1.0))

    def tick(
        self,
        now: float,
        joints: JointSample | None,
        request: CommandRequest | None,
        input_faults: Iterable[Reason] = (),
    ) -> SafeCommand:
        """The command for the tick at `now` from the newest joint state and request.

        `input_faults` are hold reasons found upstream (a malformed message replaced the newest one).
        Never raises: inputs of the wrong type (a request of strings, a `None` stamp) end in a hold.
        """
        try:
            return self._tick(now, joints, request, input_faults)
        except Exception:
            return self.emergency_hold(now)

    def _tick(
        self,
        now: float,
        joints: JointSample | None,
        request: CommandRequest | None,
        input_faults: Iterable[Reason],
    ) -> SafeCommand:
        holds: set[Reason] = set(input_faults)
        if self.estop_latched:
            holds.add(Reason.ESTOP)
        if not self.enabled:
            holds.add(Reason.DISABLED)
        if joints is None:
            holds.add(Reason.NO_JOINT_STATE)
        else:
            closed = joints.gripper_closed_fraction
            # A NaN reading must not replace the last real one: it would read as "open" on a hold.
            if closed is not None and math.isfinite(closed):
                self.last_gripper_closed_fraction = float(closed)
            if self.is_stale(joints.stamp, now):
                holds.add(Reason.STALE_JOINT_STATE)
        if request is None:
            holds.add(Reason.NO_ACTION)
        elif self.is_stale(request.stamp, now):
            holds.add(Reason.STALE_ACTION)
        dt = self.limits.control_period if self.last_tick is None else now - self.last_tick
        self.last_tick = now
        positions = None
        if joints is not None and Reason.STALE_JOINT_STATE not in holds:
            positions = self.predicted_positions(joints, now)
        if holds or joints is None or request is None:
            return self._finish(self.hold(holds, positions))
        if self.ramp_start is None:
            self.ramp_start = now
        scale = self.ramp_scale(now)
        requested = real_vector(request.joint_velocity)
        limited = self.limiter.limit(
            joints.positions if positions is None else positions,  # None: the limiter names the fault
            self.previous_velocity,
            dt,
            request.joint_velocity if requested is None else scale * requested,  # None: the limiter holds
            request.gripper,
        )
        reasons = set(limited.reasons)
        if scale < 1.0:
            reasons.add(Reason.RAMP_IN)
        if limited.hold:
            return self._finish(self.hold(reasons, positions))
        output = SafeCommand(
            limited.joint_velocity, limited.gripper, False, frozenset(reasons), scale, positions
        )
        self.last_safe_gripper = limited.gripper
        return self._finish(output)

    def predicted_positions(self, joints: JointSample, now: float) -> np.ndarray | None:
        """The joint state advanced through every command in force since it was taken: the arm kept
        moving while the reading aged (up to the stale limit), under the commands of each tick since, and a
        limit checked from the old reading would let it overshoot by that much. None if the reading is not
        7 finite numbers."""
        measured = real_vector(joints.positions)
        if measured is None or not np.all(np.isfinite(measured)):
            return None
        now = float(now)
        age = float(np.clip(now - float(joints.stamp), 0.0, self.limits.stale_after_seconds))
        return measured + self.displacement_since(now - age, now)

    def displacement_since(self, start: float, now: float) -> np.ndarray:
        """Joint travel commanded over [start, now]: each sent command over the part of its time in force
        (from its tick to the next) inside that window."""
        travel = np.zeros(NUM_JOINTS)
        history = self.command_history
        for i, (t_sent, velocity) in enumerate(history):
            t_next = history[i + 1][0] if i + 1 < len(history) else now
            overlap = min(t_next, now) - max(t_sent, start)
            if overlap > 0.0:
                travel += velocity * overlap
        return travel

    def _remember_command(self, velocity: np.ndarray) -> None:
        """Keep the commands that can still be in force over a reading's age (the stale limit), plus the
        one in force at that window's start."""
        if self.last_tick is None:
            return
        history = self.command_history
        if history and self.last_tick < history[-1][0]:  # the clock went back: the old times mean nothing
            history.clear()
        history.append((float(self.last_tick), velocity.copy()))
        horizon = self.last_tick - self.limits.stale_after_seconds - self.limits.control_period
        while len(history) > 1 and history[1][0] <= horizon:
            history.popleft()

    def hold(self, reasons: Iterable[Reason], positions: np.ndarray | None = None) -> SafeCommand:
        """Zero joint velocity, the last safe gripper command; the next motion ramps in again."""
        self.ramp_start = None
        return SafeCommand(
            np.zeros(NUM_JOINTS), self.hold_gripper(), True, frozenset(reasons), 0.0, positions
        )

    def emergency_hold(self, now: float, reason: Reason = Reason.INTERNAL_ERROR) -> SafeCommand:
        """A hold for when the tick itself failed (an exception upstream): cannot fail."""
        self.last_tick = now
        return self._finish(self.hold([reason]))

    def hold_gripper(self) -> float | None:
        """The last safe gripper command; before any, keep the measured state (closed stays closed)."""
        if self.last_safe_gripper is not None:
            return self.last_safe_gripper
        if self.last_gripper_closed_fraction is None:
            return None
        closed = self.last_gripper_closed_fraction >= self.limits.gripper_closed_fraction
        return self.limits.gripper_high if closed else self.limits.gripper_low

    def _finish(self, output: SafeCommand) -> SafeCommand:
        self.previous_velocity = output.joint_velocity.copy()
        self._remember_command(self.previous_velocity)
        self.counters.update(output.reasons)
        self.last_output = output
        return output

    def snapshot(self) -> dict[str, Any]:
        """The tick state, to undo a provisional tick (`restore`): the command node replaces a watchdog tick
        by an action that arrives at the same clock reading (a discrete sim clock), which would otherwise
        be a second tick with dt = 0. The counters are not part of it: they count every tick published,
        monotonically, as /diagnostics promises."""
        return {
            "previous_velocity": self.previous_velocity.copy(),
            "last_tick": self.last_tick,
            "ramp_start": self.ramp_start,
            "last_output": self.last_output,
            "last_safe_gripper": self.last_safe_gripper,
            "command_history": deque((t, v.copy()) for t, v in self.command_history),
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    @property
    def holding(self) -> bool:
        return self.last_output is None or self.last_output.hold

    def status(self) -> dict[str, str]:
        """State and counters as strings, for diagnostics."""
        last = self.last_output
        status = {
            "enabled": str(self.enabled),
            "estop_latched": str(self.estop_latched),
            "estop_input_asserted": str(self.estop_input_asserted),
            "holding": str(self.holding),
            "ramp_scale": f"{(last.ramp_scale if last else 0.0):.3f}",
            "active_reasons": ",".join(sorted(last.reasons)) if last else "",
        }
        status.update({reason.value: str(self.counters[reason]) for reason in Reason})
        return status
