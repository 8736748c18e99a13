"""The supervisor's watchdog, e-stop latch, enable state, ramp-in and gripper hold, on explicit time."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics
from gato_ros.safety import (
    CommandRequest,
    InputError,
    JointSample,
    Reason,
    SafetyLimits,
    SafetySupervisor,
    parse_action,
    parse_joint_state,
)
from gato_ros.safety.inputs import check_monotonic_stamp

CFG = load_config()
LIMITS = SafetyLimits.from_config(CFG)
PERIOD = LIMITS.control_period
SMALL = np.full(7, 0.02)  # rad/s: inside every limit, so only the supervisor shapes it


@cache
def kinematics() -> ArmKinematics:
    return ArmKinematics(CFG.robot)


@cache
def posture() -> np.ndarray:
    q, converged = kinematics().inverse_kinematics(0.5 * (LIMITS.workspace_low + LIMITS.workspace_high), 0.0)
    assert converged
    return q


def supervisor(enabled: bool = True) -> SafetySupervisor:
    return SafetySupervisor(LIMITS, lambda q: kinematics().tool_state(q).position, start_enabled=enabled)


def fresh(
    now: float, gripper: float = 255.0, closed: float | None = None
) -> tuple[JointSample, CommandRequest]:
    return JointSample(posture(), now, closed), CommandRequest(SMALL, gripper, now)


def run_until_full_speed(sup: SafetySupervisor, start: float = 0.0) -> float:
    """Ticks with fresh inputs until the ramp is done; returns the time of the next tick."""
    now = start
    while True:
        out = sup.tick(now, *fresh(now))
        now += PERIOD
        if out.ramp_scale >= 1.0:
            return now


def test_ramp_in_scales_linearly_after_enable() -> None:
    sup = supervisor(enabled=False)
    assert sup.tick(0.0, *fresh(0.0)).reasons == {Reason.DISABLED}
    assert sup.set_enabled(True, 0.0)[0]
    ticks = round(LIMITS.ramp_in_seconds / PERIOD)
    for k in range(ticks + 3):
        now = (k + 1) * PERIOD
        out = sup.tick(now, *fresh(now))
        expected = min(1.0, k * PERIOD / LIMITS.ramp_in_seconds)  # t_resume = first non-hold tick
        assert out.ramp_scale == pytest.approx(expected)
        np.testing.assert_allclose(out.joint_velocity, expected * SMALL, atol=1e-12)
        assert (Reason.RAMP_IN in out.reasons) == (expected < 1.0)
        assert not out.hold and out.gripper == 255.0


@pytest.mark.parametrize("which", ["action", "joint_state"])
def test_stale_input_holds_within_two_control_periods(which: str) -> None:
    sup = supervisor()
    now = run_until_full_speed(sup)
    last_message = now
    sup.tick(now, *fresh(now))
    joints, request = fresh(last_message)
    held_at = None
    for k in range(1, 6):
        now = last_message + k * PERIOD + 1e-6
        newer_joints, newer_request = fresh(now)
        out = sup.tick(now, joints if which == "joint_state" else newer_joints,
                       request if which == "action" else newer_request)  # fmt: skip
        if out.hold:
            held_at = now
            reason = Reason.STALE_ACTION if which == "action" else Reason.STALE_JOINT_STATE
            assert out.reasons == {reason}
            assert np.all(out.joint_velocity == 0.0) and out.gripper == 255.0  # gripper keeps its command
            break
        assert np.any(out.joint_velocity != 0.0)
    assert held_at is not None and held_at - last_message <= LIMITS.stale_after_seconds + PERIOD
    assert held_at - last_message > LIMITS.stale_after_seconds
    # recovery ramps in again from zero
    out = sup.tick(held_at + PERIOD, *fresh(held_at + PERIOD))
    assert not out.hold and out.ramp_scale == 0.0
    out = sup.tick(held_at + 2 * PERIOD, *fresh(held_at + 2 * PERIOD))
    assert out.ramp_scale == pytest.approx(PERIOD / LIMITS.ramp_in_seconds)


def test_missing_inputs_and_future_stamps_hold() -> None:
    sup = supervisor()
    joints, request = fresh(1.0)
    assert sup.tick(1.0, None, request).reasons == {Reason.NO_JOINT_STATE}
    assert sup.tick(1.0, joints, None).reasons == {Reason.NO_ACTION}
    assert sup.tick(0.5, joints, request).reasons == {Reason.STALE_ACTION, Reason.STALE_JOINT_STATE}
    assert sup.tick(1.05, joints, request, [Reason.MALFORMED_ACTION]).reasons == {Reason.MALFORMED_ACTION}


def test_estop_latches_survives_actions_and_releases_only_explicitly() -> None:
    sup = supervisor()
    now = run_until_full_speed(sup)
    sup.request_estop(now)
    for _ in range(5):  # fresh actions keep coming: still held
        out = sup.tick(now, *fresh(now))
        assert out.hold and Reason.ESTOP in out.reasons and out.gripper == 255.0
        now += PERIOD
    ok, message = sup.set_enabled(True, now)
    assert not ok and "release" in message
    sup.set_enabled(False, now)  # disable/enable do not clear the latch
    assert sup.estop_latched
    assert sup.release_estop(now)[0]
    assert sup.tick(now, *fresh(now)).reasons == {Reason.DISABLED}
    assert sup.set_enabled(True, now)[0]
    out = sup.tick(now + PERIOD, *fresh(now + PERIOD))
    assert not out.hold and out.ramp_scale == 0.0


def test_estop_release_refused_while_input_asserted() -> None:
    sup = supervisor()
    sup.set_estop_input(True, 0.0)
    assert sup.estop_latched
    sup.set_estop_input(True, 0.1)
    ok, message = sup.release_estop(0.1)
    assert not ok and "still asserted" in message and sup.estop_latched
    sup.set_estop_input(False, 0.2)  # de-asserting does not release
    assert sup.estop_latched and Reason.ESTOP in sup.tick(0.2, *fresh(0.2)).reasons
    ok, message = sup.release_estop(0.3)
    assert ok and not sup.estop_latched
    out = sup.tick(0.3, *fresh(0.3))
    assert not out.hold and out.ramp_scale == 0.0


def test_hold_keeps_the_measured_gripper_before_any_command() -> None:
    sup = supervisor(enabled=False)
    joints, request = fresh(0.0, closed=0.6)
    assert sup.tick(0.0, joints, request).gripper == LIMITS.gripper_high  # holds an object: stay closed
    sup = supervisor(enabled=False)
    joints, request = fresh(0.0, closed=0.0)
    assert sup.tick(0.0, joints, request).gripper == LIMITS.gripper_low
    assert supervisor(enabled=False).tick(0.0, None, None).gripper is None  # nothing known: send none


def test_nonfinite_request_holds_and_counts() -> None:
    sup = supervisor()
    now = run_until_full_speed(sup)
    joints, _ = fresh(now)
    bad = CommandRequest(np.full(7, np.nan), -255.0, now)
    out = sup.tick(now, joints, bad)
    assert out.hold and out.reasons == {Reason.NONFINITE_COMMAND} and out.gripper == 255.0
    assert sup.counters[Reason.NONFINITE_COMMAND] == 1
    out = sup.emergency_hold(now + PERIOD)
    assert out.hold and out.gripper == 255.0 and sup.counters[Reason.INTERNAL_ERROR] == 1
    status = sup.status()
    assert status["hold_nonfinite_command"] == "1" and status["holding"] == "True"


def test_parse_action_and_joint_state_reject_malformed_messages() -> None:
    assert parse_action([0.0, 0.1, 0.0, 0.0, 1.0]).shape == (5,)
    for bad in ([0.0] * 4, [0.0, 0.0, 0.0, 0.0, float("nan")], [float("inf")] * 5):
        with pytest.raises(InputError) as err:
            parse_action(bad)
        assert err.value.reason == Reason.MALFORMED_ACTION
    names = [*CFG.robot.joint_names, CFG.robot.gripper.joint_name]
    positions = [*range(7), 0.4]
    parsed = parse_joint_state(
        names[::-1], positions[::-1], CFG.robot.joint_names, CFG.robot.gripper.joint_name, [0.0, 0.8]
    )
    np.testing.assert_allclose(parsed.positions, np.arange(7.0))
    assert parsed.gripper_closed_fraction == pytest.approx(0.5)
    malformed = [
        (names[:6], positions[:6]),  # missing arm joint
        (names, positions[:7]),  # length mismatch
        (names, [float("nan"), *positions[1:]]),  # NaN arm position
        ([names[0], *names[:7]], positions),  # repeated name
    ]
    for bad_names, bad_positions in malformed:
        with pytest.raises(InputError) as err:
            parse_joint_state(bad_names, bad_positions, CFG.robot.joint_names, "gripper_driver", [0.0, 0.8])
        assert err.value.reason == Reason.MALFORMED_JOINT_STATE
    check_monotonic_stamp(None, 1.0)
    check_monotonic_stamp(1.0, 1.0)
    with pytest.raises(InputError):
        check_monotonic_stamp(1.0, 0.9)


def test_position_prediction_integrates_every_command_since_the_reading() -> None:
    """A reading older than the previous tick is advanced through each command in force since it was
    taken, not by the last command alone (the fault campaign's 15 mrad / 3 mm excursions)."""
    sup = supervisor()
    q = posture()
    v0, v1, v2 = np.full(7, 0.3), np.full(7, 0.2), np.full(7, -0.1)
    sup.command_history.extend([(-0.10, v0), (0.0, v1), (0.05, v2)])
    sup.previous_velocity = v2
    predicted = sup.predicted_positions(JointSample(q, -0.02, 0.0), now=0.08)
    np.testing.assert_allclose(predicted, q + v0 * 0.02 + v1 * 0.05 + v2 * 0.03)
    # the age is capped at the stale limit: nothing before now - stale_after counts
    stale = sup.limits.stale_after_seconds
    capped = sup.predicted_positions(JointSample(q, -5.0, 0.0), now=0.08)
    np.testing.assert_allclose(capped, q + sup.displacement_since(0.08 - stale, 0.08))


def test_command_history_follows_the_ticks_and_stays_short() -> None:
    sup = supervisor()
    period = sup.limits.control_period
    last_tick = run_until_full_speed(sup) - period
    times = [t for t, _ in sup.command_history]
    assert times == sorted(times) and times[-1] == pytest.approx(last_tick)
    assert times[-1] - times[1] <= sup.limits.stale_after_seconds + period + 1e-9
    np.testing.assert_array_equal(sup.command_history[-1][1], sup.previous_velocity)
    # the clock going back (a restarted twin) starts the history afresh
    sup.tick(0.0, *fresh(0.0))
    assert [t for t, _ in sup.command_history] == [0.0]
