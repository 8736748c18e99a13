"""The stack plan, the ROS 2 launch file built on it, and `gato-ros launch` as a process supervisor."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gato_ros.config import load_config
from gato_ros.ros.launcher import NodeSpec, isolated_domain_id, launch_overrides, stack_plan
from gato_ros.ros.runtime import hydra_overrides
from gato_ros.tools.launch import EpisodeLog, PaceLog, parse_args, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "stacking.launch.py"


def plan(sim: bool, *extra: str) -> list[NodeSpec]:
    overrides = launch_overrides(sim, "/ckpt", "cpu", list(extra))
    return stack_plan(load_config(overrides), sim, overrides)


def console_scripts() -> dict[str, str]:
    """name -> module:function of setup.py's console_scripts."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+) = ([\w.]+:\w+)"', text))


def test_sim_plan_is_twin_policy_command_with_sim_time() -> None:
    nodes = plan(True)
    assert [n.name for n in nodes] == ["twin", "policy", "command_node"]
    scripts = console_scripts()
    for node in nodes:
        assert importlib.util.find_spec(node.module) is not None, node.module
        assert scripts[node.executable] == f"{node.module}:main"  # what launch_ros runs
        assert "ros.use_sim_time=true" in node.args and "safety.start_enabled=true" in node.args
        assert "policy.checkpoint=/ckpt" in node.args and "policy.device=cpu" in node.args


def test_expert_plan_has_no_policy_node() -> None:
    assert [n.name for n in plan(True, "ros.twin.action_source=expert")] == ["twin", "command_node"]


def test_real_plan_is_one_camera_per_policy_camera_and_never_enabled() -> None:
    cfg = load_config()
    nodes = plan(False, "robot.driver_command_timeout_s=0.1")
    cameras = [f"camera_{c}" for c in cfg.cameras.policy_cameras]
    assert [n.name for n in nodes] == [*cameras, "policy", "command_node"]
    for node, camera in zip(nodes, cfg.cameras.policy_cameras, strict=False):
        assert f"ros.camera.name={camera}" in node.args
    for node in nodes:
        assert "ros.use_sim_time=false" in node.args
        assert "policy.object_pose_source=cameras" in node.args  # no OBJECT_POSES publisher on a real cell
        assert not any(a.startswith("safety.start_enabled") for a in node.args)  # a real arm waits
    assert "policy.object_pose_source=cameras" not in plan(True)[1].args  # the twin publishes its poses
    args = plan(False, "robot.driver_command_timeout_s=0.1", "policy.object_pose_source=topic")[-1].args
    assert args.index("policy.object_pose_source=topic") > args.index("policy.object_pose_source=cameras")


def test_the_real_cell_refuses_to_start_without_a_driver_command_timeout() -> None:
    """A frozen or killed command node must not leave the arm moving: the real plan needs the driver's own
    command timeout declared, and one no longer than the watchdog allows."""
    with pytest.raises(ValueError, match=r"robot\.driver_command_timeout_s"):
        plan(False)
    with pytest.raises(ValueError, match=r"must be in \(0, 0.150\]"):
        plan(False, "robot.driver_command_timeout_s=0.5")
    assert plan(True)  # the twin enforces its own (ros.twin.command_timeout_s)


def test_a_namespaced_stack_runs_every_node_and_its_clock_in_the_namespace() -> None:
    for node in plan(True, "ros.namespace=cell1"):
        command = node.command()
        assert node.namespace == "/cell1"
        assert "__ns:=/cell1" in command and "/clock:=/cell1/clock" in command
    assert all(not n.namespace and "__ns:=" not in " ".join(n.command()) for n in plan(True))
    with pytest.raises(ValueError, match="not a ROS namespace"):
        plan(True, "ros.namespace=1cell")


def test_node_command_line_round_trips_through_the_runtime() -> None:
    node = plan(True, "control.rate_hz=10")[0]
    command = node.command(python="python")
    assert command[:3] == ["python", "-m", node.module]
    assert command[-3:] == ["--ros-args", "-r", f"__node:={node.name}"]
    overrides = hydra_overrides(["prog", *command[3:]])
    assert overrides == list(node.args)
    assert load_config(overrides).control.rate_hz == 10
    with pytest.raises(ValueError):
        hydra_overrides(["prog", "not-an-override"])


def test_launch_file_declares_the_arguments_and_builds_nodes_from_stack_plan() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text())
    imported = {
        alias.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "gato_ros.ros.launcher"
        for alias in n.names
    }
    assert {"stack_plan", "launch_overrides"} <= imported
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"stack_plan", "launch_overrides", "Node", "DeclareLaunchArgument"} <= calls
    declared = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"
    }
    assert declared == {"sim", "checkpoint", "device", "overrides"}
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def test_launch_arguments_parse() -> None:
    args, launch_args, overrides = parse_args(
        ["stacking", "sim:=false", "checkpoint:=/c", "control.rate_hz=10", "--episodes", "3"]
    )
    assert (args.stack, args.episodes) == ("stacking", 3)
    assert launch_args == {"sim": "false", "checkpoint": "/c"}
    assert overrides == ["control.rate_hz=10"]
    with pytest.raises(SystemExit):
        parse_args(["stacking", "speed:=11"])


def test_wilson_interval_and_episode_log() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-3)
    log = EpisodeLog()
    assert log.add({"episode": 0, "done": False}) is None
    assert log.add({"episode": 0, "done": True, "success": True, "seed": 0}) is not None
    assert log.add({"episode": 0, "done": True, "success": True, "seed": 0}) is None  # reported once
    log.add({"episode": 1, "done": True, "success": False, "seed": 1})
    assert log.count() == 2 and log.summary().startswith("stacked 1/2 episodes = 50%")


def test_the_pace_summary_gives_rate_and_policy_latency() -> None:
    """The end of a twin run: actions per sim second and the policy's observation -> action percentiles."""
    pace = PaceLog()
    pace.clock(0.0)
    for tick in range(1, 41):  # 2 sim s at 20 Hz, one action per tick
        pace.clock(tick * 0.05)
        pace.action()
        pace.latency(0.010 if tick % 10 else 0.040)
    lines = pace.summary(configured_factor=0.0, rate_hz=20.0)
    assert lines[0].startswith("pace: 20.0 actions per sim second (control rate 20 Hz)"), lines
    assert "(lock-step)" in lines[0]
    assert lines[1].startswith("policy latency (observation -> action, in the policy node): p50 10.0 ms")
    assert "over 40 actions; control period 50 ms" in lines[1]
    assert PaceLog().summary(1.0, 20.0) == ["pace: no clock heard"]


LAUNCHER_DOMAIN_ID = isolated_domain_id(os.getpid() + 1)  # not the in-process tests' domain


class LaunchedStack:
    """`gato-ros launch` as a subprocess on a ROS domain apart from the in-process tests'. Its output is
    read by a thread (a silent launcher cannot block the test), and on leaving the block whatever still
    runs is killed, the launcher and every node it started, so that a failing test cannot leave a stack
    talking to the rest of the suite."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, ROS_DOMAIN_ID=str(LAUNCHER_DOMAIN_ID), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gato_ros.cli", "launch", "stacking", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float) -> None:
        """Until `predicate(lines)` holds; fails with the output when the launcher ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not predicate(list(self.lines)):
            ended = self.process.poll() is not None and not self.reader.is_alive()
            if ended or time.monotonic() > deadline:
                pytest.fail(f"the launcher never got there (exit {self.process.poll()}):\n{self.out}")
            time.sleep(0.05)

    def finish(self, timeout_s: float) -> str:
        """Its whole output once it has exited; fails with the output so far if it has not in time."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the launcher did not exit within {timeout_s:g} s:\n{self.out}")
        self.reader.join(timeout=10.0)
        return self.out

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        for pid in started_pids(self.lines).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> LaunchedStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process.poll() is None or any(pid_alive(p) for p in started_pids(self.lines).values()):
            self.kill()


def pid_alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in {"Z", "X"}


def started_pids(lines: list[str]) -> dict[str, int]:
    return {m[1]: int(m[2]) for line in lines if (m := re.search(r"started (\S+) \(pid (\d+)\)", line))}


def assert_gone(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still runs"


@pytest.mark.slow
def test_launcher_stops_the_stack_when_a_node_dies() -> None:
    # a checkpoint that does not exist: the policy node refuses to start; the launcher must stop twin and
    # command node
    with LaunchedStack("sim:=true", "checkpoint:=/nonexistent/checkpoint", "--isolated") as launcher:
        out = launcher.finish(timeout_s=180)
        lines = out.splitlines()
        assert launcher.process.returncode != 0, out
        # --isolated keeps the ROS_DOMAIN_ID the caller set, and says which one the stack uses.
        assert f"[launch] ROS_DOMAIN_ID={LAUNCHER_DOMAIN_ID} (yours" in out, out
        assert any("policy exited with code 1; stopping the stack" in line for line in lines), out
        assert any("no checkpoint at /nonexistent/checkpoint" in line for line in lines), out
        pids = started_pids(lines)
        assert set(pids) == {"twin", "policy", "command_node"}
        assert_gone(pids)


def stack_up(lines: list[str]) -> bool:
    """The twin has spoken and the command node is up."""
    return any("[twin]" in line and "[INFO]" in line for line in lines) and any(
        "command node up" in line for line in lines
    )


@pytest.mark.slow
def test_launcher_forwards_ctrl_c_and_every_node_exits_cleanly() -> None:
    with LaunchedStack("sim:=true", "ros.twin.action_source=expert") as launcher:
        launcher.wait_for(stack_up, timeout_s=120)
        launcher.process.send_signal(signal.SIGINT)
        out = launcher.finish(timeout_s=60)
        assert launcher.process.returncode == 0, out
        assert "interrupted; stopping the stack" in out, out
        assert_gone(started_pids(out.splitlines()))


@pytest.mark.slow
def test_a_launcher_killed_outright_takes_its_nodes_down() -> None:
    """SIGKILL gives the launcher no chance to stop its nodes: each asked the kernel for SIGTERM when its
    supervisor dies (runtime.follow_supervisor) and goes through its orderly close, leaving no orphan."""
    with LaunchedStack("sim:=true", "ros.twin.action_source=expert") as launcher:
        launcher.wait_for(stack_up, timeout_s=120)
        pids = started_pids(launcher.lines)
        assert set(pids) == {"twin", "command_node"}
        launcher.process.kill()
        launcher.process.wait()
        deadline = time.monotonic() + 60  # a liveness bound, never a speed check
        while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert_gone(pids)


def test_a_node_whose_supervisor_is_already_gone_does_not_start() -> None:
    """The launcher died between starting a node and the node's request for SIGTERM: the node sees another
    parent and exits before it touches ROS."""
    env = dict(os.environ, GATO_ROS_SUPERVISOR_PID="1", ROS_DOMAIN_ID=str(LAUNCHER_DOMAIN_ID))
    done = subprocess.run(
        [sys.executable, "-m", "gato_ros.ros.command_node"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the supervisor (pid 1) is gone; not starting" in done.stderr, done.stderr
    assert "command node up" not in done.stdout + done.stderr


@pytest.mark.slow
def test_launcher_writes_a_playable_video_and_reports_the_pace(tmp_path: Path) -> None:
    """`--video`: the policy's camera views of the episode as a playable MP4; the run ends with the pace
    (actions per sim second, the twin's real-time factor, stale-action holds)."""
    import imageio.v3 as iio

    video = tmp_path / "demo.mp4"
    # 4 s (80 ticks): the twin renders only once it has discovered the launcher's image subscription
    # (lazy images); on a loaded machine that took ~1.8 s, leaving a 2 s episode 3 frames.
    with LaunchedStack(
        "sim:=true", "ros.twin.action_source=expert", "control.episode_seconds=4", "--episodes", "1",
        "--video", str(video),
    ) as launcher:  # fmt: skip
        out = launcher.finish(timeout_s=240)
    assert launcher.process.returncode == 0, out
    assert "[launch] pace: " in out and "actions per sim second" in out and "real time" in out, out
    assert f"[launch] video of the episodes: {video}" in out, out
    frames = iio.imread(video, plugin="pyav")
    assert frames.ndim == 4 and len(frames) >= 5 and frames.shape[-1] == 3
    assert frames.shape[1] >= 2 * 128 and frames.shape[2] >= 4 * 128  # two views side by side, enlarged
    assert frames.std() > 0


PRIORITY_PROBE = """
import os, sys
from gato_ros.ros.runtime import raise_cpu_priority
os.setpriority(os.PRIO_PROCESS, 0, 5)                      # lowering one's priority is always allowed
assert raise_cpu_priority(None, "probe") is None and raise_cpu_priority(7, "probe") is None
assert os.getpriority(os.PRIO_PROCESS, 0) == 5             # null or a lower priority: left alone
message = raise_cpu_priority(2, "probe")
print(os.getpriority(os.PRIO_PROCESS, 0), message)
"""


def test_nodes_raise_their_cpu_priority_or_say_why_not() -> None:
    """ros.scheduling: a node on the control path runs at its configured nice value when the process may
    raise its priority (root, CAP_SYS_NICE, RLIMIT_NICE), else keeps its own and logs one line why."""
    done = subprocess.run(
        [sys.executable, "-c", PRIORITY_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    nice, message = done.stdout.strip().split(" ", 1)
    if nice == "2":
        assert message == "probe: running at nice 2 (ros.scheduling)"
    else:
        assert nice == "5" and "could not raise CPU priority to nice 2" in message
    cfg = load_config([])
    assert cfg.ros.scheduling.command_node < cfg.ros.scheduling.policy < 0  # the safety path first


REALTIME_PROBE = """
import os, threading
from gato_ros.ros.runtime import use_realtime_scheduling
assert use_realtime_scheduling(None, "probe") is None
assert os.sched_getscheduler(0) == os.SCHED_OTHER
message = use_realtime_scheduling(3, "probe")
started = threading.Event()
stop = threading.Event()
worker = threading.Thread(target=lambda: (started.set(), stop.wait()))  # as a middleware receive thread
worker.start()
started.wait()
worker_policy = (os.sched_getscheduler(worker.native_id), os.sched_getparam(worker.native_id).sched_priority)
stop.set()
worker.join()
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # a forked child (multiprocessing, os.fork)
    os.write(write, str(os.sched_getscheduler(0)).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = os.read(read, 16).decode()
fifo = os.sched_getscheduler(0) == os.SCHED_FIFO
print(fifo, os.sched_getparam(0).sched_priority, worker_policy[0], worker_policy[1], child, message)
"""


def test_nodes_use_realtime_scheduling_or_say_why_not() -> None:
    """ros.realtime_priority: a node on the control path runs under SCHED_FIFO at its configured priority
    when permitted, every thread of it included (a normally scheduled middleware receive thread delayed
    the command node's actions behind a busy twin), but not a child it forks; else it keeps normal
    scheduling and logs one line why."""
    done = subprocess.run(
        [sys.executable, "-c", REALTIME_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    fifo, level, worker_policy, worker_level, child, message = done.stdout.strip().split(" ", 5)
    assert child == str(os.SCHED_OTHER)  # nothing the node forks is real-time
    if fifo == "True":
        assert level == "3" and message == "probe: real-time scheduling SCHED_FIFO 3 (ros.realtime_priority)"
        assert (worker_policy, worker_level) == (str(os.SCHED_FIFO), "3")  # threads inherit it
    else:
        assert level == "0" and "could not use real-time scheduling (SCHED_FIFO 3" in message
        assert worker_policy == str(os.SCHED_OTHER)
    cfg = load_config([])
    realtime = cfg.ros.realtime_priority
    assert realtime.command_node > realtime.policy >= 1  # the command node preempts the policy
    assert realtime.twin is None  # the twin stands in for the robot: it never takes a core from the stack


def test_realtime_priority_outside_1_to_99_is_refused() -> None:
    from gato_ros.ros import runtime

    with pytest.raises(ValueError, match=r"1\.\.99"):
        runtime.use_realtime_scheduling(0, "policy")
    with pytest.raises(ValueError, match=r"1\.\.99"):
        runtime.use_realtime_scheduling(100, "policy")


def test_a_node_that_may_not_use_realtime_scheduling_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from gato_ros.ros import runtime

    def refuse(*_args: object) -> None:
        raise PermissionError("not permitted")

    monkeypatch.setattr(runtime.os, "sched_setscheduler", refuse)
    message = runtime.use_realtime_scheduling(50, "command_node")
    assert message is not None and "could not use real-time scheduling (SCHED_FIFO 50" in message


def test_a_node_that_may_not_raise_its_priority_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from gato_ros.ros import runtime

    def refuse(*_args: object) -> None:
        raise PermissionError("not permitted")

    monkeypatch.setattr(runtime.os, "getpriority", lambda *_args: 0)
    monkeypatch.setattr(runtime.os, "setpriority", refuse)
    message = runtime.raise_cpu_priority(-10, "command_node")
    assert message is not None and "could not raise CPU priority to nice -10" in message
    assert "running at nice 0" in message
