"""Joint-velocity command limits: the last line of defence before the arm, independent of the controller.

Whatever the joint-velocity request (garbage, NaN, a controller bug), `CommandLimiter.limit` returns a
command that satisfies every limit below, or a hold (zero joint velocity). All limits are always on;
the config only sets their values (`SafetyLimits.from_config` refuses non-positive or NaN values).

Guarantees of every non-hold output `v` (7,), given joint positions `q`, the previous command `p` and the
time step `dt` (prediction horizon `h = max(dt, control period)`, since a command stays in force until the
next tick at the earliest):

- finite, and `|v| <= velocity_limit` per joint;
- per joint, `|v - p| <= min(acceleration_limit * dt, max_velocity_change_per_tick)`, unless `v` brakes
  (same sign as `p` or zero, and no faster): a limit that delays a stop is not a safety limit;
- the speed and rate limits scale the whole vector (the change from `p`, then the command) rather than
  clip joints one by one, so a clamped command keeps its joint-space direction and the tool its path;
- joints inside the margin-shrunk limits stay inside over the horizon (`q + v h`), and a joint already
  in or past the margin never moves further out; near a limit the speed toward it is also capped to what
  the acceleration limit can stop in the remaining distance;
- the tool point predicted by the injected forward kinematics at `q + v h` stays inside the workspace box,
  or, if it is outside now, gets no further from the box (the command is scaled down until it does);
- the gripper command is finite and clamped to the robot's command range.

Every clamp and hold reports its reasons; `CommandLimiter.counters` counts them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from omegaconf import DictConfig

NUM_JOINTS = 7
# Floating-point slack in the limit checks (rad, rad/s, m): far below any physical meaning.
NUMERIC_TOLERANCE = 1e-9
# Bisection steps past the float64 mantissa refine nothing (the scale is in [0, 1]).
MAX_WORKSPACE_SEARCH_STEPS = int(np.finfo(float).nmant)

ToolPointFn = Callable[[np.ndarray], np.ndarray]
"""Forward kinematics of the tool point: joint positions (7,) -> world position (3,)."""


class SafetyConfigError(ValueError):
    """A safety value in the config is missing, non-finite, non-positive or inconsistent."""


class Reason(StrEnum):
    """Why a command was clamped or held; the keys of the diagnostics counters."""

    # clamps (the command still moves the arm)
    VELOCITY = "velocity_limit"
    ACCELERATION = "acceleration_limit"
    TICK_CHANGE = "tick_change_limit"
    POSITION = "position_limit"
    WORKSPACE = "workspace"
    GRIPPER_RANGE = "gripper_range"
    INVALID_PREVIOUS = "invalid_previous_command"
    RAMP_IN = "ramp_in"
    # holds (zero joint velocity, gripper keeps its last safe command)
    NONFINITE_COMMAND = "hold_nonfinite_command"
    MALFORMED_COMMAND = "hold_malformed_command"
    NONFINITE_JOINT_STATE = "hold_nonfinite_joint_state"
    INVALID_TIME_STEP = "hold_invalid_time_step"
    WORKSPACE_UNKNOWN = "hold_workspace_unknown"
    INTERNAL_ERROR = "hold_internal_error"
    ESTOP = "hold_estop"
    DISABLED = "hold_disabled"
    NO_ACTION = "hold_no_action"
    STALE_ACTION = "hold_stale_action"
    MALFORMED_ACTION = "hold_malformed_action"
    NO_JOINT_STATE = "hold_no_joint_state"
    STALE_JOINT_STATE = "hold_stale_joint_state"
    MALFORMED_JOINT_STATE = "hold_malformed_joint_state"

    @property
    def is_hold(self) -> bool:
        return self.value.startswith("hold_")


def _vector(cfg_value: object, name: str, size: int) -> np.ndarray:
    try:
        values = np.asarray(list(cfg_value), dtype=float)  # type: ignore[call-overload]
    except (TypeError, ValueError) as err:
        raise SafetyConfigError(f"{name} must be a list of {size} numbers, got {cfg_value!r}") from err
    if values.shape != (size,):
        raise SafetyConfigError(f"{name} must have {size} values, got {values.shape[0]}")
    if not np.all(np.isfinite(values)):
        raise SafetyConfigError(f"{name} must be finite, got {values.tolist()}")
    return values


def _positive(values: np.ndarray | float, name: str) -> None:
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if not np.all(np.isfinite(array)) or np.any(array <= 0.0):
        raise SafetyConfigError(f"{name} must be finite and > 0, got {array.tolist()}")


def _scalar(cfg_value: object, name: str) -> float:
    try:
        value = float(cfg_value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise SafetyConfigError(f"{name} must be a number, got {cfg_value!r}") from err
    _positive(value, name)
    return value


@dataclass(frozen=True)
class SafetyLimits:
    """Validated limit values (SI units); build with `from_config` so that bad values stop startup."""

    joint_min: np.ndarray  # (7,) robot limits, rad
    joint_max: np.ndarray
    position_margin: float  # rad
    velocity_limit: np.ndarray  # (7,) already scaled by safety.velocity_fraction, rad/s
    acceleration_limit: np.ndarray  # (7,) rad/s^2
    max_velocity_change_per_tick: np.ndarray  # (7,) rad/s
    workspace_low: np.ndarray  # (3,) m
    workspace_high: np.ndarray
    workspace_search_steps: int
    gripper_low: float
    gripper_high: float
    control_period: float  # s
    stale_after_periods: float
    ramp_in_seconds: float
    gripper_closed_fraction: float

    @property
    def position_low(self) -> np.ndarray:
        """Lowest joint positions the limiter lets a joint move to (robot limit + margin)."""
        return self.joint_min + self.position_margin

    @property
    def position_high(self) -> np.ndarray:
        return self.joint_max - self.position_margin

    @property
    def stale_after_seconds(self) -> float:
        return self.stale_after_periods * self.control_period

    @classmethod
    def from_config(cls, cfg: DictConfig) -> SafetyLimits:
        """Limits from the composed config (`robot`, `safety`, `control`); raises on bad values."""
        robot, safety = cfg.robot, cfg.safety
        joint_min = _vector(robot.joint_min, "robot.joint_min", NUM_JOINTS)
        joint_max = _vector(robot.joint_max, "robot.joint_max", NUM_JOINTS)
        margin = _scalar(safety.position_margin, "safety.position_margin")
        if np.any(joint_min + margin >= joint_max - margin):
            raise SafetyConfigError(
                "safety.position_margin leaves no room between robot.joint_min and joint_max"
            )
        robot_velocity = _vector(robot.velocity_limit, "robot.velocity_limit", NUM_JOINTS)
        _positive(robot_velocity, "robot.velocity_limit")
        fraction = _scalar(safety.velocity_fraction, "safety.velocity_fraction")
        if fraction > 1.0:
            raise SafetyConfigError(f"safety.velocity_fraction must be <= 1 (robot limits), got {fraction}")
        acceleration = _vector(safety.acceleration_limit, "safety.acceleration_limit", NUM_JOINTS)
        _positive(acceleration, "safety.acceleration_limit")
        tick_change = _vector(
            safety.max_velocity_change_per_tick, "safety.max_velocity_change_per_tick", NUM_JOINTS
        )
        _positive(tick_change, "safety.max_velocity_change_per_tick")
        low = _vector(safety.workspace.low, "safety.workspace.low", 3)
        high = _vector(safety.workspace.high, "safety.workspace.high", 3)
        if np.any(low >= high):
            raise SafetyConfigError(f"safety.workspace.low {low.tolist()} must be below high {high.tolist()}")
        steps_value = _scalar(safety.workspace.search_steps, "safety.workspace.search_steps")
        # Beyond the float mantissa the bisection cannot refine the scale any further, only stall the tick.
        if steps_value != int(steps_value) or steps_value > MAX_WORKSPACE_SEARCH_STEPS:
            raise SafetyConfigError(
                "safety.workspace.search_steps must be an integer in "
                f"[1, {MAX_WORKSPACE_SEARCH_STEPS}], got {safety.workspace.search_steps!r}"
            )
        steps = int(steps_value)
        gripper = _vector(robot.gripper.command_range, "robot.gripper.command_range", 2)
        if not gripper[0] < 0.0 < gripper[1]:
            raise SafetyConfigError(f"robot.gripper.command_range must straddle 0, got {gripper.tolist()}")
        rate = _scalar(cfg.control.rate_hz, "control.rate_hz")
        stale = _scalar(safety.stale_after_periods, "safety.stale_after_periods")
        if stale > 2.0:
            raise SafetyConfigError(f"safety.stale_after_periods must be <= 2 control periods, got {stale}")
        closed_fraction = _scalar(safety.gripper_closed_fraction, "safety.gripper_closed_fraction")
        if closed_fraction >= 1.0:
            raise SafetyConfigError(f"safety.gripper_closed_fraction must be < 1, got {closed_fraction}")
        return cls(
            joint_min=joint_min,
            joint_max=joint_max,
            position_margin=margin,
            velocity_limit=fraction * robot_velocity,
            acceleration_limit=acceleration,
            max_velocity_change_per_tick=tick_change,
            workspace_low=low,
            workspace_high=high,
            workspace_search_steps=steps,
            gripper_low=float(gripper[0]),
            gripper_high=float(gripper[1]),
            control_period=1.0 / rate,
            stale_after_periods=stale,
            ramp_in_seconds=_scalar(safety.ramp_in_seconds, "safety.ramp_in_seconds"),
            gripper_closed_fraction=closed_fraction,
        )


@dataclass(frozen=True)
class LimitedCommand:
    """A command inside every limit. `hold`: zero joint velocity and no gripper value (keep the last)."""

    joint_velocity: np.ndarray  # (7,) rad/s
    gripper: float | None  # None on a hold: the caller keeps its last safe gripper command
    reasons: frozenset[Reason] = field(default_factory=frozenset)
    workspace_scale: float = 1.0  # factor the workspace check applied to the whole joint velocity

    @property
    def hold(self) -> bool:
        return any(r.is_hold for r in self.reasons)


def hold_command(*reasons: Reason) -> LimitedCommand:
    return LimitedCommand(np.zeros(NUM_JOINTS), None, frozenset(reasons), 0.0)


# dtype kinds that are numbers in the physical sense: bool, complex, object and strings are not.
REAL_KINDS = frozenset("iuf")


def real_vector(values: object, size: int = NUM_JOINTS) -> np.ndarray | None:
    """`values` as a float vector of `size` real numbers, or None (wrong shape, bool/complex/object/str).

    A plain `np.asarray(x, dtype=float)` would silently turn booleans into 0/1 and drop imaginary parts.
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        return None
    if array.dtype.kind not in REAL_KINDS or array.size != size:
        return None
    return array.astype(float).reshape(size)


def is_real_scalar(value: object) -> bool:
    """A real number (Python or NumPy, not bool): what a time step or a gripper command must be."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def real_scalar(value: object) -> float | None:
    return float(value) if is_real_scalar(value) else None  # type: ignore[arg-type]


def workspace_distance(point: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Euclidean distance from `point` to the box [low, high] (0 inside)."""
    below = np.maximum(low - point, 0.0)
    above = np.maximum(point - high, 0.0)
    return float(np.linalg.norm(below + above))


def prediction_horizon(dt: float, control_period: float) -> float:
    """How long a command is assumed to stay in force: until the next tick, which is no sooner than dt."""
    return max(float(dt), control_period)


class CommandLimiter:
    """Clamps joint-velocity requests into the limits; see the module docstring for the guarantees."""

    def __init__(self, limits: SafetyLimits, tool_point: ToolPointFn) -> None:
        self.limits = limits
        self.tool_point = tool_point
        self.counters: Counter[Reason] = Counter()

    def limit(
        self,
        joint_positions: np.ndarray,
        previous_velocity: np.ndarray,
        dt: float,
        requested_velocity: np.ndarray,
        requested_gripper: float,
    ) -> LimitedCommand:
        """The safe command for one tick; a hold (zero joint velocity) when any input is unusable."""
        try:
            command = self._limit(
                joint_positions, previous_velocity, dt, requested_velocity, requested_gripper
            )
        except Exception:  # a bug here (or in the injected kinematics) must still end in a hold
            command = hold_command(Reason.INTERNAL_ERROR)
        self.counters.update(command.reasons)
        return command

    def _limit(
        self,
        joint_positions: np.ndarray,
        previous_velocity: np.ndarray,
        dt: float,
        requested_velocity: np.ndarray,
        requested_gripper: float,
    ) -> LimitedCommand:
        lim = self.limits
        q = real_vector(joint_positions)
        request = real_vector(requested_velocity)
        gripper_request = real_scalar(requested_gripper)
        if q is None or request is None or gripper_request is None or not is_real_scalar(dt):
            return hold_command(Reason.MALFORMED_COMMAND)
        if not np.all(np.isfinite(q)):
            return hold_command(Reason.NONFINITE_JOINT_STATE)
        if not np.all(np.isfinite(request)) or not math.isfinite(gripper_request):
            return hold_command(Reason.NONFINITE_COMMAND)
        dt = float(dt)
        if not (math.isfinite(dt) and dt > 0.0):
            return hold_command(Reason.INVALID_TIME_STEP)
        reasons: set[Reason] = set()

        previous = real_vector(previous_velocity)
        if previous is None or not np.all(np.isfinite(previous)):
            previous = np.zeros(NUM_JOINTS)
            reasons.add(Reason.INVALID_PREVIOUS)

        # Rate limits first, then the speed limit, both by scaling the whole vector so that the joint-space
        # direction (hence the tool's path) is kept: the change from the previous command is shortened until
        # every joint is within its step, then the command until every joint is within its speed. Where
        # the previous command was itself too fast, the speed scaling brakes, which is always allowed.
        change = request - previous
        if not np.all(np.isfinite(change)):
            return hold_command(Reason.NONFINITE_COMMAND)  # finite but astronomically large values
        by_acceleration = lim.acceleration_limit * dt
        step = np.minimum(by_acceleration, lim.max_velocity_change_per_tick)
        change_ratio = step / np.maximum(np.abs(change), step)  # 1 where within the step
        binding = int(np.argmin(change_ratio))
        if change_ratio[binding] < 1.0:
            late = by_acceleration[binding] > lim.max_velocity_change_per_tick[binding]
            reasons.add(Reason.TICK_CHANGE if late else Reason.ACCELERATION)
        velocity = previous + change_ratio[binding] * change
        speed_ratio = float(np.min(lim.velocity_limit / np.maximum(np.abs(velocity), lim.velocity_limit)))
        if speed_ratio < 1.0:
            reasons.add(Reason.VELOCITY)
            velocity = speed_ratio * velocity
        # Rounding in the scaled products must not leave a joint a hair past its limit.
        velocity = np.clip(velocity, -lim.velocity_limit, lim.velocity_limit)

        # Position limits: the bounds always contain 0, so clipping only brakes.
        horizon = prediction_horizon(dt, lim.control_period)
        low_bound, high_bound = self.position_velocity_bounds(q, horizon)
        clipped = np.clip(velocity, low_bound, high_bound)
        if np.any(np.abs(clipped - velocity) > NUMERIC_TOLERANCE):
            reasons.add(Reason.POSITION)
        velocity = clipped

        scale = self.workspace_scale(q, velocity, horizon)
        if scale is None:
            return hold_command(Reason.WORKSPACE_UNKNOWN)
        if scale < 1.0:
            reasons.add(Reason.WORKSPACE)
            velocity = velocity * scale

        gripper = float(np.clip(gripper_request, lim.gripper_low, lim.gripper_high))
        if gripper != gripper_request:
            reasons.add(Reason.GRIPPER_RANGE)
        if not np.all(np.isfinite(velocity)) or np.any(np.abs(velocity) > lim.velocity_limit):
            return hold_command(Reason.INTERNAL_ERROR)
        return LimitedCommand(velocity, gripper, frozenset(reasons), scale)

    def position_velocity_bounds(self, q: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-joint velocity interval (containing 0) that keeps `q + v * horizon` inside the margin.

        A joint in or past the margin may only move back; toward a limit, the speed is also capped to what
        the acceleration limit can stop within the remaining distance (braking before the margin).
        """
        lim = self.limits
        room_up = np.maximum(lim.position_high - q, 0.0)
        room_down = np.maximum(q - lim.position_low, 0.0)
        stoppable_up = np.sqrt(2.0 * lim.acceleration_limit * room_up)
        stoppable_down = np.sqrt(2.0 * lim.acceleration_limit * room_down)
        high = np.minimum(room_up / horizon, stoppable_up)
        low = -np.minimum(room_down / horizon, stoppable_down)
        return low, high

    def workspace_scale(self, q: np.ndarray, velocity: np.ndarray, horizon: float) -> float | None:
        """Largest factor in [0, 1] (to 2^-search_steps) keeping the predicted tool point in the box.

        Outside the box, the predicted point must get no further from it. None if the kinematics cannot
        place the tool point now (non-finite), which the caller turns into a hold.
        """
        lim = self.limits
        current = np.asarray(self.tool_point(q), dtype=float)
        if current.shape != (3,) or not np.all(np.isfinite(current)):
            return None
        allowed = workspace_distance(current, lim.workspace_low, lim.workspace_high) + NUMERIC_TOLERANCE

        def keeps_box(scale: float) -> bool:
            point = np.asarray(self.tool_point(q + scale * velocity * horizon), dtype=float)
            if point.shape != (3,) or not np.all(np.isfinite(point)):
                return False
            return workspace_distance(point, lim.workspace_low, lim.workspace_high) <= allowed

        if not np.any(velocity) or keeps_box(1.0):
            return 1.0
        feasible, infeasible = 0.0, 1.0
        for _ in range(lim.workspace_search_steps):
            middle = 0.5 * (feasible + infeasible)
            if keeps_box(middle):
                feasible = middle
            else:
                infeasible = middle
        return feasible
