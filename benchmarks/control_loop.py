"""Observation-to-command latency and achieved control rate of the whole ROS 2 stack on this machine.

Starts the sim stack of `gato-ros launch stacking sim:=true` (twin, policy, command node: separate
processes, real DDS on an isolated ROS_DOMAIN_ID) with a randomly initialised checkpoint of the chosen
model size (latency does not depend on the weights), listens from this process and prints:

- observation -> command latency, p50/p99: from the twin publishing an observation (the joint state of
  tick t) to the command node publishing the first joint velocity command after the policy's action for
  that observation. Every time is the publisher's: the middleware's source timestamp of the message (one
  host clock), so neither the order in which DDS delivers a message to its subscribers nor this
  listener's own scheduling enters a figure (a command node preempting the policy mid-publication
  received an action, and answered it, before this listener did). The twin renders the tick's camera
  frames after it sends the joint state, so with an image policy this span includes the twin's rendering
  (the real cell's cameras run on their own);
- the same from the observation being complete at the policy (its newest part, e.g. the last camera
  frame, received: where POLICY_LATENCY starts), the span the stack itself can act on;
- its parts: the policy's own POLICY_LATENCY (observation receipt -> action publication, inside the
  policy node) and action -> next command;
- achieved rates: policy actions and joint commands per sim second against ``control.rate_hz``, and the
  twin's real-time factor (sim seconds per wall second) against ``ros.twin.realtime_factor``.

    .venv/bin/python benchmarks/control_loop.py                        # tiny model, CPU, 20 s
    .venv/bin/python benchmarks/control_loop.py --seconds 60 --model small
    .venv/bin/python benchmarks/control_loop.py --load 2          # beside two CPU-bound processes

It also prints each node's CPU use over the measured window (cores: CPU seconds per wall second), so a
rate that falls short can be traced to the process that starves the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import MessageInfo

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.model import build_model
from gato_ros.ros import contract
from gato_ros.ros.command_node import DIAGNOSTIC_NAME
from gato_ros.ros.launcher import NodeProcesses, isolated_domain_id, launch_overrides, stack_plan
from gato_ros.ros.runtime import use_realtime_scheduling

LISTENER_REALTIME_PRIORITY = 60  # above ros.realtime_priority's nodes


@dataclass
class Timeline:
    """Wall publication times (system clock, s: the middleware's source timestamps) of what the stack
    publishes, as heard by one listener."""

    observations: list[tuple[float, float]] = field(default_factory=list)  # (wall, stamp)
    actions: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    policy_latency: list[tuple[float, float]] = field(default_factory=list)  # (wall, seconds)
    clock: list[tuple[float, float]] = field(default_factory=list)  # (wall, sim)
    # (wall, the command node's event counters): how each command was triggered (on arrival, deferred
    # to the timer, a same-reading replacement, the watchdog), from its DIAGNOSTICS
    command_events: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> Timeline:
        with self.lock:
            return Timeline(
                list(self.observations),
                list(self.actions),
                list(self.commands),
                list(self.policy_latency),
                list(self.clock),
                list(self.command_events),
            )


def listen(timeline: Timeline) -> tuple[Context, SingleThreadedExecutor, threading.Event]:
    context = Context()
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("control_loop_benchmark", context=context)

    def record(topic: contract.Topic, on_msg) -> None:
        def callback(msg, info: MessageInfo) -> None:
            # The publisher's time (the middleware's source timestamp), not this listener's receipt: the
            # executor serves ready subscriptions in a fixed order, and DDS delivers one message to its
            # subscribers one after the other (a real-time subscriber preempts the publisher between them).
            published = info["source_timestamp"]
            now = published * 1e-9 if published > 0 else time.time()
            with timeline.lock:
                on_msg(now, msg)

        node.create_subscription(topic.msg_type, topic.name, callback, topic.qos.profile())

    record(
        contract.JOINT_STATES,
        lambda now, m: timeline.observations.append((now, contract.stamp_to_seconds(m.header.stamp))),
    )
    record(contract.ACTION, lambda now, m: timeline.actions.append(now))
    record(contract.JOINT_VELOCITY_COMMAND, lambda now, m: timeline.commands.append(now))
    record(contract.POLICY_LATENCY, lambda now, m: timeline.policy_latency.append((now, m.data)))
    record(contract.CLOCK, lambda now, m: timeline.clock.append((now, contract.stamp_to_seconds(m.clock))))
    record(contract.DIAGNOSTICS, lambda now, m: timeline.command_events.extend(command_counters(now, m)))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.05)

    threading.Thread(target=spin, daemon=True).start()
    return context, executor, stop


def command_counters(now: float, msg: DiagnosticArray) -> list[tuple[float, dict[str, int]]]:
    """The command node's integer counters from one DIAGNOSTICS message (none if it is not in it)."""
    out = []
    for status in msg.status:
        if status.name == DIAGNOSTIC_NAME:
            counts = {kv.key: int(kv.value) for kv in status.values if kv.value.isdigit()}
            out.append((now, counts))
    return out


def counter_deltas(t: Timeline, start: float, end: float) -> dict[str, int]:
    """Command node event counts over [start, end): the last report before `start` to the last before
    `end` (reports come every ``safety.diagnostics_period_s``)."""
    before = [c for w, c in t.command_events if w < start]
    within = [c for w, c in t.command_events if w < end]
    if not within:
        return {}
    first, last = (before[-1] if before else {}), within[-1]
    keys = sorted(k for k in last if "tick" in k or "deferred" in k or k == "stale_holds")
    return {k: last[k] - first.get(k, 0) for k in keys}


def start_load(count: int, seconds: float) -> list[int]:
    """`count` CPU-bound competitors (busy loops; pids) that end by themselves after `seconds`, even if this
    process dies first; the run stops them earlier. Normally scheduled, as a user's other work is: this
    real-time process would otherwise pass its SCHED_FIFO on to them."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    normal = (os.SCHED_OTHER, os.sched_param(0))
    argv = [sys.executable, "-c", code]
    return [os.posix_spawn(sys.executable, argv, os.environ, scheduler=normal) for _ in range(count)]


def stop_load(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# An action's POLICY_LATENCY follows it from the same node within this (wall s); the joint state it answers
# came in here at most this much after the policy had its observation (transport).
LATENCY_PAIRING_S = 0.005
ASSOCIATION_SLACK_S = 0.002


def step_starts(t: Timeline, actions: np.ndarray) -> np.ndarray:
    """Per action, when the policy's step for it began here: the action's publication minus the policy's own
    latency for it (POLICY_LATENCY, published right after the action); NaN where none pairs with it."""
    latency_wall = np.array([w for w, _ in t.policy_latency])
    latency = np.array([s for _, s in t.policy_latency])
    starts = np.full(len(actions), np.nan)
    for n, action in enumerate(actions):
        m = np.searchsorted(latency_wall, action)
        if m < len(latency_wall) and latency_wall[m] - action <= LATENCY_PAIRING_S:
            starts[n] = action - latency[m]
    return starts


def loop_latencies(t: Timeline, start: float, end: float) -> dict[str, np.ndarray]:
    """Per action in [start, end): (joint-state) observation -> action, action -> next command, and their
    sum; and complete observation -> command: from the policy holding the whole observation (its newest
    part, e.g. the last camera frame, received: the start of POLICY_LATENCY) to the command here. The joint
    state an action answers is the newest one in when the policy had its observation, not when the action
    came: a step longer than the gap to the next tick would otherwise be charged to that younger one."""
    obs_wall = np.array([w for w, _ in t.observations])
    commands = np.array(t.commands)
    actions = np.array([a for a in t.actions if start <= a < end])
    parts: dict[str, list[float]] = {
        "obs_to_command": [], "obs_to_action": [], "action_to_command": [], "complete_obs_to_command": []
    }  # fmt: skip
    for action, began in zip(actions, step_starts(t, actions), strict=True):
        if np.isnan(began):
            continue
        i = np.searchsorted(obs_wall, began + ASSOCIATION_SLACK_S) - 1  # the newest joint state by then
        j = np.searchsorted(commands, action)  # the first command after the action
        if i < 0 or j >= len(commands):
            continue
        parts["obs_to_command"].append(commands[j] - obs_wall[i])
        parts["obs_to_action"].append(action - obs_wall[i])
        parts["action_to_command"].append(commands[j] - action)
        parts["complete_obs_to_command"].append(commands[j] - began)
    parts_array = {k: np.array(v) for k, v in parts.items()}
    parts_array["policy_in_node"] = np.array([s for w, s in t.policy_latency if start <= w < end])
    return parts_array


def p50_p99_ms(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    p50, p99 = np.percentile(values * 1e3, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "n": len(values)}


def sim_seconds(t: Timeline, start: float, end: float) -> float:
    sims = [s for w, s in t.clock if start <= w < end]
    return (max(sims) - min(sims)) if len(sims) > 1 else 0.0


def percentiles_ms(values: np.ndarray | list[float]) -> str:
    if len(values) == 0:
        return "n/a"
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return f"p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured wall seconds")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="wall seconds skipped after the first action"
    )
    parser.add_argument("--model", default="tiny", help="model config (gato_ros/config/model/*.yaml)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--realtime-factor", type=float, default=1.0)
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument(
        "--load", type=int, default=0, help="CPU-bound processes competing with the stack (busy loops)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--trace", type=Path, help="also write every publication time (the raw timeline, JSON) here"
    )
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides for every node")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gato_control_loop_"))
    base = load_config([f"model={args.model}"])
    checkpoint = save_checkpoint(workdir / "checkpoint", build_model(base), base)
    extra = [f"model={args.model}", f"ros.twin.realtime_factor={args.realtime_factor}", *args.overrides]
    overrides = launch_overrides(True, str(checkpoint), args.device, extra)
    cfg = load_config(overrides)
    os.environ["ROS_DOMAIN_ID"] = str(isolated_domain_id())
    log_path = workdir / "nodes.log"
    log = log_path.open("w")
    processes = NodeProcesses(env=dict(os.environ), output=log)
    for spec in stack_plan(cfg, True, overrides):  # before this process is real-time: they would inherit it
        processes.start(spec)
    # The listener is the instrument: above the stack's real-time priorities (it only timestamps), so
    # its receive threads are never the ones kept waiting for a core. Before rclpy.init: they inherit it.
    message = use_realtime_scheduling(LISTENER_REALTIME_PRIORITY, "listener", "benchmark")
    if message:
        print(message)
    timeline = Timeline()
    context, executor, stop = listen(timeline)
    print(f"stack: {', '.join(n.spec.name for n in processes.nodes)}; model {args.model} on {args.device}; "
          f"node output in {log_path}")  # fmt: skip
    code = 0
    load: list[int] = []
    cpu: dict[str, float] = {}
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not timeline.snapshot().actions and time.monotonic() < deadline and not processes.exited():
            time.sleep(0.1)
        if not timeline.snapshot().actions or processes.exited():
            print(f"the stack did not come up; see {log_path}", file=sys.stderr)
            return 1
        load = start_load(args.load, args.warmup + args.seconds + 10.0)
        start = time.time() + args.warmup
        end = start + args.seconds
        while time.time() < start:
            time.sleep(0.05)
        pids = {n.spec.name: n.process.pid for n in processes.nodes}
        pids.update({f"load{i}": pid for i, pid in enumerate(load)})
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        while time.time() < end and not processes.exited():
            time.sleep(0.2)
        for name, pid in pids.items():
            now, before = cpu_seconds(pid), cpu_start[name]
            if now is not None and before is not None:
                cpu[name] = (now - before) / args.seconds
        if processes.exited():
            print(f"a node died during the run; see {log_path}", file=sys.stderr)
            code = 1
        t = timeline.snapshot()
    finally:
        stop_load(load)
        processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)
        log.close()
        stop.set()
        executor.shutdown()
        rclpy.shutdown(context=context)

    latency = loop_latencies(t, start, end)
    sim = sim_seconds(t, start, end)
    wall = end - start
    n_actions = sum(start <= w < end for w in t.actions)
    n_commands = sum(start <= w < end for w in t.commands)
    rate = float(cfg.control.rate_hz)
    figures = {
        "model": args.model,
        "device": args.device,
        "wall_s": wall,
        "sim_s": sim,
        "realtime_factor": sim / wall,
        "configured_realtime_factor": args.realtime_factor,
        "configured_rate_hz": rate,
        "actions_per_sim_s": n_actions / sim if sim else 0.0,
        "commands_per_sim_s": n_commands / sim if sim else 0.0,
        "actions_per_wall_s": n_actions / wall,
        "overrides": list(args.overrides),
        "load_processes": args.load,
        "cpu_cores": cpu,
        "command_events": counter_deltas(t, start, end),
        **{f"{name}_ms": p50_p99_ms(values) for name, values in latency.items()},
    }
    print(f"observation -> command : {percentiles_ms(latency['obs_to_command'])}")
    print(f"  once complete        : {percentiles_ms(latency['complete_obs_to_command'])}")
    print(f"  observation -> action: {percentiles_ms(latency['obs_to_action'])}")
    print(f"    policy (in node)   : {percentiles_ms(latency['policy_in_node'])}")
    print(f"  action -> command    : {percentiles_ms(latency['action_to_command'])}")
    print(
        f"control rate           : {figures['actions_per_sim_s']:.1f} actions and "
        f"{figures['commands_per_sim_s']:.1f} commands per sim second (configured {rate:g} Hz)"
    )
    print(
        f"twin real-time factor  : {figures['realtime_factor']:.2f}x (configured {args.realtime_factor:g}x) "
        f"-> {figures['actions_per_wall_s']:.1f} actions per wall second"
    )
    events = figures["command_events"]
    print("command node events    : " + ", ".join(f"{k} {v}" for k, v in events.items()))
    print("CPU use (cores)        : " + ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.items()))
    if figures["actions_per_sim_s"] < 0.9 * rate:
        print(f"WARNING: actions at {figures['actions_per_sim_s']:.1f} Hz of sim time, below {rate:g} Hz")
    if figures["realtime_factor"] < 0.9 * args.realtime_factor:
        print(
            "WARNING: the twin runs below its real-time factor; the nodes wait for its clock, so wall-time "
            "latencies that span a tick (action -> command) measure the twin's tick time, not the stack"
        )
    if args.trace:
        args.trace.parent.mkdir(parents=True, exist_ok=True)
        raw = {k: getattr(t, k) for k in ("observations", "actions", "commands", "policy_latency", "clock")}
        args.trace.write_text(json.dumps({"start": start, "end": end, **raw}))
    if args.json:
        from docs_page import run_record

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run_record("control_loop", figures), indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
