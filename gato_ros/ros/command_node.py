"""The command node: the only node that moves the arm.

On each tick it maps the newest policy action through the Cartesian velocity controller
(gato_ros.control), runs the result through the safety supervisor and limiter (gato_ros.safety), and
publishes the joint command (JOINT_VELOCITY_COMMAND, or a one-point JOINT_TRAJECTORY_COMMAND when
``safety.command_interface=trajectory``) and the GRIPPER_COMMAND, on every tick, holds included.

Ticks. With ``safety.act_on_arrival`` (default) a fresh valid action is acted on at once: no waiting up to
a period for the timer (which also made the lock-step twin apply each action one period late). The
control-period timer keeps the watchdog: it ticks whenever no action has been acted on for
`TIMER_COVER_PERIODS` periods, so a late or dead policy is held exactly as before
(stale after ``safety.stale_after_periods``). Two ticks never share one clock reading: an action arriving at
the very reading of the last tick (a discrete sim clock: a watchdog tick on the clock update, or the
previous, late action) replaces that tick, undone and ticked again with the newer action, as if it had come
first; one arriving less than `MIN_ARRIVAL_INTERVAL_PERIODS` after the last tick (a continuous clock) is
acted on once that interval has passed (a one-shot timer). So a flood of actions cannot raise the command
rate above one per interval, or one per clock reading, and a policy that runs late on one step does not
push its next action a whole period back. Without act-on-arrival, the timer alone ticks, every period.
Under sim time the node's time is the cell's as far as it can tell (`CommandNode.cell_now_s`): its clock,
or the newest joint state's stamp when that leads it, since an action can arrive before the clock update
of the observation it answers.

Never crashes on input: a malformed action or joint state (wrong length, NaN, missing joint names, a
stamp going back) is logged (rate-limited) and holds the arm until a valid one arrives; a joint state that
repeats the previous stamp is not a new reading and does not keep the watchdog from holding; an exception in
the tick is caught, logged, and a hold is published instead. E-stop: ESTOP_REQUEST (True latches),
ESTOP_SERVICE, RELEASE_SERVICE (refused while the e-stop input is asserted), ENABLE_SERVICE; the latched
state goes out on ESTOP_STATE, and every clamp and hold counter on DIAGNOSTICS.

    python -m gato_ros.ros.command_node [key=value ...] [--ros-args ...]
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from omegaconf import DictConfig
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gato_ros.control import ArmKinematics, CartesianVelocityController
from gato_ros.ros import contract
from gato_ros.ros.messages import time_msg
from gato_ros.ros.runtime import GatoNode, run_node
from gato_ros.safety import (
    CommandRequest,
    InputError,
    JointSample,
    Reason,
    SafeCommand,
    SafetyConfigError,
    SafetyLimits,
    SafetySupervisor,
    parse_action,
    parse_joint_state,
)
from gato_ros.safety.inputs import check_monotonic_stamp
from gato_ros.safety.limits import is_real_scalar

COMMAND_INTERFACES = ("velocity", "trajectory")
POLICY, TELEOP = "policy", "teleop"  # the action sources the command node can obey (one at a time)
DIAGNOSTIC_NAME = "gato_ros: safety"
# Act on arrival: the timer stays quiet while actions were acted on within this many periods...
TIMER_COVER_PERIODS = 1.5
# ...and an action closer than this to the previous tick waits for the timer.
MIN_ARRIVAL_INTERVAL_PERIODS = 0.5
# Holds that are the normal state of a stack at rest (logged at info, not as warnings).
QUIET_HOLDS = frozenset({Reason.DISABLED, Reason.NO_ACTION, Reason.NO_JOINT_STATE})


@dataclass(frozen=True)
class TickUndo:
    """What a tick changed, to undo it when a newer action arrives at the same clock reading."""

    at_s: float  # the tick's clock reading
    kind: str  # "timer" | "arrival" (| "deferred")
    supervisor: dict[str, Any]  # SafetySupervisor.snapshot() before the tick
    last_tick_s: float | None
    last_action_tick_s: float | None


def config_flag(value: object, name: str) -> bool:
    """A YAML boolean; a string such as "false" would be truthy and silently enable a real arm."""
    if not isinstance(value, bool):
        raise SafetyConfigError(f"{name} must be true or false, got {value!r}")
    return value


def positive_seconds(value: object, name: str) -> float:
    seconds = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(seconds) and seconds > 0.0):
        raise SafetyConfigError(f"{name} must be finite and > 0, got {value!r}")
    return seconds


class CommandNode(GatoNode):
    """Latest action -> Cartesian controller -> safety supervisor/limiter -> arm and gripper commands."""

    SETTINGS = ("control", "safety", "robot")

    def __init__(self, cfg: DictConfig, **kwargs: Any) -> None:
        super().__init__("command_node", cfg, **kwargs)
        safety = cfg.safety
        self.limits = SafetyLimits.from_config(cfg)
        self.command_interface = str(safety.command_interface)
        if self.command_interface not in COMMAND_INTERFACES:
            allowed = " | ".join(COMMAND_INTERFACES)
            raise SafetyConfigError(
                f"safety.command_interface must be {allowed}, got {self.command_interface!r}"
            )
        kinematics = ArmKinematics(cfg.robot)
        self.controller = CartesianVelocityController(cfg, kinematics)
        lead_periods = float(safety.get("max_stamp_lead_periods", 1.2))
        if not (math.isfinite(lead_periods) and 0.0 <= lead_periods <= 2.0):
            raise SafetyConfigError(f"safety.max_stamp_lead_periods must be in [0, 2], got {lead_periods!r}")
        self.max_stamp_lead_s = lead_periods * self.limits.control_period
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self.supervisor = SafetySupervisor(
            self.limits,
            lambda q: kinematics.tool_state(q).position,
            start_enabled=config_flag(safety.start_enabled, "safety.start_enabled"),
            stamp_lead_s=self.max_stamp_lead_s,
        )
        self.joint_names = list(cfg.robot.joint_names)
        self.gripper_joint = str(cfg.robot.gripper.joint_name)
        self.gripper_range = list(cfg.robot.gripper.driver_range)
        self.act_on_arrival = config_flag(safety.get("act_on_arrival", False), "safety.act_on_arrival")
        self.action_source = str(safety.get("action_source", POLICY))
        if self.action_source not in (POLICY, TELEOP):
            raise SafetyConfigError(
                f"safety.action_source must be {POLICY} or {TELEOP}, got {self.action_source!r}"
            )
        self.log_period_s = positive_seconds(safety.log_period_s, "safety.log_period_s")
        diagnostics_period_s = positive_seconds(safety.diagnostics_period_s, "safety.diagnostics_period_s")
        self._last_log: dict[str, float] = {}

        self.latest_action: tuple[np.ndarray, float] | None = None  # (action, receive time)
        self.latest_joints: JointSample | None = None
        self.action_fault: Reason | None = None
        self.joint_fault: Reason | None = None
        self.last_joint_stamp: float | None = None  # header stamp, for the monotonicity check
        self.events: Counter[str] = Counter()  # messages and ticks, alongside the supervisor's reasons
        self._published_estop: bool | None = None
        self._holding_reasons: frozenset[Reason] | None = None
        self.last_tick_s: float | None = None  # node clock of the last tick (either kind)
        self.last_action_tick_s: float | None = (
            None  # node clock of the last tick that acted on a fresh action
        )
        self.action_pending = False  # a valid action arrived that no tick has acted on yet
        self.stale_hold_latencies_s: list[float] = []  # action receipt -> first stale hold, per hold
        self.stale_hold_last_at_s: float | None = None  # node clock of the newest stale hold's first tick
        self._tick_undo: TickUndo | None = None  # the newest tick's, for a same-reading replacement
        self._stale_holding = False

        if self.command_interface == "velocity":
            self.velocity_pub = self.publisher(contract.JOINT_VELOCITY_COMMAND)
        else:
            self.trajectory_pub = self.publisher(contract.JOINT_TRAJECTORY_COMMAND)
        self.gripper_pub = self.publisher(contract.GRIPPER_COMMAND)
        self.estop_pub = self.publisher(contract.ESTOP_STATE)
        self.diagnostics_pub = self.publisher(contract.DIAGNOSTICS)
        self.source_pub = self.publisher(contract.ACTION_SOURCE)
        self.subscription(contract.ACTION, self.on_action)
        self.subscription(contract.TELEOP_ACTION, self.on_teleop_action)
        self.service(contract.TAKEOVER_SERVICE, self.on_takeover_service)
        self.subscription(contract.JOINT_STATES, self.on_joint_state)
        self.subscription(contract.ESTOP_REQUEST, self.on_estop_request)
        self.service(contract.ESTOP_SERVICE, self.on_estop_service)
        self.service(contract.RELEASE_SERVICE, self.on_release_service)
        self.service(contract.ENABLE_SERVICE, self.on_enable_service)
        self.timer = self.create_timer(self.limits.control_period, self.on_timer)
        # one-shot: an action that came too soon after the last tick, acted on once the interval has passed
        self.deferred_timer = self.create_timer(self.limits.control_period, self.on_deferred)
        self.deferred_timer.cancel()
        self.diagnostics_timer = self.create_timer(diagnostics_period_s, self.publish_diagnostics)
        self.publish_estop_state()
        self.publish_action_source()
        state = "enabled" if self.supervisor.enabled else f"disabled (call {contract.ENABLE_SERVICE.name})"
        rate = 1.0 / self.limits.control_period
        trigger = "on each fresh action (timer as watchdog)" if self.act_on_arrival else "on the timer"
        self.get_logger().info(
            f"command node up: {rate:g} Hz, {self.command_interface} interface, commands {trigger}, {state}"
        )

    # -- time --------------------------------------------------------------------------------------
    def cell_now_s(self) -> float:
        """The cell's time as far as this node can tell: its clock, or under sim time the newest accepted
        joint state's stamp where that leads the clock (within ``max_stamp_lead_periods``).

        Under sim time the clock is a message too. The twin writes each tick's observation, then one
        /clock message to every subscriber in turn; on a loaded machine the policy (real-time priority)
        can take the clock, act and have its action here before the twin's write of the clock reaches
        this node. Stamped with the clock, that answer to the tick's observation read a period old, and
        the watchdog held the arm a period later (hold_stale_action in some eval launches, 10-30 per
        400 steps). The joint state of that same observation came before it, so its stamp is a lower
        bound of the cell's time. Ticks, receipts and holds all use this time, so the watchdog's two
        periods are counted in the cell's time. Under wall time (a real cell) the node's clock is the
        cell's: a driver's stamp never moves it."""
        now = self.now_s()
        if self.sim_time and self.last_joint_stamp is not None:
            lead = self.last_joint_stamp - now
            if 0.0 < lead <= self.max_stamp_lead_s:  # more: the clock went back (a restarted twin)
                return self.last_joint_stamp
        return now

    # -- logging -----------------------------------------------------------------------------------
    def should_log(self, key: str) -> bool:
        """At most one line per `key` per safety.log_period_s (wall time): floods stay readable."""
        now = time.monotonic()
        last = self._last_log.get(key)
        if last is not None and now - last < self.log_period_s:
            return False
        self._last_log[key] = now
        return True

    def warn_throttled(self, key: str, message: str) -> None:
        if self.should_log(key):
            self.get_logger().warning(message)

    def info_throttled(self, key: str, message: str) -> None:
        if self.should_log(key):
            self.get_logger().info(message)

    def log_outcome(self, ok: bool, message: str) -> None:
        """Info when an operator request succeeded, a warning when refused (rclpy fixes one severity per
        call site, hence two lines)."""
        if ok:
            self.get_logger().info(message)
        else:
            self.get_logger().warning(message)

    # -- inputs ------------------------------------------------------------------------------------
    # Every callback catches everything: an exception escaping an rclpy callback ends the spin, and with it
    # the ticks. A failure on an input drops that input (hold); one on an e-stop input latches the e-stop.
    def on_action(self, msg: Float64MultiArray) -> None:
        self.on_source_action(msg, POLICY)

    def on_teleop_action(self, msg: Float64MultiArray) -> None:
        self.on_source_action(msg, TELEOP)

    def on_source_action(self, msg: Float64MultiArray, source: str) -> None:
        """An action from `source`: acted on (through every limit) only while it is the selected source; the
        other source's actions are counted and dropped, however valid."""
        if source != self.action_source:
            self.events[f"{source}_actions_ignored"] += 1
            return
        try:
            now = self.cell_now_s()
            action = parse_action(msg.data)
        except Exception as err:
            self.latest_action = None
            self.action_fault = err.reason if isinstance(err, InputError) else Reason.MALFORMED_ACTION
            self.events["malformed_action_messages"] += 1
            self.warn_throttled("action", f"malformed action, holding: {err}")
            return
        self.latest_action, self.action_fault = (action, now), None
        self.action_pending = True
        self.events["action_messages"] += 1
        if now > self.now_s():
            self.events["actions_ahead_of_clock"] += 1
        if self.act_on_arrival:
            # The watchdog's period counts from this receipt: without a newer action the timer ticks at
            # one period (skipped) and at two, where the action is stale: the hold lands at 2 periods.
            self.timer.reset()
            self.on_arrival(now)

    def on_arrival(self, now: float) -> None:
        """Act on a fresh action now, unless there is no joint state to act from yet (then the timer takes
        it, holding as before). A tick at this very clock reading (a discrete sim clock: the watchdog fired
        on the clock update, or the previous action came late, after it) is replaced: undone and ticked
        again with this newer action, as if it had come first. An action less than the minimum interval
        after the last tick is acted on once the interval has passed."""
        if self.latest_joints is None:
            self.events["arrivals_deferred_to_timer"] += 1
            return
        undo = self._tick_undo
        if undo is not None and undo.at_s == now and self.last_tick_s == now:
            self.supervisor.restore(undo.supervisor)
            self.last_tick_s, self.last_action_tick_s = undo.last_tick_s, undo.last_action_tick_s
            self._tick_undo = None
            self.events[f"{undo.kind}_ticks_replaced"] += 1
        min_interval = MIN_ARRIVAL_INTERVAL_PERIODS * self.limits.control_period
        if self.last_tick_s is not None and 0.0 <= now - self.last_tick_s < min_interval:
            self.events["arrivals_deferred"] += 1
            if self.deferred_timer.is_canceled():
                wait_s = self.last_tick_s + min_interval - now
                self.deferred_timer.timer_period_ns = max(1, round(wait_s * 1e9))
                self.deferred_timer.reset()
            return
        self.tick("arrival")

    def on_deferred(self) -> None:
        """The one-shot for an action that arrived too soon after the last tick: act on it now (the newest
        action, if more came meanwhile), unless a tick already did."""
        self.deferred_timer.cancel()
        if self.action_pending:
            self.tick("deferred")

    def on_timer(self) -> None:
        """The control-period timer: every tick without act-on-arrival; with it, only when no action was
        acted on for TIMER_COVER_PERIODS (the watchdog's hold, a late policy) or one waits (deferred)."""
        now = self.cell_now_s()
        if self.act_on_arrival and not self.action_pending and self.last_action_tick_s is not None:
            since = now - self.last_action_tick_s
            # Never skip the tick where the newest action turns stale: the hold is due now. (An action
            # deferred to the timer is acted on a period after its receipt; counting the quiet time from
            # that tick alone skipped the hold's tick and held a period late, at 3 periods: issue 13.)
            hold_due = self.latest_action is None or self.supervisor.is_stale(self.latest_action[1], now)
            if not hold_due and 0.0 <= since < TIMER_COVER_PERIODS * self.limits.control_period:
                self.events["timer_ticks_skipped"] += 1
                return
        self.tick("timer")

    def tick(self, kind: str) -> None:
        """One tick of `kind` (counted as ``{kind}_ticks``), undone if a newer action comes at its reading."""
        self._tick_undo = TickUndo(
            self.cell_now_s(), kind, self.supervisor.snapshot(), self.last_tick_s, self.last_action_tick_s
        )
        self.on_tick()
        self.events[f"{kind}_ticks"] += 1

    def on_joint_state(self, msg: JointState) -> None:
        try:
            now = self.now_s()
            stamp = contract.stamp_to_seconds(msg.header.stamp)
            if self.sim_time and now == 0.0:
                # Under sim time ROS reads 0 as "no clock message yet": this node's /clock subscription
                # can match the twin's writer after its joint-state subscription does (discovery order),
                # so the first readings may come before any clock. Nothing to judge them by; the twin
                # sends a new one every tick, so this one is dropped (and named for what it is).
                self.events["joint_states_before_clock"] += 1
                self.warn_throttled(
                    "joint_state_before_clock",
                    f"joint state stamped {stamp:.3f} s came before this node's first {contract.CLOCK.name} "
                    "message (use_sim_time): dropped until the clock starts",
                )
                return
            if is_real_scalar(stamp) and stamp - now > self.max_stamp_lead_s:
                # From the future (a bogus or foreign clock): dropped, and never the reference the
                # monotonicity check holds later readings to; the last good reading ages on.
                self.events["future_joint_state_stamps"] += 1
                self.warn_throttled(
                    "joint_state_future",
                    f"joint state stamped {stamp - now:.3f} s ahead of this node's clock "
                    f"(tolerance {self.max_stamp_lead_s:.3f} s): dropped",
                )
                return
            check_monotonic_stamp(self.last_joint_stamp, stamp)
            parsed = parse_joint_state(
                msg.name, msg.position, self.joint_names, self.gripper_joint, self.gripper_range
            )
        except Exception as err:
            self.latest_joints = None
            self.joint_fault = err.reason if isinstance(err, InputError) else Reason.MALFORMED_JOINT_STATE
            self.events["malformed_joint_state_messages"] += 1
            self.warn_throttled("joint_state", f"malformed joint state, holding: {err}")
            return
        if stamp == self.last_joint_stamp:
            # The same stamp again is the same reading re-sent (a frozen driver or bridge republishing its
            # cache): it must not look fresh, so the watchdog still sees the reading age and holds.
            self.events["repeated_joint_state_stamps"] += 1
            self.warn_throttled(
                "joint_state_repeat", f"joint state repeats stamp {stamp:.6f} s: not a new reading, ignored"
            )
            return
        self.last_joint_stamp = stamp
        # Fresh is judged by the reading's own stamp (a reading stamped long ago but delivered now is old);
        # a lead within the tolerance is the twin's publishing order, and the supervisor accepts it.
        sampled = stamp
        if now - sampled > self.limits.stale_after_seconds:
            self.events["stale_joint_state_arrivals"] += 1
            self.warn_throttled(
                "joint_state_old",
                f"joint state arrived {now - sampled:.3f} s after its stamp (stale after "
                f"{self.limits.stale_after_seconds:.3f} s): holding; check the driver's clock and latency",
            )
        self.latest_joints = JointSample(parsed.positions, sampled, parsed.gripper_closed_fraction)
        self.joint_fault = None
        self.events["joint_state_messages"] += 1

    def on_estop_request(self, msg: Bool) -> None:
        try:
            asserted = msg.data
            if not isinstance(asserted, bool):
                raise TypeError(f"e-stop data must be a bool, got {asserted!r}")
        except Exception as err:  # unreadable: treat it as asserted, the safe reading
            asserted = True
            self.warn_throttled("estop_topic_malformed", f"malformed e-stop message, latching: {err!r}")
        self.supervisor.set_estop_input(asserted, self.cell_now_s())
        if asserted:
            self.warn_throttled("estop_topic", f"e-stop latched by {contract.ESTOP_REQUEST.name}")
        self.publish_estop_state()

    def on_estop_service(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.supervisor.request_estop(self.cell_now_s())
        self.get_logger().warning(f"e-stop latched by {contract.ESTOP_SERVICE.name}")
        self.publish_estop_state()
        response.success, response.message = True, "e-stop latched"
        return response

    def on_release_service(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            ok, message = self.supervisor.release_estop(self.cell_now_s())
        except Exception as err:
            ok, message = False, f"release failed, e-stop stays latched: {err!r}"
        self.log_outcome(ok, f"e-stop release: {message}")
        self.publish_estop_state()
        response.success, response.message = ok, message
        return response

    def on_takeover_service(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        try:
            takeover = request.data
            if not isinstance(takeover, bool):
                raise TypeError(f"takeover data must be a bool, got {takeover!r}")
            ok, message = True, self.select_source(TELEOP if takeover else POLICY)
        except Exception as err:  # the source stays as it was
            ok, message = False, f"takeover request failed, still obeying {self.action_source}: {err!r}"
        self.log_outcome(ok, f"takeover({request.data!r}): {message}")
        response.success, response.message = ok, message
        return response

    def select_source(self, source: str) -> str:
        """Obey `source` from now on: the other source's last action is dropped at once (never acted on
        again) and the arm stops and ramps in on the new source's first action. Logged, counted on
        /diagnostics and published on ACTION_SOURCE, so recordings can tag every step with its source."""
        if source == self.action_source:
            return f"already obeying {source}"
        previous, self.action_source = self.action_source, source
        self.latest_action, self.action_fault, self.action_pending = None, None, False
        self.supervisor.restart_ramp_in()
        self.events["action_source_switches"] += 1
        self.events[f"switches_to_{source}"] += 1
        self.publish_action_source()
        self.get_logger().info(f"action source: {previous} -> {source}; the arm stops and ramps in")
        return f"obeying {source} (was {previous}), ramping in"

    def on_enable_service(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        try:
            enable = request.data
            if not isinstance(enable, bool):
                raise TypeError(f"enable data must be a bool, got {enable!r}")
            ok, message = self.supervisor.set_enabled(enable, self.cell_now_s())
        except Exception as err:  # refused: a failed enable must not leave the arm enabled
            self.supervisor.set_enabled(False, self.cell_now_s())
            ok, message = False, f"enable request failed, disabled: {err!r}"
        self.log_outcome(ok, f"enable({request.data!r}): {message}")
        response.success, response.message = ok, message
        return response

    # -- control tick ------------------------------------------------------------------------------
    def on_tick(self) -> None:
        """Compute and publish this tick's command; whatever fails, a hold is published."""
        now = self.cell_now_s()
        self.last_tick_s = now
        if self.action_pending:  # this tick acts on a fresh action (on arrival, or deferred to the timer)
            self.last_action_tick_s = now
            self.action_pending = False
        try:
            last_tick = self.supervisor.last_tick
            if last_tick is not None and now < last_tick:
                # The clock went back (the twin restarted under sim time): stamps from before the jump
                # would otherwise read as "going back" until the new clock passed the old one.
                self.last_joint_stamp = None
                self.warn_throttled(
                    "clock", f"clock went back from {last_tick:.3f} s to {now:.3f} s: holding"
                )
            command = self.compute_command(now)
        except Exception as err:
            self.events["tick_exceptions"] += 1
            self.warn_throttled("tick", f"control tick failed, holding: {err!r}")
            command = self.supervisor.emergency_hold(now)
        self.publish_command(command, now)
        try:
            self.note_stale_hold(command, now)
            self.log_hold_transitions(command)
        except Exception as err:  # logging must never stop the ticks
            self.events["log_errors"] += 1
            self.warn_throttled("log", f"could not log the hold state: {err!r}")

    def note_stale_hold(self, command: SafeCommand, now: float) -> None:
        """The watchdog's latency: from the receipt of the last action to the first hold for its age
        (node clock), kept for /diagnostics (the promise: at most stale_after_periods). Each new hold is
        published on /diagnostics at once, so every hold's latency is seen, not only the newest per period."""
        stale = command.hold and Reason.STALE_ACTION in command.reasons
        if stale and not self._stale_holding and self.latest_action is not None:
            latency = now - self.latest_action[1]
            self.stale_hold_latencies_s.append(latency)
            self.stale_hold_last_at_s = now
            self.publish_diagnostics()
            period = self.limits.control_period
            if latency > self.limits.stale_after_seconds + 1e-6:
                self.warn_throttled(
                    "stale_hold_late",
                    f"stale-action hold came {latency / period:.2f} periods after the action",
                )
        self._stale_holding = stale

    def compute_command(self, now: float) -> SafeCommand:
        joints = self.latest_joints
        request = None
        if self.latest_action is not None:
            action, received = self.latest_action
            if joints is None:  # held for the missing joint state; the request itself is fine
                joint_velocity = np.zeros(len(self.joint_names))
            else:
                joint_velocity = self.controller.joint_velocity(joints.positions, action)
            request = CommandRequest(joint_velocity, self.controller.gripper_command(action), received)
        faults = [fault for fault in (self.action_fault, self.joint_fault) if fault is not None]
        return self.supervisor.tick(now, joints, request, faults)

    def publish_command(self, command: SafeCommand, now: float) -> None:
        try:
            if self.command_interface == "velocity":
                self.velocity_pub.publish(Float64MultiArray(data=command.joint_velocity.tolist()))
            else:
                self.trajectory_pub.publish(self.trajectory(command, now))
            if command.gripper is not None:
                self.gripper_pub.publish(Float64MultiArray(data=[float(command.gripper)]))
            self.events["commands_published"] += 1
        except Exception as err:  # e.g. the context is shutting down
            self.events["publish_errors"] += 1
            self.warn_throttled("publish", f"could not publish the command: {err!r}")
        self.publish_estop_state()

    def trajectory(self, command: SafeCommand, now: float) -> JointTrajectory:
        """One point a control period ahead of where the supervisor estimates the joints are now (the
        reading advanced by the command in force since: a target at the older reading would pull a moving
        arm back); a command without a fresh joint state is the empty trajectory, which a ros2_control
        joint trajectory controller treats as "stop and hold where you are"."""
        msg = JointTrajectory()
        msg.header.stamp = time_msg(now)
        msg.joint_names = list(self.joint_names)
        if command.joint_positions is None:
            return msg
        period = self.limits.control_period
        point = JointTrajectoryPoint()
        point.positions = (command.joint_positions + command.joint_velocity * period).tolist()
        point.velocities = command.joint_velocity.tolist()
        nanos = round(period * 1e9)
        point.time_from_start = Duration(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)
        msg.points = [point]
        return msg

    def log_hold_transitions(self, command: SafeCommand) -> None:
        """Log when the arm starts or stops holding, or holds for other reasons (rate-limited: a flapping
        input must not flood the log)."""
        if not command.hold:
            self.log_clamps(command)
        holding = frozenset(r for r in command.reasons if r.is_hold) if command.hold else frozenset()
        if holding == self._holding_reasons:
            return
        self._holding_reasons = holding
        if not holding:
            self.info_throttled("moving", "moving: ramping in")
            return
        text = ", ".join(sorted(holding))
        if holding <= QUIET_HOLDS:
            self.info_throttled(f"hold:{text}", f"holding: {text}")
        else:
            self.warn_throttled(f"hold:{text}", f"holding the arm: {text}")

    def log_clamps(self, command: SafeCommand) -> None:
        """Every clamp of a moving command, with its reasons (rate-limited per set of reasons; the ramp-in
        is the normal start of motion, logged as such, not a clamp)."""
        clamps = sorted(r for r in command.reasons if not r.is_hold and r is not Reason.RAMP_IN)
        if clamps:
            text = ", ".join(clamps)
            self.info_throttled(f"clamp:{text}", f"command clamped: {text}")

    # -- status ------------------------------------------------------------------------------------
    def publish_estop_state(self) -> None:
        latched = self.supervisor.estop_latched
        if latched != self._published_estop:
            try:
                self.estop_pub.publish(Bool(data=latched))
            except Exception as err:  # e.g. the context is shutting down; retried on the next change/tick
                self.events["publish_errors"] += 1
                self.warn_throttled("publish_estop", f"could not publish the e-stop state: {err!r}")
                return
            self._published_estop = latched

    def publish_action_source(self) -> None:
        try:
            self.source_pub.publish(String(data=self.action_source))
        except Exception as err:  # e.g. the context is shutting down
            self.events["publish_errors"] += 1
            self.warn_throttled("publish_source", f"could not publish the action source: {err!r}")

    def diagnostic_status(self) -> DiagnosticStatus:
        sup = self.supervisor
        if sup.estop_latched:
            level, message = DiagnosticStatus.ERROR, "e-stop latched"
        elif sup.holding:
            level, message = DiagnosticStatus.WARN, "holding"
        else:
            level, message = DiagnosticStatus.OK, "moving"
        values = dict(sup.status())
        values["action_source"] = self.action_source
        values.update({key: str(count) for key, count in sorted(self.events.items())})
        if self.stale_hold_latencies_s:
            period = self.limits.control_period
            values["stale_hold_latency_last_periods"] = f"{self.stale_hold_latencies_s[-1] / period:.3f}"
            values["stale_hold_latency_max_periods"] = f"{max(self.stale_hold_latencies_s) / period:.3f}"
            values["stale_hold_last_at_s"] = f"{self.stale_hold_last_at_s:.6f}"
        values["stale_holds"] = str(len(self.stale_hold_latencies_s))
        return DiagnosticStatus(
            level=level,
            name=DIAGNOSTIC_NAME,
            message=message,
            hardware_id=str(self.cfg.robot.name),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish_diagnostics(self) -> None:
        try:
            msg = DiagnosticArray(status=[self.diagnostic_status()])
            msg.header.stamp = time_msg(self.cell_now_s())
            self.diagnostics_pub.publish(msg)
        except Exception as err:
            self.warn_throttled("diagnostics", f"could not publish diagnostics: {err!r}")

    def close(self) -> None:
        """On shutdown, leave the arm with a zero-velocity command."""
        now = self.cell_now_s()
        self.publish_command(self.supervisor.emergency_hold(now, Reason.DISABLED), now)


def main(argv: list[str] | None = None) -> int:
    return run_node(CommandNode, argv, priority="command_node")


if __name__ == "__main__":
    sys.exit(main())
