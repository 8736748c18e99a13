"""Two hosts: the policy node on one network namespace (the "GPU host"), the twin and the command node on
another (the cell), DDS over a veth link this test creates; nothing else connects them (Fast DDS on UDPv4
only, no shared memory). Cutting the link for 300 ms must bring a hold within two control periods on the
command node's own clock, a ramp-in once the link is back, and no command outside the limits.

Skipped, with the reason, where network namespaces cannot be created (not root, no iproute2).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.model import build_model
from gato_ros.ros import contract
from gato_ros.ros.launcher import NodeProcesses, isolated_domain_id, launch_overrides, stack_plan
from gato_ros.safety.limits import Reason

pytestmark = pytest.mark.slow

CUT_S = 0.3  # wall s the link is down
FLOW_TIMEOUT_S = 180.0
OVERRIDES = [
    "ros.twin.realtime_factor=0",  # lock-step: sim time passes as fast as the stack answers
    "ros.twin.lockstep_wait_s=0.1",
    "control.episode_seconds=60",
]
RECORDER = Path(__file__).with_name("topic_recorder.py")


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) to create network namespaces"
    name = f"gato_check_{os.getpid()}"
    made = ip("netns", "add", name)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip() or made.returncode}"
    ip("netns", "del", name)
    return None


@dataclass(frozen=True)
class TwoHosts:
    """Two network namespaces joined by one veth pair: `gpu` (the policy's host) and `cell`."""

    gpu: str
    cell: str
    gpu_link: str
    cell_link: str

    def run_in(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def _check(self, *args: str) -> None:
        result = ip(*args)
        assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"

    def cut(self) -> None:
        self._check("-n", self.gpu, "link", "set", self.gpu_link, "down")

    def restore(self) -> None:
        self._check("-n", self.gpu, "link", "set", self.gpu_link, "up")
        # bringing a link down drops its routes: DDS discovery's multicast route comes back by hand
        self._check("-n", self.gpu, "route", "replace", "224.0.0.0/4", "dev", self.gpu_link)


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    tag = os.getpid() % 100_000
    hosts = TwoHosts(f"gato_gpu_{tag}", f"gato_cell_{tag}", f"vgpu{tag}", f"vcell{tag}")
    addresses = {hosts.gpu: "10.231.0.1/24", hosts.cell: "10.231.0.2/24"}
    links = {hosts.gpu: hosts.gpu_link, hosts.cell: hosts.cell_link}
    try:
        hosts._check("netns", "add", hosts.gpu)
        hosts._check("netns", "add", hosts.cell)
        hosts._check(
            "link", "add", hosts.gpu_link, "netns", hosts.gpu, "type", "veth",
            "peer", "name", hosts.cell_link, "netns", hosts.cell,
        )  # fmt: skip
        for namespace, link in links.items():
            hosts._check("-n", namespace, "link", "set", "lo", "up")
            hosts._check("-n", namespace, "addr", "add", addresses[namespace], "dev", link)
            hosts._check("-n", namespace, "link", "set", link, "up")
            hosts._check("-n", namespace, "route", "add", "224.0.0.0/4", "dev", link)
        yield hosts
    finally:
        for namespace in links:  # deleting a namespace deletes its end of the veth pair, and so the pair
            ip("netns", "del", namespace)


def read_records(path: Path) -> list[dict]:
    records: list[dict] = []
    if not path.exists():  # the recorder has not started yet
        return records
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line still being written
            records.append(json.loads(line))
    return records


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_partition_between_policy_host_and_cell_holds_then_ramps_in(tmp_path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    base = load_config()
    torch.manual_seed(0)  # the same random policy every run
    checkpoint = save_checkpoint(tmp_path / "random_tiny", build_model(base), base)
    overrides = launch_overrides(True, str(checkpoint), "cpu", OVERRIDES)
    cfg = load_config(overrides)
    period = 1.0 / float(cfg.control.rate_hz)
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(isolated_domain_id()),
        ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET",
        FASTDDS_BUILTIN_TRANSPORTS="UDPv4",  # no shared memory: the veth link is the only path
    )
    env.pop("ROS_LOCALHOST_ONLY", None)
    log = tmp_path / "cell.jsonl"

    def records(topic: contract.Topic) -> list[dict]:
        return [r for r in read_records(log) if r["topic"] == topic.name]

    def commands() -> list[np.ndarray]:
        return [np.asarray(r["data"]) for r in records(contract.JOINT_VELOCITY_COMMAND)]

    def moving_since(start: int, count: int) -> bool:
        tail = commands()[start:][-count:]
        return len(tail) == count and all(np.abs(c).max() > 1e-6 for c in tail)

    def counter(name: str) -> int:
        diagnostics = [r for r in records(contract.DIAGNOSTICS) if name in r["values"]]
        return int(diagnostics[-1]["values"][name]) if diagnostics else 0

    with two_hosts() as hosts:
        processes = NodeProcesses(env=env)
        recorder = subprocess.Popen(
            [*hosts.run_in(hosts.cell), sys.executable, str(RECORDER), str(log)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            for spec in stack_plan(cfg, True, overrides):
                host = hosts.gpu if spec.name == "policy" else hosts.cell
                processes.start(spec, prefix=hosts.run_in(host))
            # the policy's actions cross the link and drive the arm
            assert wait_for(lambda: moving_since(0, 3), FLOW_TIMEOUT_S), "the arm is never driven"
            stale_before = counter(Reason.STALE_ACTION.value)
            ramp_before = counter(Reason.RAMP_IN.value)
            before = len(commands())
            cut_clock = max(r["clock"] for r in read_records(log))
            hosts.cut()
            time.sleep(CUT_S)
            # lock-step: sim time runs on while the cell holds; let it pass the watchdog's deadline
            assert wait_for(
                lambda: max(r["clock"] for r in read_records(log)) >= cut_clock + 6 * period, 30
            ), "the cell's clock stopped during the cut"
            hosts.restore()
            after_cut = len(commands())
            # the link is back: actions arrive again and the arm moves again, ramping in
            assert wait_for(lambda: moving_since(after_cut, 3), FLOW_TIMEOUT_S), "no motion after the cut"
            ramped = wait_for(lambda: counter(Reason.RAMP_IN.value) > ramp_before, 30)
            assert ramped, "no ramp-in after the cut"
            assert not processes.exited(), [n.spec.name for n in processes.exited()]
        finally:
            processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)
            recorder.terminate()
            recorder.wait(timeout=30)

    # the partition held the arm: a zero command after the cut, then motion again
    velocity = commands()
    held = [i for i in range(before, len(velocity)) if np.abs(velocity[i]).max() == 0.0]
    assert held, "no hold during the partition"
    assert counter(Reason.STALE_ACTION.value) > stale_before
    # the partition's hold: the first stale hold on the command node's clock after the cut (each new hold is
    # published on /diagnostics at once, so a start-up hold while the policy warms up is told apart by time)
    after = [
        r["values"]
        for r in records(contract.DIAGNOSTICS)
        if float(r["values"].get("stale_hold_last_at_s", "-inf")) >= cut_clock
    ]
    assert after, "no hold latency on /diagnostics"
    latency = float(after[0]["stale_hold_latency_last_periods"])
    # within stale_after_periods (2) of the last action on the command node's clock, never later
    assert latency <= float(cfg.safety.stale_after_periods) + 1e-6, latency
    print(
        f"partition of {CUT_S} s: {len(held)} hold commands, hold latency {latency} periods, "
        f"{counter(Reason.RAMP_IN.value) - ramp_before} ramp-in ticks after it"
    )

    # every command inside the limits, before, during and after the partition
    speed_limit = cfg.safety.velocity_fraction * np.asarray(cfg.robot.velocity_limit)
    change_limit = np.asarray(cfg.safety.max_velocity_change_per_tick)
    for qdot in velocity:
        assert qdot.shape == (7,) and np.all(np.isfinite(qdot))
        assert np.all(np.abs(qdot) <= speed_limit + 1e-9), qdot
    for p, v in itertools.pairwise(velocity):
        brakes = (np.sign(v) * np.sign(p) >= 0) & (np.abs(v) <= np.abs(p))
        assert np.all(brakes | (np.abs(v - p) <= change_limit + 1e-9)), (p, v)
    for r in records(contract.GRIPPER_COMMAND):
        assert len(r["data"]) == 1 and abs(r["data"][0]) <= cfg.robot.gripper.command_range[1]
