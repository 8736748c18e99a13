"""What the stack consists of, and how to run it as processes without ROS 2's launch tools.

`stack_plan(cfg, sim)` is the one list of nodes and their arguments. Both front ends read it:
``launch/stacking.launch.py`` (``ros2 launch gato_ros stacking.launch.py`` on a full ROS 2 install) turns
each `NodeSpec` into a ``launch_ros`` Node, and ``gato-ros launch stacking`` (PyPI-only installs, `make
demo`, the end-to-end tests) starts each as ``python -m <module>`` through `NodeProcesses`.

The sim stack is twin + policy + command; with ``ros.twin.action_source=expert`` (or ``random``) the twin
publishes the scripted expert's (or a uniformly random) ACTION and no policy node runs. The real stack is
one RealSense camera node per policy camera + policy + command; the arm's driver (ros2_control / intera)
is the robot's own and not started here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from omegaconf import DictConfig

PACKAGE = "gato_ros"
SUPERVISOR_PID_ENV = "GATO_ROS_SUPERVISOR_PID"  # NodeProcesses' pid, for the nodes it starts (run_node)
ROS_DOMAIN_ID_RANGE = (1, 101)  # ROS 2 domain ids that are safe on every platform (0 is the default)


@dataclass(frozen=True)
class NodeSpec:
    """One node of the stack: its ROS name, Python module, console script and hydra overrides."""

    name: str
    module: str
    executable: str
    args: tuple[str, ...] = ()
    namespace: str = ""  # "" or "/cell1": the node's ROS namespace (ros.namespace)

    def ros_args(self) -> list[str]:
        """Node name, and in a namespace also ``__ns`` and the sim clock remapped into it."""
        args = ["-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}", "-r", f"/clock:={self.namespace}/clock"]
        return args

    def command(self, python: str = sys.executable) -> list[str]:
        """The process command line: ``python -m module overrides --ros-args -r __node:=name ...``."""
        return [python, "-m", self.module, *self.args, "--ros-args", *self.ros_args()]


def ros_namespace(cfg: DictConfig) -> str:
    """``ros.namespace`` as an absolute ROS namespace ("" for the root); a one-line error if invalid."""
    value = str(cfg.ros.get("namespace") or "").strip().rstrip("/")
    if not value:
        return ""
    value = value if value.startswith("/") else f"/{value}"
    tokens = value[1:].split("/")
    if not all(t and (t[0].isalpha() or t[0] == "_") and t.replace("_", "").isalnum() for t in tokens):
        raise ValueError(f"ros.namespace={cfg.ros.namespace!r} is not a ROS namespace (e.g. /cell1)")
    return value


def launch_overrides(
    sim: bool, checkpoint: str | None = None, device: str | None = None, extra: Sequence[str] = ()
) -> list[str]:
    """The hydra overrides that the launch arguments (sim, checkpoint, device) stand for, plus `extra`
    (last, so the user's word wins)."""
    overrides = [f"ros.use_sim_time={str(sim).lower()}"]
    if sim:  # the twin's arm may move as soon as the stack is up; a real arm waits for /safety/enable
        overrides.append("safety.start_enabled=true")
    else:  # nothing on a real cell publishes OBJECT_POSES: a state policy fits them to its camera frames
        overrides.append("policy.object_pose_source=cameras")
    if checkpoint:
        overrides.append(f"policy.checkpoint={checkpoint}")
    if device:
        overrides.append(f"policy.device={device}")
    return overrides + list(extra)


def stack_plan(cfg: DictConfig, sim: bool, overrides: Sequence[str] = ()) -> list[NodeSpec]:
    """The nodes of the stack, in start order; every node gets the same `overrides` (plus its own)."""
    common = tuple(overrides)
    namespace = ros_namespace(cfg)
    nodes: list[NodeSpec] = []
    if not sim:
        check_driver_command_timeout(cfg)
    if sim:
        nodes.append(NodeSpec("twin", f"{PACKAGE}.ros.twin_node", "twin_node", common, namespace))
    else:
        for camera in cfg.cameras.policy_cameras:
            args = (*common, f"ros.camera.name={camera}")
            nodes.append(
                NodeSpec(f"camera_{camera}", f"{PACKAGE}.ros.camera_node", "camera_node", args, namespace)
            )
    if not (sim and str(cfg.ros.twin.action_source) in {"expert", "random"}):  # the twin acts itself
        nodes.append(NodeSpec("policy", f"{PACKAGE}.ros.policy_node", "policy_node", common, namespace))
    nodes.append(NodeSpec("command_node", f"{PACKAGE}.ros.command_node", "command_node", common, namespace))
    if bool(cfg.live_view.enabled):
        module = f"{PACKAGE}.ros.live_view_node"
        nodes.append(NodeSpec("live_view", module, "live_view_node", common, namespace))
    return nodes


def check_driver_command_timeout(cfg: DictConfig) -> float:
    """The real cell needs an arm driver that stops the arm by itself when commands stop (the command
    node can be frozen or killed): a ValueError unless ``robot.driver_command_timeout_s`` declares one no
    longer than the watchdog's stale limit plus one control period."""
    value = cfg.robot.get("driver_command_timeout_s")
    period = 1.0 / float(cfg.control.rate_hz)
    limit = (float(cfg.safety.stale_after_periods) + 1.0) * period
    if value is None:
        raise ValueError(
            "the real cell needs robot.driver_command_timeout_s: the arm driver's own command timeout "
            f"(it must stop the arm when commands stop; at most {limit:.3f} s), e.g. "
            "robot.driver_command_timeout_s=0.1 once your driver is configured so"
        )
    timeout = float(value)
    if not (timeout > 0.0 and timeout <= limit + 1e-9):
        raise ValueError(f"robot.driver_command_timeout_s={value} must be in (0, {limit:.3f}] s")
    return timeout


MAX_ROS_DOMAIN_ID = 232  # the highest id ROS 2 accepts on Linux (port arithmetic of the DDS spec)


def user_domain_id(env: Mapping[str, str] | None = None) -> int | None:
    """The ROS_DOMAIN_ID the user set (None when unset or empty). Tools respect it instead of picking their
    own; a value ROS cannot use is a one-line error."""
    value = (os.environ if env is None else env).get("ROS_DOMAIN_ID", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) > MAX_ROS_DOMAIN_ID:
        raise ValueError(f"ROS_DOMAIN_ID={value!r} is not a ROS 2 domain id (0..{MAX_ROS_DOMAIN_ID})")
    return int(value)


def isolated_domain_id(pid: int | None = None) -> int:
    """A ROS_DOMAIN_ID derived from a process id, so that concurrent test runs do not hear each other."""
    low, high = ROS_DOMAIN_ID_RANGE
    return low + (os.getpid() if pid is None else pid) % (high - low + 1)


@contextlib.contextmanager
def ros_domain(domain_id: int) -> Iterator[int]:
    """Run a block on ROS_DOMAIN_ID `domain_id` (this process's rclpy inits and the children it starts),
    then restore the previous value."""
    previous = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    try:
        yield domain_id
    finally:
        if previous is None:
            os.environ.pop("ROS_DOMAIN_ID", None)
        else:
            os.environ["ROS_DOMAIN_ID"] = previous


@dataclass
class NodeProcess:
    spec: NodeSpec
    process: subprocess.Popen
    reader: threading.Thread
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def returncode(self) -> int | None:
        return self.process.poll()


@dataclass
class NodeProcesses:
    """Runs NodeSpecs as child processes with prefixed output and an orderly SIGINT→SIGTERM→SIGKILL stop.

    Children run in their own sessions so that a terminal's Ctrl-C reaches them only through `stop`
    (once, in order), never twice.
    """

    env: dict[str, str] | None = None
    output: IO[str] = field(default_factory=lambda: sys.stdout)
    on_line: Callable[[str, str], None] | None = None  # (node name, line), e.g. for tests
    nodes: list[NodeProcess] = field(default_factory=list)
    _print_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self, spec: NodeSpec, prefix: Sequence[str] = ()) -> NodeProcess:
        """Start one node; `prefix` is a command it runs under (e.g. ``ip netns exec NAME``: the two-host
        test puts the policy on another network namespace)."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
        env[SUPERVISOR_PID_ENV] = str(os.getpid())  # a node stops when this process dies (run_node)
        process = subprocess.Popen(
            [*prefix, *spec.command()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        reader = threading.Thread(target=self._relay, args=(spec.name, process), daemon=True)
        node = NodeProcess(spec, process, reader)
        reader.start()
        self.nodes.append(node)
        return node

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            with self._print_lock:
                print(f"[{name}] {line}", file=self.output, flush=True)
            if self.on_line is not None:
                self.on_line(name, line)

    def exited(self) -> list[NodeProcess]:
        """Children that have ended without being asked to."""
        return [n for n in self.nodes if not n.expected_exit and n.returncode() is not None]

    def stop(self, sigint_wait_s: float, sigterm_wait_s: float) -> dict[str, int]:
        """Stop every child (SIGINT, then SIGTERM, then SIGKILL); return each one's exit code."""
        for node in self.nodes:
            node.expected_exit = True
        for sig, wait_s in ((signal.SIGINT, sigint_wait_s), (signal.SIGTERM, sigterm_wait_s)):
            alive = [n for n in self.nodes if n.returncode() is None]
            for node in alive:
                _signal(node.process, sig)
            deadline = time.monotonic() + wait_s
            while alive and time.monotonic() < deadline:
                alive = [n for n in alive if n.returncode() is None]
                time.sleep(0.02)
        for node in self.nodes:
            if node.returncode() is None:
                _signal(node.process, signal.SIGKILL)
            node.process.wait()
            node.reader.join(timeout=1.0)
        return {n.spec.name: int(n.process.returncode) for n in self.nodes}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child (for tests of what the others do when it dies)."""
        for node in self.nodes:
            if node.spec.name == name:
                _signal(node.process, sig)
                return
        raise KeyError(name)


def _signal(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
