"""End to end: twin, policy and command node as separate processes over real DDS on localhost.

The policy is a randomly initialised tiny checkpoint written by the test; the twin runs in lock-step, so
the episode runs as fast as the three processes allow and sim-time intervals are exact.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import rclpy
import torch
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.model import build_model
from gato_ros.ros import contract
from gato_ros.ros.launcher import NodeProcesses, isolated_domain_id, launch_overrides, ros_domain, stack_plan

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 120.0
FLOW_TIMEOUT_S = 180.0
E2E_OVERRIDES = [
    "ros.twin.realtime_factor=0",  # lock-step
    "ros.twin.lockstep_wait_s=0.1",  # a dead node costs 0.1 s of wall time per tick, not a frozen clock
    "control.episode_seconds=30",
]


@dataclass
class Received:
    msg: object
    clock: float  # the newest /clock value when it arrived (sim s)


@dataclass
class Probe:
    """Listens to the stack from the test process, stamping every message with the sim clock at receipt."""

    context: Context
    node: object
    clock: float = 0.0
    log: dict[str, list[Received]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = True

    def on(self, topic: contract.Topic) -> Callable:
        store = self.log.setdefault(topic.name, [])

        def callback(msg) -> None:
            with self.lock:
                if topic is contract.CLOCK:
                    self.clock = contract.stamp_to_seconds(msg.clock)
                store.append(Received(msg, self.clock))

        return callback

    def get(self, topic: contract.Topic) -> list[Received]:
        with self.lock:
            return list(self.log[topic.name])

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def start_probe() -> tuple[Probe, SingleThreadedExecutor, threading.Thread]:
    context = Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("e2e_probe", context=context)
    probe = Probe(context, node)
    for topic in (
        contract.CLOCK,
        contract.ACTION,
        contract.POLICY_LATENCY,
        contract.JOINT_VELOCITY_COMMAND,
        contract.GRIPPER_COMMAND,
        contract.JOINT_STATES,
        contract.EPISODE_STATUS,
        contract.DIAGNOSTICS,
    ):
        node.create_subscription(topic.msg_type, topic.name, probe.on(topic), topic.qos.profile())
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin() -> None:
        while probe.running and context.ok():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return probe, executor, thread


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = load_config()
    torch.manual_seed(0)  # the same random policy every run (how far it moves the arm is part of the test)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("e2e") / "random_tiny", build_model(base), base)
    overrides = launch_overrides(True, str(checkpoint), "cpu", E2E_OVERRIDES)
    cfg = load_config(overrides)
    with ros_domain(isolated_domain_id()):
        probe, executor, thread = start_probe()
        processes = NodeProcesses(env=dict(os.environ))
        for spec in stack_plan(cfg, True, overrides):
            processes.start(spec)
        try:
            yield cfg, processes, probe
        finally:
            exits = processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)
            probe.running = False
            thread.join(timeout=2.0)
            executor.shutdown()
            probe.node.destroy_node()
            rclpy.shutdown(context=probe.context)
        # every node that was not killed on purpose shuts down cleanly on SIGINT
        assert all(code == 0 for name, code in exits.items() if name != "policy"), exits


def moving(commands: list[Received], count: int) -> bool:
    """The newest `count` velocity commands all move the arm."""
    tail = commands[-count:]
    return len(tail) == count and all(np.abs(r.msg.data).max() > 1e-6 for r in tail)


def test_stack_runs_an_episode_on_the_twin(stack) -> None:
    cfg, processes, probe = stack
    assert probe.wait_for(lambda: len(probe.get(contract.ACTION)) > 0, STARTUP_TIMEOUT_S), "no policy action"
    steps_wanted = 40  # 2 s of sim

    def episode_steps() -> int:
        statuses = probe.get(contract.EPISODE_STATUS)
        return max((int(json.loads(r.msg.data)["step"]) for r in statuses), default=0)

    assert probe.wait_for(lambda: episode_steps() >= steps_wanted, FLOW_TIMEOUT_S), episode_steps()
    assert not processes.exited(), [n.spec.name for n in processes.exited()]

    actions = probe.get(contract.ACTION)
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    for r in actions:
        action = np.asarray(r.msg.data)
        assert action.shape == (5,) and np.all(action >= low) and np.all(action <= high)
    assert probe.get(contract.POLICY_LATENCY), "no latency reports"

    # commands flowed, every one inside the safety limits
    velocity = probe.get(contract.JOINT_VELOCITY_COMMAND)
    gripper = probe.get(contract.GRIPPER_COMMAND)
    assert len(velocity) >= steps_wanted // 2 and gripper
    speed_limit = cfg.safety.velocity_fraction * np.asarray(cfg.robot.velocity_limit)
    for r in velocity:
        qdot = np.asarray(r.msg.data)
        assert qdot.shape == (7,) and np.all(np.isfinite(qdot))
        assert np.all(np.abs(qdot) <= speed_limit + 1e-9), qdot
    # per-tick change limit between consecutive commands, except where a joint brakes (safety/limits.py)
    change_limit = np.asarray(cfg.safety.max_velocity_change_per_tick)
    for previous, current in itertools.pairwise(velocity):
        p, v = np.asarray(previous.msg.data), np.asarray(current.msg.data)
        brakes = (np.sign(v) * np.sign(p) >= 0) & (np.abs(v) <= np.abs(p))
        assert np.all(brakes | (np.abs(v - p) <= change_limit + 1e-9)), (p, v)
    for r in gripper:
        assert len(r.msg.data) == 1 and abs(r.msg.data[0]) <= cfg.robot.gripper.command_range[1]
    assert any(np.abs(r.msg.data).max() > 1e-3 for r in velocity), "the policy never moved the arm"

    # the twin moved: joint positions changed within the episode (judged by progress, not by a fixed number
    # of ticks: on a loaded machine some ticks are stale-action holds, so it may take more of them)
    def joint_states() -> np.ndarray:
        return np.asarray([r.msg.position[:7] for r in probe.get(contract.JOINT_STATES)])

    def travel() -> float:
        states = joint_states()
        return float(np.abs(states - states[0]).max()) if len(states) else 0.0

    assert probe.wait_for(lambda: travel() > 0.01, FLOW_TIMEOUT_S), travel()
    states = joint_states()
    assert np.all(states >= np.asarray(cfg.robot.joint_min))
    assert np.all(states <= np.asarray(cfg.robot.joint_max))


def test_arm_holds_when_the_policy_dies(stack) -> None:
    cfg, processes, probe = stack
    period = 1.0 / cfg.control.rate_hz

    # kill the policy while the arm is being driven (not while a limit or the ramp already holds it)
    def driven() -> bool:
        return moving(probe.get(contract.JOINT_VELOCITY_COMMAND), 3)

    if not probe.wait_for(driven, FLOW_TIMEOUT_S / 2):  # a fresh start pose, away from the limits
        reset = probe.node.create_client(contract.RESET_EPISODE.srv_type, contract.RESET_EPISODE.name)
        reset.call_async(contract.RESET_EPISODE.srv_type.Request())
        assert probe.wait_for(driven, FLOW_TIMEOUT_S / 2), "the arm is never driven"
    processes.kill("policy", signal.SIGKILL)
    kill_clock = probe.clock
    assert probe.wait_for(lambda: probe.clock >= kill_clock + 12 * period, 60), "the clock stopped"
    assert processes.exited() and processes.exited()[0].spec.name == "policy"

    last_action = probe.get(contract.ACTION)[-1].clock
    after = [r for r in probe.get(contract.JOINT_VELOCITY_COMMAND) if r.clock > last_action]
    zero = [np.abs(r.msg.data).max() == 0.0 for r in after]
    assert True in zero, "no hold after the policy died"
    first_hold = after[zero.index(True)].clock
    # In the command node's own ticks: the action is stale after two periods, so at most two moving
    # commands follow the last action and the third tick holds.
    assert zero.index(True) <= 2, zero
    # In sim time as the probe hears it: the next action was due one period after the last and the hold
    # comes at most two periods after that; plus one period because the probe stamps each message with the
    # newest /clock it has taken, and may take the next tick's clock before the hold command itself.
    assert first_hold - last_action <= 4 * period + 1e-6, (first_hold - last_action) / period
    assert all(zero[zero.index(True) :]), "the arm moved again without a policy"

    # On the command node's own clock (its diagnostics): within stale_after_periods (2) of the last action,
    # never later. (3.0 was seen in about one run in ten until the timer stopped skipping the tick where an
    # action deferred to it turned stale: issue 13, test_command_node's deferred-action test.)
    def hold_latency() -> float | None:
        for received in reversed(probe.get(contract.DIAGNOSTICS)):
            if received.clock <= first_hold:  # published before the kill's hold: not its latency
                break
            for status in received.msg.status:
                values = {kv.key: kv.value for kv in status.values}
                if "stale_hold_latency_last_periods" in values:
                    return float(values["stale_hold_latency_last_periods"])
        return None

    assert probe.wait_for(lambda: hold_latency() is not None, 30), "no hold latency on /diagnostics"
    assert hold_latency() <= float(cfg.safety.stale_after_periods) + 1e-6, hold_latency()
    print(f"policy killed: hold {hold_latency()} periods after its last action (node clock)")
    # and the twin's arm actually stops
    state = probe.get(contract.JOINT_STATES)[-1].msg
    assert np.abs(state.velocity[:7]).max() < 0.02, state.velocity
    assert "command_node" not in [n.spec.name for n in processes.exited()]
