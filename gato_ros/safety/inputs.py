"""Validation of the command node's inputs (action, joint state), ROS-free so it is tested on plain data.

A message that fails validation is never used, never crashes the node, and replaces the newest valid
one with a hold until a valid message arrives again: a bad message means the upstream is broken.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gato_ros.safety.limits import REAL_KINDS, Reason, is_real_scalar

ACTION_SIZE = 5


class InputError(ValueError):
    """A malformed input message; `reason` is the hold it causes."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def real_array(values: object, reason: Reason, what: str) -> np.ndarray:
    """`values` as a 1-D float array of real numbers; anything else (not a sequence, strings, booleans,
    complex or nested values) raises `InputError` rather than whatever NumPy would raise."""
    try:
        array = np.asarray(list(values))  # type: ignore[call-overload]
    except (TypeError, ValueError) as err:
        raise InputError(reason, f"{what} is not a sequence of numbers: {err}") from err
    if array.ndim != 1 or (array.size and array.dtype.kind not in REAL_KINDS):
        raise InputError(reason, f"{what} is not a flat sequence of real numbers (dtype {array.dtype})")
    return array.astype(float)


def parse_action(values: Sequence[float]) -> np.ndarray:
    """(5,) finite action [vx, vy, vz, wz, gripper]; raises `InputError` on a wrong length, a non-number
    or NaN/inf."""
    action = real_array(values, Reason.MALFORMED_ACTION, "action")
    if action.shape != (ACTION_SIZE,):
        raise InputError(Reason.MALFORMED_ACTION, f"action has {action.size} values, expected {ACTION_SIZE}")
    if not np.all(np.isfinite(action)):
        raise InputError(Reason.MALFORMED_ACTION, f"action has non-finite values: {action.tolist()}")
    return action


@dataclass(frozen=True)
class ParsedJointState:
    positions: np.ndarray  # (7,) in the configured joint order
    gripper_closed_fraction: float | None  # None when the gripper joint is absent or not finite


def parse_joint_state(
    names: Sequence[str],
    positions: Sequence[float],
    arm_joint_names: Sequence[str],
    gripper_joint_name: str,
    gripper_range: Sequence[float],
) -> ParsedJointState:
    """Arm positions reordered to `arm_joint_names` and the gripper's closed fraction.

    Raises `InputError` when names and positions differ in length, a name repeats, an arm joint is
    missing, or an arm position is not finite.
    """
    try:
        names = list(names)
    except TypeError as err:
        raise InputError(
            Reason.MALFORMED_JOINT_STATE, f"joint state names are not a sequence: {err}"
        ) from err
    if not all(isinstance(name, str) for name in names):
        raise InputError(Reason.MALFORMED_JOINT_STATE, "joint state names are not all strings")
    values = real_array(positions, Reason.MALFORMED_JOINT_STATE, "joint state positions")
    if values.shape != (len(names),):
        raise InputError(
            Reason.MALFORMED_JOINT_STATE, f"joint state has {len(names)} names but {values.size} positions"
        )
    if len(set(names)) != len(names):
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        raise InputError(Reason.MALFORMED_JOINT_STATE, f"joint state repeats joint names: {repeated}")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in arm_joint_names if name not in index]
    if missing:
        raise InputError(Reason.MALFORMED_JOINT_STATE, f"joint state lacks arm joints {missing}")
    arm = values[[index[name] for name in arm_joint_names]]
    if not np.all(np.isfinite(arm)):
        raise InputError(
            Reason.MALFORMED_JOINT_STATE, f"joint state has non-finite arm positions: {arm.tolist()}"
        )
    closed: float | None = None
    if gripper_joint_name in index:
        low, high = float(gripper_range[0]), float(gripper_range[1])
        value = float(values[index[gripper_joint_name]])
        if math.isfinite(value) and high > low:
            closed = float(np.clip((value - low) / (high - low), 0.0, 1.0))
    return ParsedJointState(arm, closed)


def check_monotonic_stamp(previous: float | None, stamp: float) -> None:
    """Raises `InputError` when a header stamp goes back in time (a replayed or reordered message)."""
    if not is_real_scalar(stamp) or not math.isfinite(stamp):
        raise InputError(Reason.MALFORMED_JOINT_STATE, f"joint state stamp is not finite: {stamp}")
    if previous is not None and stamp < previous:
        raise InputError(
            Reason.MALFORMED_JOINT_STATE,
            f"joint state stamp {stamp:.6f} s is older than the previous one ({previous:.6f} s)",
        )
