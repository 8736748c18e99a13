"""The Gato policy as a ROS 2 node: camera images + joint states in, one 5-D ACTION per control period out.

Observation. `ObservationAssembler` (ROS-free) keeps the newest image of every camera the checkpoint's
tokenizer wants and the newest joint state, and assembles the observation dict of docs/ARCHITECTURE.md:
images centre-cropped and resized (`gato_ros.gato.images.fit_image`) to the image size the checkpoint was
trained at (its own ``cameras.width x height``, whatever the cameras deliver); joint angles;
the gripper driver angle in 0..255 units; the tool-point (pinch) and flange (tcp) poses computed from
the joint angles with `ArmKinematics`, exactly as the twin computes them; for a state-based checkpoint
(trained with ``tokenizer.observation.use_privileged``) the object poses of OBJECT_POSES as
``objects/pose`` (the twin's, or a pose estimator's on the real cell). An observation is used only if
its oldest part is at most ``policy.max_observation_age_s`` old on the node's clock (sim time under the
twin), its newest part leads that clock by at most one control period (the twin's publishing order; more
means the clock went back, e.g. a restarted twin, and the node also forgets what it acted on), its parts
were stamped within ``policy.max_observation_skew_s`` of each other, and every part is newer than in
the last observation acted on (never two actions from one camera frame: cameras must run at least at
the control rate). Otherwise the node publishes nothing (the command node's watchdog then
holds the arm) and says why, rate-limited.

Decision. Once per control period (a timer at ``control.rate_hz``; if the tick's observation is not
complete at the tick, as soon as it is) the node tokenizes the observation and runs the KV-cached
`ActionDecoder` of the checkpoint (``policy.checkpoint``, a `save_checkpoint` directory; the tokenizer
is built from the checkpoint's own config so training and deployment agree). It publishes ACTION,
ACTION_TOKENS and POLICY_LATENCY (monotonic seconds from the receipt of the observation's newest part to
the action's publication); an action whose observation aged past ``max_observation_age_s`` plus one
control period while it was decoded is dropped (logged), so a slow step holds the arm rather than act on
a world that has moved on. Episode boundaries (a new episode number on EPISODE_STATUS, or the
RESET_POLICY service) clear the decoder's cache. Subscriptions run in their own callback group on a
second executor thread, so new sensor data keeps arriving while the model runs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from geometry_msgs.msg import PoseArray
from omegaconf import DictConfig
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from gato_ros.control.kinematics import OBJECT_REFERENCE_WXYZ, ArmKinematics, canonical_quat
from gato_ros.gato.images import fit_image, policy_image_size
from gato_ros.ros import contract
from gato_ros.ros.messages import (
    POSE_SIZE,
    float_array_msg,
    image_array,
    int_array_msg,
    joint_positions,
    pose_array,
)
from gato_ros.ros.runtime import GatoNode, run_node

PIXELS_SUFFIX = "/pixels"
GRIPPER_KEY = "gripper/joints/angle"
JOINTS_KEY = "sawyer/joints/angle"
PINCH_KEY = "sawyer/pinch/pose"
TCP_KEY = "sawyer/tcp/pose"
PROPRIO_KEYS = (GRIPPER_KEY, JOINTS_KEY, PINCH_KEY, TCP_KEY)
OBJECTS_KEY = "objects/pose"  # privileged: red, green, blue poses (x, y, z, qw, qx, qy, qz each)
OBJECTS_PART = "object poses"  # what the logs call that part
# Float slack on stamp comparisons (s): stamps are integer nanoseconds, far below any real lead.
STAMP_TOLERANCE_S = 1e-6


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def placeholder_object_poses(cfg: DictConfig) -> np.ndarray:
    """A plausible ``objects/pose`` for warming up the decoder: the objects side by side across the
    twin's drop area (``twin.reset.object_low/high``) at the drop height, upright."""
    reset = cfg.twin.reset
    count = len(cfg.twin.object_colors)
    low, high = np.asarray(reset.object_low, dtype=float), np.asarray(reset.object_high, dtype=float)
    poses = np.zeros((count, POSE_SIZE))
    poses[:, 0] = 0.5 * (low[0] + high[0])
    poses[:, 1] = np.linspace(low[1], high[1], count)
    poses[:, 2] = float(reset.drop_height)
    poses[:, 3] = 1.0  # identity quaternion (w first)
    return poses.reshape(-1).astype(np.float32)


@dataclass(frozen=True)
class Part:
    """One sensor reading: its value, header stamp (node clock, s) and monotonic receipt time (s)."""

    value: Any
    stamp_s: float
    received_s: float


@dataclass(frozen=True)
class Observation:
    values: dict[str, np.ndarray]
    oldest_stamp_s: float
    newest_stamp_s: float
    received_s: float  # monotonic receipt time of the newest part


class ObservationAssembler:
    """Newest reading per sensor -> the policy's observation dict, or the reason there is none (ROS-free)."""

    def __init__(
        self,
        cfg: DictConfig,
        cameras: Sequence[str],
        kinematics: ArmKinematics,
        object_poses: bool = False,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        """`object_poses`: the observation also needs ``objects/pose`` (a state-based checkpoint), one
        pose per ``twin.object_colors`` entry, from `add_object_poses`. `image_size`: (width, height) the
        policy was trained at (default ``cfg.cameras``)."""
        self.cameras = list(cameras)
        self.object_poses = object_poses
        self.num_objects = len(cfg.twin.object_colors)
        self.width, self.height = image_size if image_size is not None else policy_image_size(cfg)
        self.gripper_range = np.asarray(cfg.robot.gripper.driver_range, dtype=float)
        self.gripper_units = float(cfg.robot.gripper.command_range[1])
        self.max_age_s = float(cfg.policy.max_observation_age_s)
        self.max_skew_s = float(cfg.policy.max_observation_skew_s)
        # The twin publishes a tick's observation, stamped with the new time, just before that time on
        # its clock: a part may lead the node's clock by one control period, never by more.
        self.period_s = 1.0 / float(cfg.control.rate_hz)
        self.max_lead_s = self.period_s + STAMP_TOLERANCE_S
        self.kinematics = kinematics
        self.images: dict[str, Part] = {}
        self.joints: Part | None = None
        self.poses: Part | None = None
        self.last_used: dict[str, float] = {}  # stamp of each part in the last observation acted on
        self.last_now_s: float | None = None  # the clock at the last assembly, to notice it going back
        self._lock = threading.Lock()

    def add_image(self, camera: str, pixels: np.ndarray, stamp_s: float, received_s: float) -> None:
        with self._lock:
            self.images[camera] = Part(pixels, stamp_s, received_s)

    def add_joints(self, arm: np.ndarray, gripper_rad: float, stamp_s: float, received_s: float) -> None:
        with self._lock:
            self.joints = Part((arm, gripper_rad), stamp_s, received_s)

    def add_object_poses(self, poses: np.ndarray, stamp_s: float, received_s: float) -> None:
        """(num_objects, 7) poses in red, green, blue order; a ValueError (and nothing kept) for a wrong
        count or non-finite values, so a malformed message never replaces a good one."""
        array = np.asarray(poses, dtype=np.float64)
        if array.shape not in {(self.num_objects, POSE_SIZE), (self.num_objects * POSE_SIZE,)}:
            raise ValueError(f"expected {self.num_objects} poses of {POSE_SIZE} values, got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError("non-finite object pose")
        array = array.reshape(self.num_objects, POSE_SIZE).copy()
        # One sign per orientation whatever the pose source sends (a zero quaternion is a ValueError).
        array[:, 3:] = canonical_quat(array[:, 3:], OBJECT_REFERENCE_WXYZ)
        with self._lock:
            self.poses = Part(array.reshape(-1).astype(np.float32), stamp_s, received_s)

    def reset(self) -> None:
        """Forget what was acted on (a new episode may restart the sensors' stamps)."""
        with self._lock:
            self.last_used = {}

    def expired(self, observation: Observation, now_s: float) -> str | None:
        """Why an action decoded from `observation` must not go out at `now_s` (None if it may): the
        observation was fresh when assembled, but the decoding may take at most one control period more.
        A slow step would otherwise act on the world as it was, with the command node none the wiser."""
        age = now_s - observation.oldest_stamp_s
        if age > self.max_age_s + self.period_s + STAMP_TOLERANCE_S:
            return (
                f"action dropped: its observation is {age:.3f} s old by the time it was decoded "
                f"(max {self.max_age_s} s + one control period)"
            )
        return None

    def assemble(self, now_s: float, all_new: bool = True) -> Observation | str:
        """The observation to act on at `now_s` (node clock), or why there is none. `all_new`: every part
        must be newer than in the last observation acted on; else one new part is enough (a dropped
        camera frame then costs one period, not the whole loop)."""
        with self._lock:
            if self.last_now_s is not None and now_s < self.last_now_s:
                # The clock went back (the twin restarted under sim time): what was acted on before is
                # from another timeline; parts still stamped ahead of the clock are refused below.
                self.last_used = {}
            self.last_now_s = now_s
            missing = [c for c in self.cameras if c not in self.images]
            if self.joints is None:
                missing.append("joint states")
            if self.object_poses and self.poses is None:
                missing.append(OBJECTS_PART)
            if missing:
                return f"no data yet from {', '.join(missing)}"
            parts = {**{f"{c}{PIXELS_SUFFIX}": self.images[c] for c in self.cameras}, "joints": self.joints}
            if self.poses is not None and self.object_poses:
                parts[OBJECTS_KEY] = self.poses
            joints = self.joints
        stamps = [p.stamp_s for p in parts.values()]
        oldest, newest = min(stamps), max(stamps)
        if newest - now_s > self.max_lead_s:
            ahead = max(parts, key=lambda k: parts[k].stamp_s)
            return (
                f"observation from the future: {ahead} is stamped {newest - now_s:.3f} s ahead of the clock "
                f"(max {self.max_lead_s:.3f} s; did the clock go back?)"
            )
        if now_s - oldest > self.max_age_s:
            stale = min(parts, key=lambda k: parts[k].stamp_s)
            return f"stale observation: {stale} is {now_s - oldest:.3f} s old (max {self.max_age_s} s)"
        if newest - oldest > self.max_skew_s:
            skew = newest - oldest
            return f"unsynchronized observation: parts stamped {skew:.3f} s apart (max {self.max_skew_s} s)"
        repeated = [k for k, p in parts.items() if p.stamp_s <= self.last_used.get(k, -np.inf)]
        if repeated and (all_new or len(repeated) == len(parts)):
            return f"no new observation since the last action ({', '.join(repeated)})"
        images = {k: p for k, p in parts.items() if k.endswith(PIXELS_SUFFIX)}
        values = {k: fit_image(p.value, self.width, self.height) for k, p in images.items()}
        if OBJECTS_KEY in parts:
            values[OBJECTS_KEY] = parts[OBJECTS_KEY].value
        arm, gripper_rad = joints.value
        low, high = self.gripper_range
        gripper = np.clip((gripper_rad - low) / (high - low), 0.0, 1.0) * self.gripper_units
        values[GRIPPER_KEY] = np.array([gripper], dtype=np.float32)
        values[JOINTS_KEY] = np.asarray(arm, dtype=np.float32)
        values[PINCH_KEY] = self.kinematics.pinch_pose(arm).astype(np.float32)
        values[TCP_KEY] = self.kinematics.tcp_pose(arm).astype(np.float32)
        with self._lock:
            self.last_used = {k: p.stamp_s for k, p in parts.items()}
        received = max(p.received_s for p in parts.values())
        return Observation(dict(sorted(values.items())), oldest, newest, received)


class PolicyNode(GatoNode):
    """Runs a Gato checkpoint at the control rate on the newest fresh observation."""

    SETTINGS = ("control", "policy", "cameras")

    def __init__(self, cfg: DictConfig, **kwargs: Any) -> None:
        super().__init__("policy", cfg, **kwargs)
        from gato_ros.gato.checkpoint import load_policy
        from gato_ros.gato.decoder import ActionDecoder
        from gato_ros.gato.tokenizer import ObservationTokenizer

        if not cfg.policy.checkpoint:
            raise ValueError("policy.checkpoint is not set: pass policy.checkpoint=<checkpoint directory>")
        self.device = resolve_device(str(cfg.policy.device))
        checkpoint = load_policy(str(cfg.policy.checkpoint), self.device)
        trained = checkpoint.cfg
        self.tokenizer = ObservationTokenizer(trained)
        self.decoder = ActionDecoder(checkpoint.model, self.tokenizer, cfg)
        self.trim_ahead = bool(cfg.policy.decoder.get("trim_ahead", True))
        keys = self.tokenizer.observation_keys
        self.cameras = [k.removesuffix(PIXELS_SUFFIX) for k in keys if k.endswith(PIXELS_SUFFIX)]
        self.object_poses = OBJECTS_KEY in keys  # a state-based checkpoint: OBJECT_POSES is one more part
        provided = (*PROPRIO_KEYS, OBJECTS_KEY)
        unavailable = [k for k in keys if not k.endswith(PIXELS_SUFFIX) and k not in provided]
        if unavailable:
            raise ValueError(f"the checkpoint needs observation keys no ROS topic provides: {unavailable}")
        if float(trained.control.rate_hz) != float(cfg.control.rate_hz):
            self.get_logger().warning(
                f"checkpoint trained at {trained.control.rate_hz} Hz, running at {cfg.control.rate_hz} Hz"
            )
        self.joint_names = [str(n) for n in cfg.robot.joint_names]
        self.gripper_joint = str(cfg.robot.gripper.joint_name)
        self.assembler = ObservationAssembler(
            cfg,
            self.cameras,
            ArmKinematics(cfg.robot),
            object_poses=self.object_poses,
            image_size=policy_image_size(trained),
        )
        self.log_period_s = float(cfg.policy.stale_log_period_s)
        self.episode: int | None = None
        self.steps = 0
        self.skipped_periods = 0
        self._decoder_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._step_due = False  # the timer ticked and no action went out for that period yet
        self._overdue = False  # ... and the one before went without action too
        self._last_reason = "no observation yet"
        self.rate_hz = float(cfg.control.rate_hz)
        self.report_period_s = float(cfg.policy.report_period_s)
        self.rate_tolerance = float(cfg.policy.rate_tolerance)
        self._report_start: tuple[float, float, int] | None = None
        self._latencies: list[float] = []

        sensors = ReentrantCallbackGroup()
        for camera in self.cameras:
            self.subscription(
                contract.camera_image(camera),
                lambda msg, c=camera: self.on_image(c, msg),
                callback_group=sensors,
            )
        self.subscription(contract.JOINT_STATES, self.on_joint_states, callback_group=sensors)
        if self.object_poses:
            self.subscription(contract.OBJECT_POSES, self.on_object_poses, callback_group=sensors)
        self.subscription(contract.EPISODE_STATUS, self.on_episode_status, callback_group=sensors)
        self.service(contract.RESET_POLICY, self.on_reset, callback_group=sensors)
        self.action_pub = self.publisher(contract.ACTION)
        self.tokens_pub = self.publisher(contract.ACTION_TOKENS)
        self.latency_pub = self.publisher(contract.POLICY_LATENCY)
        self.warm_up()
        self.timer = self.create_timer(
            1.0 / float(cfg.control.rate_hz), self.on_timer, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.get_logger().info(
            f"policy {checkpoint.path} (step {checkpoint.step}) on {self.device}, cameras {self.cameras}"
            f"{', object poses' if self.object_poses else ''}, {cfg.control.rate_hz} Hz"
        )

    def warm_up(self) -> None:
        """Decode a blank episode through its first context trim (`ActionDecoder.warmup`), so neither the
        first real step nor the first trim pays for allocations and kernel selection."""
        size = (self.assembler.height, self.assembler.width, 3)
        blank: dict[str, np.ndarray] = {f"{c}{PIXELS_SUFFIX}": np.zeros(size, np.uint8) for c in self.cameras}
        q = np.asarray(self.cfg.robot.nominal_posture, dtype=float)
        kinematics = self.assembler.kinematics
        blank[GRIPPER_KEY] = np.zeros(1, np.float32)
        blank[JOINTS_KEY] = q.astype(np.float32)
        blank[PINCH_KEY] = kinematics.pinch_pose(q).astype(np.float32)
        blank[TCP_KEY] = kinematics.tcp_pose(q).astype(np.float32)
        if self.object_poses:
            blank[OBJECTS_KEY] = placeholder_object_poses(self.cfg)
        seconds = self.decoder.warmup(blank)
        self.get_logger().info(f"decoder warmed up in {seconds:.2f} s")

    # -- inputs --------------------------------------------------------------------------------------
    def on_image(self, camera: str, msg: Image) -> None:
        received = time.monotonic()
        try:
            pixels = image_array(msg, "rgb8")
        except ValueError as err:
            self.get_logger().error(f"{camera}: {err}", throttle_duration_sec=self.log_period_s)
            return
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            self.get_logger().error(f"{camera}: not a colour image", throttle_duration_sec=self.log_period_s)
            return
        self.assembler.add_image(camera, pixels, contract.stamp_to_seconds(msg.header.stamp), received)
        self.try_step()

    def on_joint_states(self, msg: JointState) -> None:
        received = time.monotonic()
        arm = joint_positions(msg, self.joint_names)
        gripper = joint_positions(msg, [self.gripper_joint])
        if arm is None or gripper is None or not np.all(np.isfinite(arm)) or not np.isfinite(gripper[0]):
            self.get_logger().error(
                "joint state without finite positions for every arm joint and the gripper",
                throttle_duration_sec=self.log_period_s,
            )
            return
        self.assembler.add_joints(
            arm, float(gripper[0]), contract.stamp_to_seconds(msg.header.stamp), received
        )
        self.try_step()

    def on_object_poses(self, msg: PoseArray) -> None:
        received = time.monotonic()
        if msg.header.frame_id != contract.WORLD_FRAME:
            self.get_logger().error(
                f"ignoring object poses in frame {msg.header.frame_id!r} (expected {contract.WORLD_FRAME!r})",
                throttle_duration_sec=self.log_period_s,
            )
            return
        try:
            self.assembler.add_object_poses(
                pose_array(msg), contract.stamp_to_seconds(msg.header.stamp), received
            )
        except ValueError as err:
            self.get_logger().error(f"ignoring object poses: {err}", throttle_duration_sec=self.log_period_s)
            return
        self.try_step()

    def on_episode_status(self, msg: String) -> None:
        try:
            episode = int(json.loads(msg.data)["episode"])
        except (ValueError, KeyError, TypeError):
            return
        if episode != self.episode:
            if self.episode is not None:
                self.reset_episode(f"episode {episode}")
            self.episode = episode

    def on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.reset_episode("reset service")
        response.success = True
        response.message = "decoder cache cleared"
        return response

    def reset_episode(self, why: str) -> None:
        with self._decoder_lock:
            self.decoder.reset()
            self.assembler.reset()
        self.get_logger().info(f"new episode ({why}): decoder cache cleared")

    # -- the control step ----------------------------------------------------------------------------
    def on_timer(self) -> None:
        self._overdue = self._step_due
        if self._overdue:  # a whole period passed without a usable observation
            self.skipped_periods += 1
            self.get_logger().warning(
                f"no action last period: {self._last_reason}", throttle_duration_sec=self.log_period_s
            )
        self._step_due = True
        self.try_step()

    def try_step(self) -> None:
        """Act once per control period: at the timer tick, or, if the observation of that tick was not
        complete yet (a camera frame landing just after the tick), as soon as it completes. After a
        period without action, a partly new observation is enough. Loops because the timer may mark the
        next period due while this thread is still acting (its own attempt then finds the lock taken)."""
        while self._step_due and self._step_lock.acquire(blocking=False):
            try:
                observation = self.assembler.assemble(self.now_s(), all_new=not self._overdue)
                if isinstance(observation, str):
                    self._last_reason = observation
                    return
                self._step_due = self._overdue = False
                self.act(observation)
            finally:
                self._step_lock.release()

    def act(self, observation: Observation) -> None:
        try:
            with self._decoder_lock:
                result = self.decoder.step(observation.values)
        except Exception as err:  # never take the node down: no action -> the command node holds
            self.get_logger().error(
                f"policy step failed, no action (decoder reset): {err!r}",
                throttle_duration_sec=self.log_period_s,
            )
            with self._decoder_lock:
                self.decoder.reset()
            return
        expired = self.assembler.expired(observation, self.now_s())
        if expired is not None:  # no action -> the command node's watchdog holds the arm
            self._last_reason = expired
            self.get_logger().warning(expired, throttle_duration_sec=self.log_period_s)
            return
        self.action_pub.publish(float_array_msg(result.action))
        self.tokens_pub.publish(int_array_msg(result.token_ids))
        latency = time.monotonic() - observation.received_s
        self.latency_pub.publish(Float64(data=latency))
        self.steps += 1
        self.report_pace(latency)
        if self.trim_ahead:  # the action is out: the next step's context trim happens now, off its path
            try:
                with self._decoder_lock:
                    self.decoder.prepare_next()
            except Exception as err:
                self.get_logger().error(
                    f"context trim failed (decoder reset): {err!r}", throttle_duration_sec=self.log_period_s
                )
                with self._decoder_lock:
                    self.decoder.reset()

    def report_pace(self, latency_s: float) -> None:
        """Every `policy.report_period_s`: the achieved action rate (per second of the node's clock, sim
        time under the twin) and the latency percentiles; a warning when below the control rate."""
        self._latencies.append(latency_s)
        now_wall, now_clock = time.monotonic(), self.now_s()
        if self._report_start is None:
            self._report_start = (now_wall, now_clock, self.steps)
            self._latencies.clear()
            return
        start_wall, start_clock, start_steps = self._report_start
        if now_wall - start_wall < self.report_period_s or now_clock <= start_clock:
            return
        rate = (self.steps - start_steps) / (now_clock - start_clock)
        p50, p99 = np.percentile(np.asarray(self._latencies) * 1e3, [50, 99])
        message = (
            f"{rate:.1f} actions/s (target {self.rate_hz:g} Hz), observation->action latency "
            f"p50 {p50:.1f} ms p99 {p99:.1f} ms over {len(self._latencies)} steps"
        )
        if rate < self.rate_tolerance * self.rate_hz:
            self.get_logger().warning(f"policy below its control rate: {message}")
        else:
            self.get_logger().info(message)
        self._report_start = (now_wall, now_clock, self.steps)
        self._latencies.clear()


def main(argv: list[str] | None = None) -> int:
    return run_node(PolicyNode, argv, num_threads=2)


if __name__ == "__main__":
    sys.exit(main())
