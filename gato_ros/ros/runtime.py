"""One way for every gato_ros node to get its config, its clock, its topics and its life cycle.

Every node module of the stack ends the same way::

    class MyNode(GatoNode):
        def __init__(self, cfg: DictConfig, **kwargs: Any) -> None:
            super().__init__("my_node", cfg, **kwargs)    # kwargs: rclpy's context from run_node
            self.pub = self.publisher(contract.ACTION)           # contract objects, never literal names
            self.sub = self.subscription(contract.JOINT_STATES, self.on_joint_states)

    def main(argv: list[str] | None = None) -> int:
        return run_node(MyNode, argv)

    if __name__ == "__main__":
        sys.exit(main())

and is started as ``python -m gato_ros.ros.my_node [key=value ...] [--ros-args ...]``:

- **Config.** The arguments left after `rclpy.utilities.remove_ros_args` are hydra overrides
  (``key=value``, ``+key=value``, ``group=option``) composed by `gato_ros.config.load_config`, so
  ``control.rate_hz=10`` means the same thing to every node, to the launcher and to the tools.
  ``--ros-args`` (remaps, ``__node:=name``, log levels) still reach rclpy.
- **ROS parameters.** A node declares the config sections it reads (`GatoNode.SETTINGS`) as read-only
  ROS 2 parameters (``safety.stale_after_periods``, ...), so ``ros2 param list/get`` shows its effective
  settings, and ``--ros-args -p safety.stale_after_periods:=1.5`` (or a launch file's parameters) overrides
  the composed config like the hydra override ``safety.stale_after_periods=1.5`` does: one config, two
  ways in. A value of the wrong type is a one-line error at start-up.
- **Sim time.** ``ros.use_sim_time=true`` (set by the launcher for ``sim:=true``) gives the node the ROS
  parameter ``use_sim_time``: its clock, timers and stamps then follow the twin's ``/clock``. The twin node
  itself publishes that clock and stays on wall time.
- **Life cycle.** `run_node` inits an isolated rclpy context, builds the node, spins it (single- or
  multi-threaded executor), and turns SIGINT and SIGTERM into a clean shutdown: `GatoNode.close` runs
  (stop hardware, hold the arm), the node is destroyed and the context shut down. It returns the exit
  code: 0 after a signal or `GatoNode.request_exit(0)`, the requested code otherwise, 1 if the node
  raised. A node that must stop the process (e.g. the twin after its last episode) calls `request_exit`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import rclpy
from omegaconf import DictConfig
from rclpy.client import Client
from rclpy.context import Context
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.service import Service as RclpyService
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.utilities import remove_ros_args

from gato_ros.config import load_config
from gato_ros.ros.contract import Service, Topic
from gato_ros.ros.launcher import SUPERVISOR_PID_ENV

EXIT_OK = 0
EXIT_ERROR = 1
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def hydra_overrides(argv: Sequence[str] | None = None) -> list[str]:
    """The hydra overrides of a node's command line: every non-ROS argument after the program name.

    Anything that is not ``key=value`` is an error here rather than silently ignored: a typo'd override
    on a robot should stop the node, not run it with defaults.
    """
    args = remove_ros_args(list(sys.argv if argv is None else argv))[1:]
    bad = [a for a in args if "=" not in a]
    if bad:
        raise ValueError(f"expected hydra overrides key=value, got {bad}")
    return args


def config_from_argv(argv: Sequence[str] | None = None) -> DictConfig:
    """The composed config of a node: `load_config` with the overrides of its command line."""
    return load_config(hydra_overrides(argv))


def _parameter_value(value: Any) -> Any | None:
    """A config leaf as a ROS parameter value (bool, int, float, str or a homogeneous list of them), or
    None where ROS parameters cannot hold it (null, empty or mixed lists)."""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, bool) for v in value) or all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return value if all(isinstance(v, int) for v in value) else [float(v) for v in value]
    return None


def config_parameters(cfg: DictConfig, sections: Sequence[str]) -> dict[str, Any]:
    """The leaves of `sections` of `cfg` (resolved) that ROS parameters can hold, by dotted name."""
    from omegaconf import OmegaConf

    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                if str(key)[:1].isalpha():  # ROS names: each token starts with a letter
                    walk(f"{prefix}.{key}", child)
            return
        value = _parameter_value(node)
        if value is not None:
            out[prefix] = value

    for section in sections:
        node = OmegaConf.select(cfg, section)
        if node is not None:
            walk(section, OmegaConf.to_container(node, resolve=True))
    return out


def _coerce(name: str, override: Any, like: Any) -> Any:
    """A ROS override in the type of the config value it replaces, or a one-line ValueError."""
    try:
        if isinstance(like, bool):
            if not isinstance(override, bool):
                raise TypeError
            return override
        if isinstance(like, int):
            if isinstance(override, bool) or not float(override).is_integer():
                raise TypeError
            return int(override)
        if isinstance(like, float):
            if isinstance(override, bool):
                raise TypeError
            return float(override)
        if isinstance(like, str):
            return str(override)
        if isinstance(like, list):
            if not isinstance(override, list | tuple):
                raise TypeError
            return [_coerce(name, o, like[0]) for o in override] if like else list(override)
    except (TypeError, ValueError):
        raise ValueError(f"ROS parameter {name}:={override!r} does not fit its setting ({like!r})") from None
    return override


class GatoNode(Node):
    """A node of the stack: holds the composed config and creates its endpoints from the contract."""

    # The config sections the node reads, declared as its read-only ROS parameters.
    SETTINGS: tuple[str, ...] = ("control",)

    def __init__(
        self, name: str, cfg: DictConfig, *, use_sim_time: bool | None = None, **kwargs: Any
    ) -> None:
        # An explicit choice (the twin: always wall time) or ros.use_sim_time=true wins; otherwise the
        # parameter is left to rclpy's default, so `--ros-args -p use_sim_time:=true` still works.
        if use_sim_time is None and bool(cfg.ros.use_sim_time):
            use_sim_time = True
        overrides = (
            [] if use_sim_time is None else [Parameter("use_sim_time", Parameter.Type.BOOL, use_sim_time)]
        )
        super().__init__(name, parameter_overrides=overrides, **kwargs)
        self.cfg = cfg
        self.exit_code: int | None = None
        self.ros_overrides = self.declare_settings(cfg)

    def declare_settings(self, cfg: DictConfig) -> dict[str, Any]:
        """Declare `SETTINGS` as read-only parameters; a ROS override of one (``-p name:=value``) is
        written into `cfg` before the node reads it. Returns the overrides applied."""
        from omegaconf import OmegaConf
        from rcl_interfaces.msg import ParameterDescriptor

        applied: dict[str, Any] = {}
        for name, value in config_parameters(cfg, self.SETTINGS).items():
            descriptor = ParameterDescriptor(read_only=True, dynamic_typing=True)
            declared = self.declare_parameter(name, value, descriptor).value
            if declared != value:
                coerced = _coerce(name, declared, value)
                OmegaConf.update(cfg, name, coerced)
                applied[name] = coerced
        if applied:
            self.get_logger().info(f"ROS parameter overrides: {applied}")
        return applied

    # -- endpoints from the contract ---------------------------------------------------------------
    def publisher(self, topic: Topic) -> Publisher:
        return self.create_publisher(topic.msg_type, topic.name, topic.qos.profile())

    def subscription(self, topic: Topic, callback: Callable[[Any], None], **kwargs: Any) -> Subscription:
        return self.create_subscription(topic.msg_type, topic.name, callback, topic.qos.profile(), **kwargs)

    def service(self, service: Service, callback: Callable[[Any, Any], Any], **kwargs: Any) -> RclpyService:
        return self.create_service(service.srv_type, service.name, callback, **kwargs)

    def client(self, service: Service, **kwargs: Any) -> Client:
        return self.create_client(service.srv_type, service.name, **kwargs)

    # -- life cycle --------------------------------------------------------------------------------
    def now_s(self) -> float:
        """The node's clock (sim time under use_sim_time) in seconds."""
        return self.get_clock().now().nanoseconds * 1e-9

    def request_exit(self, code: int = EXIT_OK) -> None:
        """Ask `run_node` to shut this node down and return `code` (first request wins)."""
        if self.exit_code is None:
            self.exit_code = int(code)

    def close(self) -> None:
        """Release hardware / files before the node is destroyed; subclasses extend it."""


def raise_cpu_priority(nice: int | None, who: str) -> str | None:
    """Run this process at nice value `nice` (lower = more CPU when the cores are contended), as
    ros2_control raises its control thread's priority; the one line to log, or None if nothing changed.

    Called before rclpy.init and before torch's first op, so the middleware's and torch's threads, created
    later, inherit it. Raising priority needs CAP_SYS_NICE or an `RLIMIT_NICE` (`nice` in
    /etc/security/limits.conf); without either the node runs at its inherited priority and says so.
    """
    if nice is None:
        return None
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if int(nice) >= current:
        return None
    try:
        os.setpriority(os.PRIO_PROCESS, 0, int(nice))
    except PermissionError:
        return (
            f"{who}: could not raise CPU priority to nice {nice} (needs CAP_SYS_NICE or a 'nice' limit in "
            f"/etc/security/limits.conf); running at nice {current}: other load on the cores can delay "
            "the control path"
        )
    return f"{who}: running at nice {nice} (ros.scheduling)"


def _normal_scheduling_in_child() -> None:
    """At-fork hook: a process a real-time node forks (multiprocessing, os.fork) runs normally scheduled."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


_child_hook_registered = False


def use_realtime_scheduling(
    priority: int | None, who: str, setting: str = "ros.realtime_priority"
) -> str | None:
    """Run this process under SCHED_FIFO at `priority` (1..99), as ros2_control runs its update thread at
    50: the kernel then serves it before every normally scheduled process, so competing load on the cores
    (a training job, a compiler) cannot delay the control path at all, where a nice value only weighs the
    share. The one line to log, or None if nothing changed.

    Call it, like `raise_cpu_priority`, before rclpy.init and torch's first op: the threads they start
    (the middleware's receive threads, which hand every message to the executor; torch's pool) inherit it.
    Without SCHED_RESET_ON_FORK on purpose: that flag resets every clone, threads included, and left the
    receive threads normally scheduled, so a busy twin delayed the command node's ACTION by 25-50 ms
    (issue 12). A process this one forks from Python (multiprocessing, os.fork) is reset to normal
    scheduling (an at-fork hook); the nodes exec no other programs. The kernel's real-time throttling
    (/proc/sys/kernel/sched_rt_runtime_us, 95 % of each second by default) keeps a runaway node from
    freezing a core. Needs CAP_SYS_NICE or an `rtprio` limit in /etc/security/limits.conf; without either
    the node keeps normal scheduling (its nice value still applies) and says so.
    """
    global _child_hook_registered
    if priority is None:
        return None
    level = int(priority)
    if not 1 <= level <= 99:
        raise ValueError(f"{setting}.{who} must be null or in 1..99, got {priority}")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(level))
    except PermissionError:
        return (
            f"{who}: could not use real-time scheduling (SCHED_FIFO {level}; needs CAP_SYS_NICE or an "
            "'rtprio' limit in /etc/security/limits.conf); running with normal scheduling: other load on "
            "the cores can delay the control path"
        )
    if not _child_hook_registered:
        os.register_at_fork(after_in_child=_normal_scheduling_in_child)
        _child_hook_registered = True
    return f"{who}: real-time scheduling SCHED_FIFO {level} ({setting})"


def follow_supervisor(environ: dict[str, str] | None = None) -> str | None:
    """Under a supervisor (`gato-ros launch`, `gato-ros eval`: its pid in GATO_ROS_SUPERVISOR_PID), have the
    kernel send this process SIGTERM when the supervisor dies, so that a launcher killed outright (SIGKILL,
    the OOM killer, a test's timeout) takes its nodes down through their orderly close instead of leaving
    an orphaned stack talking on the domain. Returns why to stop at once (the supervisor is already gone),
    else None. Linux only (prctl); elsewhere nodes outlive a killed launcher, as under ``ros2 launch``."""
    value = (os.environ if environ is None else environ).get(SUPERVISOR_PID_ENV)
    if not value or not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return None  # the node still runs; it only loses the automatic stop
    if os.getppid() != int(value):  # it died before the request took effect
        return f"the supervisor (pid {value}) is gone; not starting"
    return None


def make_executor(context: Context, num_threads: int) -> Executor:
    if num_threads > 1:
        return MultiThreadedExecutor(num_threads=num_threads, context=context)
    return SingleThreadedExecutor(context=context)


def run_node(
    node_factory: Callable[..., Node],
    argv: Sequence[str] | None = None,
    *,
    num_threads: int = 1,
    cfg: DictConfig | None = None,
    priority: str | None = None,
) -> int:
    """Build the node from the command line's config, spin it until a signal or an exit request.

    `node_factory(cfg, context=context)` builds the node in the process's own rclpy context (a
    `GatoNode` subclass passes `**kwargs` on to `GatoNode.__init__`).

    `num_threads > 1` spins a MultiThreadedExecutor (use callback groups for callbacks that may run
    concurrently). Signals are handled here, not by rclpy, so that `close` always runs in order.
    `priority` names this process's entries of ``ros.scheduling`` (its nice value) and
    ``ros.realtime_priority`` (SCHED_FIFO, or null).
    """
    argv = list(sys.argv if argv is None else argv)
    orphaned = follow_supervisor()
    if orphaned:
        print(orphaned, file=sys.stderr, flush=True)
        return EXIT_ERROR
    if cfg is None:
        cfg = config_from_argv(argv)
    if priority is not None:
        messages = (
            raise_cpu_priority(cfg.ros.get("scheduling", {}).get(priority), priority),
            use_realtime_scheduling(cfg.ros.get("realtime_priority", {}).get(priority), priority),
        )
        for message in messages:
            if message:
                print(message, flush=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    context = Context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node: Node | None = None
    code = EXIT_OK
    try:
        node = node_factory(cfg, context=context)
        executor = make_executor(context, num_threads)
        executor.add_node(node)
        spin_period = float(cfg.ros.spin_period_s)
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=spin_period)
            requested = getattr(node, "exit_code", None)
            if requested is not None:
                code = requested
                break
        executor.shutdown(timeout_sec=float(cfg.ros.shutdown_timeout_s))  # let running callbacks finish
    except Exception:
        traceback.print_exc()
        code = EXIT_ERROR
    finally:
        if node is not None:
            try:
                if isinstance(node, GatoNode):
                    node.close()
                node.destroy_node()
            except Exception:
                traceback.print_exc()
                code = code or EXIT_ERROR
        if context.ok():
            rclpy.shutdown(context=context)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
