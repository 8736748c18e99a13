"""`gato-ros launch stacking [sim:=true|false] [checkpoint:=DIR] [device:=auto|cpu|cuda] [key=value ...]`

Starts the nodes of `gato_ros.ros.launcher.stack_plan` as separate processes (``python -m <module>``),
the same nodes with the same arguments as ``ros2 launch gato_ros stacking.launch.py``, for installs
without ROS 2's launch tools. Output lines are prefixed with the node's name. Ctrl-C (SIGINT) or SIGTERM
stops every node (SIGINT, then SIGTERM, then SIGKILL); if any node dies on its own, the others are
stopped and the exit code is non-zero. On the twin, every finished episode is printed with its outcome,
and the run ends with the success rate and its Wilson 95% interval.

Options:
  --episodes N   stop after N finished episodes (sim only)
  --duration S   stop after S wall seconds
  --isolated     run on a ROS_DOMAIN_ID of its own (derived from the pid), e.g. beside another stack;
                 a ROS_DOMAIN_ID you set is used as it is
  --video PATH   (sim) the policy's two camera views of every episode, side by side, with the episode,
                 the action and each outcome overlaid, as an MP4 (the twin then renders every tick)

On the twin the run ends with the pace: actions per sim second, the twin's real-time factor and the
command node's stale-action holds, and says plainly when the machine could not keep up.

Examples:
  gato-ros launch stacking sim:=true ros.twin.action_source=expert --episodes 3   # the scripted expert
  gato-ros launch stacking sim:=true checkpoint:=runs/tiny/checkpoint              # a trained policy
  gato-ros launch stacking sim:=false checkpoint:=runs/tiny/checkpoint device:=cuda  # the real cell
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np

from gato_ros.config import load_config
from gato_ros.evaluation.stats import WILSON_Z, wilson_interval  # noqa: F401  (re-exported)
from gato_ros.ros.launcher import (
    NodeProcesses,
    isolated_domain_id,
    launch_overrides,
    ros_namespace,
    stack_plan,
    user_domain_id,
)

STACKS = ("stacking",)
LAUNCH_ARGS = ("sim", "checkpoint", "device")


@dataclass
class EpisodeLog:
    """Finished episodes as the twin reports them on EPISODE_STATUS (thread-safe)."""

    finished: dict[int, dict] = field(default_factory=dict)
    heard: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def add(self, status: dict) -> dict | None:
        """Record a status; returns it if it newly finished an episode."""
        with self._lock:
            self.heard = True
            if not status.get("done") or status["episode"] in self.finished:
                return None
            self.finished[status["episode"]] = status
            return status

    def count(self) -> int:
        with self._lock:
            return len(self.finished)

    def summary(self) -> str:
        with self._lock:
            results = list(self.finished.values())
        if not results:
            return "no episode finished"
        wins = sum(bool(r["success"]) for r in results)
        low, high = wilson_interval(wins, len(results))
        seeds = ",".join(str(r["seed"]) for r in results)
        return (
            f"stacked {wins}/{len(results)} episodes = {100 * wins / len(results):.0f}% "
            f"(Wilson 95% CI {100 * low:.0f}-{100 * high:.0f}%), seeds {seeds}"
        )


@dataclass
class PaceLog:
    """How the stack kept up: the twin's clock against the wall, actions per sim second, and the command
    node's holds for stale actions (the sign of a machine that could not keep up)."""

    first: tuple[float, float] | None = None  # (wall, sim) at the first clock message
    last: tuple[float, float] | None = None
    actions: int = 0
    first_action_sim: float | None = None  # the clock at the first action: the rate counts from there
    stale_holds: int | None = None  # the command node's hold_stale_action counter
    latencies: list[float] = field(default_factory=list)  # the policy node's POLICY_LATENCY, s
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def clock(self, sim_s: float) -> None:
        with self._lock:
            now = (time.monotonic(), sim_s)
            if self.first is None or sim_s < self.first[1]:
                self.first = now
            self.last = now

    def action(self) -> None:
        with self._lock:
            if self.last is None:
                return
            if self.first_action_sim is None or self.last[1] < self.first_action_sim:
                self.first_action_sim, self.actions = self.last[1], 0
            self.actions += 1

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.latencies.append(float(seconds))

    def summary(self, configured_factor: float, rate_hz: float) -> list[str]:
        with self._lock:
            if self.first is None or self.last is None or self.last[0] <= self.first[0]:
                return ["pace: no clock heard"]
            wall = self.last[0] - self.first[0]
            sim = self.last[1] - self.first[1]
            factor = sim / wall
            acting = self.last[1] - (self.first_action_sim or self.last[1])
            rate = (self.actions - 1) / acting if acting > 0 else 0.0
            holds = self.stale_holds
            latencies = np.asarray(self.latencies) * 1e3
        lines = [
            f"pace: {rate:.1f} actions per sim second (control rate {rate_hz:g} Hz), twin at {factor:.2f}x "
            f"real time"
            + (f" (configured {configured_factor:g}x)" if configured_factor > 0 else " (lock-step)")
            + (f"; command node held {holds} ticks for stale actions" if holds is not None else "")
        ]
        if len(latencies):
            p50, p99 = np.percentile(latencies, [50, 99])
            lines.append(
                f"policy latency (observation -> action, in the policy node): p50 {p50:.1f} ms, "
                f"p99 {p99:.1f} ms over {len(latencies)} actions; control period {1e3 / rate_hz:g} ms"
            )
        if configured_factor > 0 and factor < 0.9 * configured_factor:
            lines.append(
                f"this machine could not keep up: the twin ran at {factor:.2f}x instead of "
                f"{configured_factor:g}x real time; the policy and the command node had less time per step "
                "than on a real cell, so outcomes may be worse than in lock-step (gato-ros eval) for that"
            )
        elif rate < 0.9 * rate_hz:
            lines.append(
                f"the policy answered {rate:.1f} times per sim second against {rate_hz:g} Hz: slower than "
                "the control rate on this machine (stale-action holds follow)"
            )
        return lines


class EpisodeVideo:
    """The policy's camera views side by side, with the episode, the action and each outcome overlaid,
    written as the episodes run (one frame per twin tick; H.264, else MPEG-4 part 2, through PyAV)."""

    SCALE = 2  # the 128 px policy views, enlarged for a watcher

    def __init__(self, path: str, cameras: list[str], fps: int) -> None:
        self.path = path
        self.cameras = cameras
        self.fps = fps
        self.latest: dict[str, Any] = {}
        self.action: list[float] | None = None
        self.caption = ""
        self.banner: tuple[str, int] | None = None  # (text, frames left)
        self.frames = 0
        self.writer: Any = None
        self._lock = threading.Lock()

    def _open(self) -> None:
        import imageio.v3 as iio

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        last_error: Exception | None = None
        for codec in ("libx264", "mpeg4"):
            try:
                writer = iio.imopen(self.path, "w", plugin="pyav")
                writer.init_video_stream(codec, fps=self.fps)
                self.writer = writer
                return
            except Exception as err:  # this ffmpeg build lacks the codec: try the next one
                last_error = err
        raise RuntimeError(f"cannot write {self.path}: {last_error}")

    def image(self, camera: str, pixels: Any) -> None:
        """A camera frame; a frame of the first camera closes one video frame (one per tick)."""
        with self._lock:
            self.latest[camera] = pixels
            if camera == self.cameras[0] and all(c in self.latest for c in self.cameras):
                self._write_frame()

    def _write_frame(self) -> None:
        import cv2
        import numpy as np

        views = [self.latest[c] for c in self.cameras]
        height = max(v.shape[0] for v in views)
        frame = np.concatenate([cv2.resize(v, (v.shape[1] * height // v.shape[0], height)) for v in views], 1)
        frame = cv2.resize(frame, (frame.shape[1] * self.SCALE, frame.shape[0] * self.SCALE),
                           interpolation=cv2.INTER_NEAREST)  # fmt: skip
        frame = np.ascontiguousarray(frame)
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(frame, self.caption, (6, 18), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        if self.action is not None:
            text = "action " + " ".join(f"{a:+.2f}" for a in self.action)
            cv2.putText(frame, text, (6, frame.shape[0] - 8), font, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        if self.banner is not None:
            text, left = self.banner
            cv2.putText(frame, text, (6, 44), font, 0.8, (0, 255, 0) if "SUCCESS" in text else (255, 80, 80),
                        2, cv2.LINE_AA)  # fmt: skip
            self.banner = (text, left - 1) if left > 1 else None
        if self.writer is None:
            self._open()
        self.writer.write_frame(frame)
        self.frames += 1

    def status(self, status: dict) -> None:
        with self._lock:
            self.caption = (
                f"episode {status.get('episode')} seed {status.get('seed')} triplet {status.get('triplet')} "
                f"t={float(status.get('sim_time', 0.0)):.1f}s"
            )
            if status.get("done"):
                self.banner = ("SUCCESS" if status.get("success") else "no stack", self.fps)

    def close(self) -> str | None:
        with self._lock:
            if self.writer is None:
                return None
            self.writer.close()
            self.writer = None
            return self.path


def namespaced_clock(namespace: str) -> Any:
    """The sim clock topic a stack in `namespace` runs on (its nodes remap /clock into it)."""
    from dataclasses import replace

    from gato_ros.ros import contract

    return replace(contract.CLOCK, name=f"{namespace}/clock") if namespace else contract.CLOCK


class EpisodeMonitor:
    """A small rclpy node in the launcher that prints each finished episode of the twin, follows the pace
    of the stack and, with a video, records the policy's camera views."""

    def __init__(
        self,
        log: EpisodeLog,
        say: Callable[[str], None],
        spin_period_s: float,
        pace: PaceLog | None = None,
        video: EpisodeVideo | None = None,
        namespace: str = "",
    ) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        from gato_ros.ros import contract

        self.log, self.say = log, say
        self.spin_period_s = spin_period_s
        self.context = Context()
        rclpy.init(args=[], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("launch_monitor", namespace=namespace or None, context=self.context)
        topic = contract.EPISODE_STATUS
        self.node.create_subscription(topic.msg_type, topic.name, self.on_status, topic.qos.profile())
        self.pace, self.video = pace, video
        if pace is not None:
            for topic, callback in (
                (namespaced_clock(namespace), lambda m: pace.clock(contract.stamp_to_seconds(m.clock))),
                (contract.ACTION, lambda _m: pace.action()),
                (contract.POLICY_LATENCY, lambda m: pace.latency(m.data)),
                (contract.DIAGNOSTICS, self.on_diagnostics),
            ):
                self.node.create_subscription(topic.msg_type, topic.name, callback, topic.qos.profile())
        if video is not None:
            for camera in video.cameras:
                topic = contract.camera_image(camera)
                self.node.create_subscription(
                    topic.msg_type, topic.name, lambda m, c=camera: self.on_image(c, m), topic.qos.profile()
                )
            topic = contract.ACTION
            self.node.create_subscription(topic.msg_type, topic.name, self.on_action, topic.qos.profile())
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, name="episode_monitor", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.running and self.context.ok():
            self.executor.spin_once(timeout_sec=self.spin_period_s)

    def on_diagnostics(self, msg) -> None:
        for status in msg.status:
            for kv in status.values:
                if kv.key == "hold_stale_action" and self.pace is not None:
                    self.pace.stale_holds = int(kv.value)

    def on_image(self, camera: str, msg) -> None:
        from gato_ros.ros.messages import image_array

        try:
            assert self.video is not None
            self.video.image(camera, image_array(msg))
        except Exception as err:  # a video problem must not stop the run
            self.say(f"video: {err!r}; recording stopped")
            self.video = None

    def on_action(self, msg) -> None:
        if self.video is not None:
            self.video.action = list(msg.data)

    def on_status(self, msg) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        if self.video is not None:
            self.video.status(status)
        done = self.log.add(status)
        if done is not None:
            if done["success"] and done.get("stacked_since") is not None:
                outcome = f"SUCCESS (stacked at {float(done['stacked_since']):.2f} s)"
            else:
                outcome = (
                    "SUCCESS" if done["success"] else ("time limit" if done.get("time_limit") else "failure")
                )
            self.say(
                f"episode {done['episode']} (seed {done['seed']}, triplet {done.get('triplet')}): {outcome} "
                f"after {done['sim_time']:.2f} s sim, {done['step']} steps"
            )

    def close(self) -> None:
        import rclpy

        self.running = False
        self.thread.join(timeout=1.0)
        self.executor.shutdown(timeout_sec=1.0)  # bounded: a stuck spin thread must not hold the exit
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gato-ros launch",
        description="Start the gato_ros stack as processes.",
        epilog="launch arguments: sim:=true|false checkpoint:=DIR device:=auto|cpu|cuda; "
        "anything else of the form key=value is a hydra override for every node",
    )
    parser.add_argument("stack", choices=STACKS)
    parser.add_argument("--episodes", type=int, default=0, help="stop after N finished episodes (sim)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S wall seconds")
    parser.add_argument("--isolated", action="store_true", help="use a ROS_DOMAIN_ID of this run's own")
    parser.add_argument(
        "--video",
        metavar="PATH",
        help="(sim) write the policy's camera views of every episode to PATH (.mp4)",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, dict[str, str], list[str]]:
    parser = build_parser()
    args, rest = parser.parse_known_args(list(argv))
    launch_args: dict[str, str] = {}
    overrides: list[str] = []
    for item in rest:
        if ":=" in item:
            key, value = item.split(":=", 1)
            if key not in LAUNCH_ARGS:
                parser.error(f"unknown launch argument {key!r} (known: {', '.join(LAUNCH_ARGS)})")
            launch_args[key] = value
        elif "=" in item and not item.startswith("-"):
            overrides.append(item)
        else:
            parser.error(f"unrecognized argument {item!r}")
    return args, launch_args, overrides


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in {"true", "false", "1", "0", "yes", "no"}:
        raise ValueError(f"expected true or false, got {text!r}")
    return value in {"true", "1", "yes"}


def main(argv: list[str] | None = None) -> int:
    args, launch_args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    sim = parse_bool(launch_args.get("sim", "true"))
    overrides = launch_overrides(sim, launch_args.get("checkpoint"), launch_args.get("device"), extra)
    cfg = load_config(overrides)
    plan = stack_plan(cfg, sim, overrides)
    lcfg = cfg.ros.launch
    try:
        user_domain = user_domain_id()
    except ValueError as err:
        print(f"gato-ros launch: {err}", file=sys.stderr)
        return 2
    note = ""
    if args.isolated and user_domain is None:  # the nodes and this process's episode monitor alike
        os.environ["ROS_DOMAIN_ID"] = str(isolated_domain_id())
    elif args.isolated:
        note = " (yours: --isolated picks one only when ROS_DOMAIN_ID is unset)"
    domain = os.environ.get("ROS_DOMAIN_ID") or "0 (unset: the ROS default)"
    print(f"[launch] ROS_DOMAIN_ID={domain}{note}", flush=True)
    env = dict(os.environ)
    if args.episodes and not sim:
        print("gato-ros launch: --episodes needs sim:=true", file=sys.stderr)
        return 2

    print_lock = threading.Lock()

    def say(line: str) -> None:
        with print_lock:
            print(f"[launch] {line}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log = EpisodeLog()
    pace = PaceLog()
    video = None
    if args.video and sim:
        cameras = [str(c) for c in cfg.cameras.policy_cameras]
        video = EpisodeVideo(args.video, cameras, round(float(cfg.control.rate_hz)))
    monitor = None
    processes = NodeProcesses(env=env)
    code = 0
    try:
        if sim:
            namespace = ros_namespace(cfg)
            monitor = EpisodeMonitor(log, say, float(cfg.ros.spin_period_s), pace, video, namespace)
        say(f"ROS_DOMAIN_ID={env.get('ROS_DOMAIN_ID', '0')}; nodes: {', '.join(s.name for s in plan)}")
        for spec in plan:
            node = processes.start(spec)
            say(f"started {spec.name} (pid {node.pid}): {' '.join(spec.command()[1:])}")
        started = time.monotonic()
        while not stop.is_set():
            dead = processes.exited()
            if dead:
                for node in dead:
                    say(f"{node.spec.name} exited with code {node.returncode()}; stopping the stack")
                code = next((n.returncode() for n in dead if n.returncode()), 1)
                break
            elapsed = time.monotonic() - started
            if args.duration and elapsed >= args.duration:
                say(f"--duration {args.duration:g} s reached")
                break
            if args.episodes:
                if log.count() >= args.episodes:
                    say(f"{args.episodes} episodes finished")
                    break
                if not log.heard and elapsed > float(lcfg.startup_grace_s):
                    say(f"no episode status within {lcfg.startup_grace_s} s; stopping")
                    code = 1
                    break
            time.sleep(float(lcfg.poll_period_s))
        if stop.is_set():
            say("interrupted; stopping the stack")
    finally:
        exits = processes.stop(float(lcfg.sigint_wait_s), float(lcfg.sigterm_wait_s))
        unclean = {name: rc for name, rc in exits.items() if rc != 0}
        if unclean and code == 0:
            say(f"nodes did not exit cleanly: {unclean}")
            code = 1
        if monitor is not None:
            monitor.close()
            say(log.summary())
            for line in pace.summary(float(cfg.ros.twin.realtime_factor), float(cfg.control.rate_hz)):
                say(line)
            if video is not None:
                written = video.close()
                say(
                    f"video of the episodes: {written} ({video.frames} frames)"
                    if written
                    else "no video frame"
                )
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
