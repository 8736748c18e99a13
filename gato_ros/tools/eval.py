"""`gato-ros eval [key=value ...]`: success rates per object group through the full ROS 2 stack in the twin.

Every episode runs the way the stack runs on the cell: the twin, the policy and the command (safety) node
as separate processes (`gato_ros.ros.launcher.stack_plan`, as `gato-ros launch stacking sim:=true`), the
twin in lock-step by default (``evaluation.realtime_factor=0``: as fast as the stack answers, with real
time's one-tick action delay). Per episode it records success, the sim time to success, the command
node's clamps and holds (differences of its cumulative /diagnostics counters) and the policy's
observation-to-action latency (POLICY_LATENCY), and writes into ``evaluation.out_dir``:

- ``results.json``: the config, one row per episode, success per policy and group (Wilson 95% interval);
- ``results.md``: the paper's table (rows = policies; Group 1..5, their Average, any other group such as
  ``train``) and a table of latency and interventions; printed at the end too;
- ``success.png`` (success per group with Wilson intervals) and ``latency.png`` (latency histograms);
- ``logs/``: every node's output, one file per job.

Seeds: episode i of a group runs with seed ``evaluation.first_seed + i`` for every policy, so policies
compare episode by episode. A *job* is one stack launch for (policy, group, worker w of W): it runs with
``seed=first_seed + w`` and ``ros.twin.seed_stride=W``, so the twin's episodes walk the worker's share
(first+w, first+w+W, ...). The twin runs without auto-reset: it holds each episode's end (repeating its
status, so a lost message cannot lose an outcome) until the job's monitor has it and calls /twin/reset.
Up to ``evaluation.workers`` jobs run at once, each on its own ROS_DOMAIN_ID. The command node runs for
the whole job, so only a job's first episode starts with its ramp-in (``safety.ramp_in_seconds``): an
episode's outcome may depend on ``evaluation.workers``, never on the policy's neighbours in the table.
A node that dies or a job over its wall-time budget ends that job (its processes stopped); the episodes it
did not finish are errors in results.json and the exit code is 1.

Rows: ``clamps`` and ``holds`` count command-node ticks per reason (as on /diagnostics; the ramp-in after
a hold is not a clamp), ``safety`` the nonzero reasons; they are null when no diagnostics from before the
episode's start arrived (a baseline's first episode can start before this process has matched the
command node). ``start_heard`` is false when the monitor joined after the episode began (its latency
samples then miss the first steps). ``sim_time`` is steps x control period; ``time_to_success_s`` is the
sim time at which the stack that made the episode a success first stood (the twin's ``stacked_since``; in
the benchmark episode mode every episode runs its full length, so the episode's end says nothing).

From Python (e.g. at the end of training): ``evaluate(cfg) -> EvalReport`` runs the nodes with exactly
``cfg`` (as hydra overrides), writes the files and returns the report; ``report.ok`` is False on errors.

Policies: ``evaluation.checkpoint`` (default: ``policy.checkpoint``; null = baselines only) and the
baselines of ``evaluation.baselines``: ``expert`` (the twin's scripted expert) and ``random`` (uniform
random actions drawn in the twin, seeded per episode); neither starts a policy node.

Examples:
  gato-ros eval evaluation.checkpoint=outputs/train/checkpoints/step_0005000 evaluation.baselines=[expert]
  gato-ros eval evaluation.checkpoint=null evaluation.baselines=[expert,random] evaluation.groups=[1,2] \\
      evaluation.episodes_per_group=5
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gato_ros.evaluation.overrides import config_overrides, merge_overrides, render_value
from gato_ros.evaluation.report import EvalReport, group_label, summarize, write_outputs
from gato_ros.evaluation.stats import MS_PER_S, latency_summary
from gato_ros.evaluation.tracker import EpisodeObservation, EpisodeTracker, interventions, safety_counters
from gato_ros.ros.launcher import (
    MAX_ROS_DOMAIN_ID,
    ROS_DOMAIN_ID_RANGE,
    NodeProcesses,
    NodeSpec,
    launch_overrides,
    stack_plan,
    user_domain_id,
)

BASELINES = ("expert", "random")
POLICY_SOURCE = "policy"
OBJECT_DISTRIBUTIONS = ("train", "heldout")
LOG_DIR = "logs"
UNSAFE_FILE_CHARS = re.compile(r"[^\w.\-]")


# -- what to run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyUnderTest:
    """A row of the table: a checkpoint run by the policy node, or a baseline acting in the twin."""

    name: str
    source: str  # policy | expert | random (ros.twin.action_source)
    checkpoint: str | None = None


@dataclass(frozen=True)
class Job:
    """One stack launch: a worker's share of one group's seeds for one policy."""

    policy: PolicyUnderTest
    group: int | str
    worker: int
    workers: int
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    plan: tuple[NodeSpec, ...] = ()

    @property
    def tag(self) -> str:
        """A file name for the job's log."""
        group = f"group{self.group}" if isinstance(self.group, int) else str(self.group)
        return UNSAFE_FILE_CHARS.sub("_", f"{self.policy.name}_{group}_w{self.worker}")


def policies_under_test(cfg: DictConfig) -> list[PolicyUnderTest]:
    """The checkpoint (if any), then the baselines in the configured order."""
    ecfg = cfg.evaluation
    policies: list[PolicyUnderTest] = []
    if ecfg.checkpoint:
        from gato_ros.gato.checkpoint import resolve_checkpoint

        try:  # a directory, or the name of a shipped policy (`default`)
            path = resolve_checkpoint(str(ecfg.checkpoint)).resolve()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"evaluation.checkpoint: {err}") from err
        name = str(ecfg.name) if ecfg.name else path.name
        policies.append(PolicyUnderTest(name, POLICY_SOURCE, str(path)))
    for baseline in ecfg.baselines or ():
        if str(baseline) not in BASELINES:
            raise ValueError(f"evaluation.baselines: {baseline!r} is not one of {', '.join(BASELINES)}")
        policies.append(PolicyUnderTest(str(baseline), str(baseline)))
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"two policies share a name: {names} (set evaluation.name)")
    return policies


def parse_group(value: Any, cfg: DictConfig) -> int | str:
    """A test triplet number (1..5 of twin.triplets) or an object distribution (train | heldout)."""
    text = str(value).strip()
    if text in OBJECT_DISTRIBUTIONS:
        return text
    if text in {str(k) for k in cfg.twin.triplets}:
        return int(text)
    known = ", ".join([*(str(k) for k in cfg.twin.triplets), *OBJECT_DISTRIBUTIONS])
    raise ValueError(f"evaluation.groups: unknown group {value!r} (known: {known})")


def worker_seeds(first_seed: int, episodes: int, worker: int, workers: int) -> tuple[int, ...]:
    """The seeds worker `worker` of `workers` runs: first+w, first+w+W, ... below first+episodes (the twin
    runs episode k with seed + k * seed_stride)."""
    return tuple(range(first_seed + worker, first_seed + episodes, workers))


def group_overrides(group: int | str) -> list[str]:
    """The twin's settings of a group as hydra overrides (the in-process check uses the same mapping)."""
    from gato_ros.evaluation.success_check import group_overrides as group_settings

    return [f"{key}={value}" for key, value in group_settings(group).items()]


def plan_jobs(cfg: DictConfig) -> list[Job]:
    """Every job of the evaluation, in order (policy, group, worker), with its nodes' overrides."""
    from gato_ros.config import load_config

    ecfg = cfg.evaluation
    episodes, first = int(ecfg.episodes_per_group), int(ecfg.first_seed)
    if episodes < 1:
        raise ValueError("evaluation.episodes_per_group must be >= 1")
    workers = min(int(ecfg.workers), episodes)
    if workers < 1:
        raise ValueError("evaluation.workers must be >= 1")
    groups = [parse_group(g, cfg) for g in ecfg.groups]
    if len(set(groups)) != len(groups) or not groups:
        raise ValueError(f"evaluation.groups must name each group once: {list(ecfg.groups)}")
    policies = policies_under_test(cfg)
    if not policies:
        raise ValueError("nothing to evaluate: set evaluation.checkpoint or evaluation.baselines")
    diagnostics = ecfg.diagnostics_period_s
    diagnostics_s = 1.0 / float(cfg.control.rate_hz) if diagnostics is None else float(diagnostics)
    base = config_overrides(cfg)
    jobs = []
    for policy in policies:
        # quoted: launch_overrides writes the path as it is, and a path may hold spaces or quotes
        checkpoint = render_value(policy.checkpoint) if policy.source == POLICY_SOURCE else None
        device = str(ecfg.device) if policy.source == POLICY_SOURCE and ecfg.device else None
        launch = launch_overrides(True, checkpoint, device)
        node_cfg: DictConfig | None = None  # the node list depends on the policy only: compose once
        for group in groups:
            for worker in range(workers):
                seeds = worker_seeds(first, episodes, worker, workers)
                own = [
                    f"seed={first + worker}",
                    f"ros.twin.seed_stride={workers}",
                    "ros.twin.auto_reset=false",  # the monitor asks for each next episode: see run_job
                    f"ros.twin.action_source={policy.source}",
                    f"ros.twin.realtime_factor={render_value(float(ecfg.realtime_factor))}",
                    f"ros.twin.wait_for_stack_s={render_value(float(ecfg.startup_timeout_s))}",
                    f"safety.diagnostics_period_s={render_value(diagnostics_s)}",
                    *group_overrides(group),
                ]
                overrides = merge_overrides(base, launch, own)
                if node_cfg is None:  # composing also checks the overrides (hydra is not thread-safe: here)
                    node_cfg = load_config(overrides)
                plan = stack_plan(node_cfg, True, overrides)
                jobs.append(Job(policy, group, worker, workers, seeds, tuple(overrides), tuple(plan)))
    return jobs


def eval_domain_id(slot: int, pid: int | None = None, env: dict[str, str] | None = None) -> int:
    """The ROS_DOMAIN_ID of concurrent job slot `slot`. With ROS_DOMAIN_ID set, slot k uses that id + k
    (slot 0 the user's own); unset, ids derived from this process's id, so two evaluations (or an evaluation
    and a test run, which uses the pid itself) are unlikely to share one."""
    low, high = ROS_DOMAIN_ID_RANGE
    span = high - low + 1
    if not 0 <= slot < span - 1:
        raise ValueError(f"at most {span - 1} jobs can run at once (ROS domain ids {low}..{high})")
    base = user_domain_id(env)
    if base is not None:
        if base + slot > MAX_ROS_DOMAIN_ID:
            raise ValueError(
                f"ROS_DOMAIN_ID={base} leaves no domain id for job slot {slot} (at most {MAX_ROS_DOMAIN_ID})"
            )
        return base + slot
    return low + ((os.getpid() if pid is None else pid) + 1 + slot) % span


# -- one job -----------------------------------------------------------------------------------------------
@dataclass
class JobResult:
    job: Job
    domain_id: int
    episodes: list[EpisodeObservation] = field(default_factory=list)
    error: str | None = None
    exit_codes: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.job.policy.name,
            "group": self.job.group,
            "worker": self.job.worker,
            "seeds": list(self.job.seeds),
            "domain_id": self.domain_id,
            "nodes": [spec.name for spec in self.job.plan],
            "overrides": list(self.job.overrides),
            "error": self.error,
            "exit_codes": self.exit_codes,
            "wall_s": round(self.wall_s, 3),
            "log": self.log,
        }


class JobMonitor:
    """An rclpy node of this process on the job's domain, in a context of its own: feeds the tracker with
    EPISODE_STATUS, POLICY_LATENCY and DIAGNOSTICS. Spun by the job's thread (`spin_once`)."""

    def __init__(self, domain_id: int, tracker: EpisodeTracker, on_finished: Callable[[Any], None]) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from gato_ros.ros import contract

        self.tracker, self.on_finished = tracker, on_finished
        self.context = Context()
        rclpy.init(
            args=[], context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO
        )
        self.node = rclpy.create_node(f"eval_monitor_{domain_id}", context=self.context)  # unique in-process
        for topic, callback in (
            (contract.EPISODE_STATUS, self.on_status),
            (contract.POLICY_LATENCY, self.on_latency),
            (contract.DIAGNOSTICS, self.on_diagnostics),
        ):
            self.node.create_subscription(topic.msg_type, topic.name, callback, topic.qos.profile())
        self.reset_client = self.node.create_client(
            contract.RESET_EPISODE.srv_type, contract.RESET_EPISODE.name
        )
        self.reset_requested: int | None = None  # the episode whose end the last reset request followed
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def request_next_episode(self, finished_episode: int) -> bool:
        """Ask the twin for the next seeded episode, once per finished episode (a second request would skip
        a seed); False while the service is not matched yet (a request then would be lost)."""
        if self.reset_requested == finished_episode:
            return True
        if not self.reset_client.service_is_ready():
            return False
        from std_srvs.srv import Trigger

        self.reset_client.call_async(Trigger.Request())  # the new episode's statuses are the answer
        self.reset_requested = finished_episode
        return True

    def spin_once(self, timeout_s: float) -> None:
        self.executor.spin_once(timeout_sec=timeout_s)

    def on_status(self, msg: Any) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(status, dict):
            finished = self.tracker.on_status(status, time.monotonic())
            if finished is not None:
                self.on_finished(finished)

    def on_latency(self, msg: Any) -> None:
        self.tracker.on_latency(float(msg.data))

    def on_diagnostics(self, msg: Any) -> None:
        from gato_ros.ros import contract

        stamp = contract.stamp_to_seconds(msg.header.stamp)
        for status in msg.status:
            counters = safety_counters({kv.key: kv.value for kv in status.values})
            if counters:
                self.tracker.on_diagnostics(stamp, counters)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)


def run_job(
    job: Job,
    domain_id: int,
    cfg: DictConfig,
    log_path: Path,
    stop: threading.Event,
    say: Callable[[str], None],
) -> JobResult:
    """Launch the job's stack on `domain_id`, watch its episodes until its seeds are done (or a node dies,
    the wall budget runs out, `stop` is set), then stop every process. Never raises for a failed stack."""
    ecfg, lcfg = cfg.evaluation, cfg.ros.launch
    result = JobResult(job, domain_id, log=str(log_path))
    if stop.is_set():
        result.error = "interrupted before it started"
        return result
    spin_s = float(ecfg.spin_period_s)
    startup_s = float(ecfg.startup_timeout_s)
    budget_s = startup_s + len(job.seeds) * float(ecfg.episode_timeout_s)
    tracker = EpisodeTracker(job.seeds, 1.0 / float(cfg.control.rate_hz))

    def on_finished(episode: EpisodeObservation) -> None:
        outcome = "SUCCESS" if episode.success else ("unstable" if episode.physics_unstable else "failure")
        stacked_at = time_to_success(episode)
        if stacked_at is not None:
            outcome += f" (stacked at {stacked_at:.2f} s)"
        say(
            f"{job.policy.name} / {group_label(job.group)} seed {episode.seed}: {outcome} after "
            f"{episode.sim_time:.2f} s sim, {episode.steps} steps ({episode.wall_s:.1f} s wall)"
        )

    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        processes = NodeProcesses(env=env, output=log)
        monitor: JobMonitor | None = None
        try:
            monitor = JobMonitor(domain_id, tracker, on_finished)
            for spec in job.plan:
                processes.start(spec)
            drain_until: float | None = None
            while True:
                monitor.spin_once(spin_s)
                now = time.monotonic()
                elapsed = now - started
                if tracker.finished_count() >= len(job.seeds):
                    drain_until = now + float(ecfg.drain_s) if drain_until is None else drain_until
                    if tracker.settled() or now >= drain_until:
                        break
                    continue
                held = tracker.done_episode()
                if held is not None:  # the twin holds the end of an episode until asked for the next
                    monitor.request_next_episode(held)
                if stop.is_set():
                    result.error = "interrupted"
                    break
                dead = processes.exited()
                if dead:
                    result.error = "; ".join(f"{n.spec.name} exited with code {n.returncode()}" for n in dead)
                    break
                if not tracker.started and elapsed > startup_s:
                    result.error = f"no episode started within evaluation.startup_timeout_s={startup_s:g} s"
                    break
                if elapsed > budget_s:
                    result.error = f"job exceeded its wall budget of {budget_s:g} s"
                    break
        except Exception as err:  # e.g. rclpy could not start: the job fails, the evaluation goes on
            result.error = f"{type(err).__name__}: {err}"
        finally:
            result.exit_codes = processes.stop(float(lcfg.sigint_wait_s), float(lcfg.sigterm_wait_s))
            if monitor is not None:
                monitor.close()
    result.episodes = tracker.episodes()
    result.wall_s = time.monotonic() - started
    if result.error:
        say(f"{job.tag}: {result.error}; {len(tracker.missing_seeds())} episodes missing (log: {log_path})")
    return result


# -- the evaluation ----------------------------------------------------------------------------------------
def time_to_success(episode: EpisodeObservation) -> float | None:
    """When the successful stack first stood; the episode's end where the twin did not say."""
    if not episode.success:
        return None
    return episode.stacked_since if episode.stacked_since is not None else episode.sim_time


def episode_rows(result: JobResult) -> list[dict[str, Any]]:
    """results.json rows of a job: its finished episodes, then its missing seeds as errors."""
    job = result.job
    rows = []
    by_seed = {e.seed: e for e in result.episodes}
    for seed in job.seeds:
        base = {"policy": job.policy.name, "group": job.group, "seed": seed, "worker": job.worker}
        episode = by_seed.get(seed)
        if episode is None:
            rows.append(
                {
                    **base,
                    "objects": None,
                    "success": None,
                    "time_to_success_s": None,
                    "steps": None,
                    "sim_time": None,
                    "physics_unstable": None,
                    "lockstep_timeouts": None,
                    "clamps": None,
                    "holds": None,
                    "safety": None,
                    **latency_summary([]),
                    "wall_s": None,
                    "start_heard": None,
                    "error": result.error or "episode not reported",
                }
            )
            continue
        clamps, holds = interventions(episode.safety) if episode.safety is not None else (None, None)
        rows.append(
            {
                **base,
                "objects": episode.objects,
                "success": episode.success,
                "time_to_success_s": time_to_success(episode),
                "steps": episode.steps,
                "sim_time": episode.sim_time,
                "physics_unstable": episode.physics_unstable,
                "lockstep_timeouts": episode.lockstep_timeouts,
                "clamps": clamps,
                "holds": holds,
                "safety": None if episode.safety is None else {k: v for k, v in episode.safety.items() if v},
                **latency_summary(episode.latencies_s),
                "wall_s": round(episode.wall_s, 3),
                "start_heard": episode.start_heard,
                "error": None,
            }
        )
    return rows


def evaluate(
    cfg: DictConfig, *, stop: threading.Event | None = None, say: Callable[[str], None] | None = None
) -> EvalReport:
    """Run the evaluation of `cfg.evaluation` (nodes get exactly `cfg`, as hydra overrides), write its
    files into ``evaluation.out_dir`` and return the report. Failed jobs are errors in the report
    (`report.ok` is False), never exceptions; a bad configuration raises before anything starts."""
    ecfg = cfg.evaluation
    stop = threading.Event() if stop is None else stop
    lock = threading.Lock()

    def default_say(line: str) -> None:
        with lock:
            print(f"[eval] {line}", flush=True)

    say = default_say if say is None else say
    jobs = plan_jobs(cfg)
    policies = list(dict.fromkeys(job.policy.name for job in jobs))
    groups = list(dict.fromkeys(job.group for job in jobs))
    workers = jobs[0].workers
    out_dir = Path(str(ecfg.out_dir))
    log_dir = out_dir / LOG_DIR
    episodes, first = int(ecfg.episodes_per_group), int(ecfg.first_seed)
    say(
        f"{len(policies)} policies x {len(groups)} groups x {episodes} episodes (seeds {first}.."
        f"{first + episodes - 1}) in {len(jobs)} stack launches, {workers} at a time"
    )
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        eval_domain_id(slot)  # fails early if there are more slots than domain ids
        slots.put(slot)
    say(f"ROS_DOMAIN_ID per job slot: {', '.join(str(eval_domain_id(slot)) for slot in range(workers))}")

    def run(job: Job) -> JobResult:
        slot = slots.get()
        try:
            return run_job(job, eval_domain_id(slot), cfg, log_dir / f"{job.tag}.log", stop, say)
        finally:
            slots.put(slot)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval_job") as pool:
        results = list(pool.map(run, jobs))
    wall_s = time.monotonic() - started

    order = {(p, g): i for i, (p, g) in enumerate((p, g) for p in policies for g in groups)}
    rows = [row for result in results for row in episode_rows(result)]
    rows.sort(key=lambda r: (order[(r["policy"], r["group"])], r["seed"]))
    latency_ms: dict[str, list[float]] = {p: [] for p in policies}
    for result in results:
        for episode in result.episodes:
            latency_ms[result.job.policy.name].extend(s * MS_PER_S for s in episode.latencies_s)
    summary, per_policy = summarize(policies, groups, rows, latency_ms)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    report = EvalReport(
        config=config,
        policies=policies,
        groups=groups,
        rows=rows,
        summary=summary,
        per_policy=per_policy,
        jobs=[r.to_json() for r in results],
        latency_samples_ms=latency_ms,
        wall_s=round(wall_s, 3),
    )
    write_outputs(report, out_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    from gato_ros.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in {"-h", "--help"} for a in args):
        print(__doc__)
        return 0
    bad = [a for a in args if "=" not in a or a.startswith("-")]
    if bad:
        print(f"gato-ros eval: expected hydra overrides key=value, got {bad}", file=sys.stderr)
        return 2
    cfg = load_config(args)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = evaluate(cfg, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print()
    print(report.markdown())
    completed = [r["wall_s"] for r in report.rows if r["wall_s"] is not None]
    if completed:
        overall = report.wall_s / len(completed)
        print(
            f"{len(completed)} episodes in {report.wall_s:.0f} s wall ({overall:.1f} s per episode overall; "
            f"{float(np.mean(completed)):.1f} s per episode inside a running stack)"
        )
    late = [r for r in report.rows if r.get("lockstep_timeouts")]
    if late:
        print(
            f"{len(late)} episodes had lock-step ticks on the twin's timeout (the stack answered after "
            f"ros.twin.lockstep_wait_s; its commands may have come a tick late from then on): see "
            f"'lockstep_timeouts' in results.json"
        )
    logs = Path(report.paths["json"]).parent / LOG_DIR
    print("wrote " + ", ".join(report.paths.values()) + f" (node logs in {logs})")
    if stop.is_set():
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
