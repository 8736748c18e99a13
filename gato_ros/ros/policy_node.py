"""The Gato policy as a ROS 2 node: camera images + joint states in, one 5-D ACTION per control period out.

Observation. `ObservationAssembler` (ROS-free) keeps the newest image of every camera the checkpoint's
tokenizer wants and the newest joint state, and assembles the observation dict of docs/ARCHITECTURE.md:
images centre-cropped and resized (`gato_ros.gato.images.fit_image`) to the image size the checkpoint was
trained at (its own ``cameras.width x height``, whatever the cameras deliver); joint angles;
the gripper driver angle in 0..255 units; the tool-point (pinch) and flange (tcp) poses computed from
the joint angles with `ArmKinematics`, exactly as the twin computes them; for a state-based checkpoint
(trained with ``tokenizer.observation.use_privileged``) the object poses of OBJECT_POSES as ``objects/pose``
(``policy.object_pose_source``: ``topic``, OBJECT_POSES, the twin's or a pose estimator's; or ``cameras``,
fitted in this node to the policy cameras' images by `gato_ros.perception`: the cell's calibrated cameras
and the objects' colours and meshes, what a real cell without a pose estimator runs), and if it reads them
the objects' shapes ``objects/shape``, computed from those poses and the meshes of the named objects
(``policy.object_ids``, which a real cell sets to the triplet it has loaded; empty: the ids of the twin's
current episode on EPISODE_STATUS). An observation is used only if its oldest part is at most
``policy.max_observation_age_s`` old on the node's clock (sim time under the twin), its newest part leads
that clock by at most one control period (the twin's publishing order; more means the clock went back, e.g.
a restarted twin, and the node also forgets what it acted on), its parts were stamped within
``policy.max_observation_skew_s`` of each other, and every part is newer than in the last observation acted
on (never two actions from one camera frame: cameras must run at least at the control rate). Otherwise the
node publishes nothing (the command node's watchdog then holds the arm) and says why, rate-limited.

Decision. Once per control period (a timer at ``control.rate_hz``; if the tick's observation is not
complete at the tick, as soon as it is; under sim time never before the clock reaches the observation's
stamp, see `wait_for_clock`) the node tokenizes the observation and runs the KV-cached
`ActionDecoder` of the checkpoint (``policy.checkpoint``, a `save_checkpoint` directory; the tokenizer
is built from the checkpoint's own config so training and deployment agree). It publishes ACTION,
ACTION_TOKENS and POLICY_LATENCY (monotonic seconds from the receipt of the observation's newest part to
the action's publication); an action whose observation aged past ``max_observation_age_s`` plus one
control period while it was decoded is dropped (logged), so a slow step holds the arm rather than act on
a world that has moved on. Episode boundaries (a new episode number on EPISODE_STATUS, or the
RESET_POLICY service) clear the decoder's cache. The node spins one executor thread (see `main`): sensor
messages that arrive during a step wait in their queues, and the next step uses the newest.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from std_msgs.msg import Float64, String
from std_srvs.srv import Trigger

from gato_ros.control.kinematics import ArmKinematics
from gato_ros.gato.images import policy_image_size
from gato_ros.ros import contract
from gato_ros.ros.messages import (
    float_array_msg,
    int_array_msg,
)
from gato_ros.ros.observation import (
    GRIPPER_KEY,
    JOINTS_KEY,
    OBJECTS_KEY,
    PINCH_KEY,
    PIXELS_SUFFIX,
    PROPRIO_KEYS,
    TCP_KEY,
    Observation,
    ObservationAssembler,
    cell_object_ids,
    placeholder_object_poses,
    placeholder_object_shapes,
)
from gato_ros.ros.runtime import run_node
from gato_ros.ros.sensor_inputs import SensorNode
from gato_ros.twin.observation_keys import GRIPPER_VELOCITY_KEY
from gato_ros.twin.shape import SHAPE_KEY, shape_version

__all__ = ["ObservationAssembler", "PolicyNode", "placeholder_object_poses", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PolicyNode(SensorNode):
    """Runs a Gato checkpoint at the control rate on the newest fresh observation."""

    SETTINGS = ("control", "policy", "cameras", "perception")

    def __init__(self, cfg: DictConfig, **kwargs: Any) -> None:
        super().__init__("policy", cfg, **kwargs)
        from gato_ros.gato.checkpoint import load_policy, model_dtype
        from gato_ros.gato.decoder import ActionDecoder
        from gato_ros.gato.tokenizer import ObservationTokenizer

        if not cfg.policy.checkpoint:
            raise ValueError("policy.checkpoint is not set: pass policy.checkpoint=<checkpoint directory>")
        self.device = resolve_device(str(cfg.policy.device))
        threads = cfg.policy.get("num_threads")
        if threads is not None and self.device.type == "cpu":
            torch.set_num_threads(int(threads))  # before the first op: intra-op pool size
        self.dtype = model_dtype(str(cfg.policy.get("dtype", "float32")))
        checkpoint = load_policy(str(cfg.policy.checkpoint), self.device, self.dtype)
        trained = checkpoint.cfg
        self.tokenizer = ObservationTokenizer(trained)
        self.decoder = ActionDecoder(checkpoint.model, self.tokenizer, cfg)
        self.trim_ahead = bool(cfg.policy.decoder.get("trim_ahead", True))
        keys = self.tokenizer.observation_keys
        self.cameras = [k.removesuffix(PIXELS_SUFFIX) for k in keys if k.endswith(PIXELS_SUFFIX)]
        # A state-based checkpoint: OBJECT_POSES is one more part (and the shapes follow from the poses).
        self.object_shapes = SHAPE_KEY in keys
        self.object_poses = OBJECTS_KEY in keys or self.object_shapes
        provided = (*PROPRIO_KEYS, GRIPPER_VELOCITY_KEY, OBJECTS_KEY, SHAPE_KEY)
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
            object_shapes=self.object_shapes,
            object_ids=cell_object_ids(cfg),
            shape_features_version=shape_version(trained),  # what the checkpoint was trained on
            gripper_velocity=GRIPPER_VELOCITY_KEY in keys,
            object_pose_source=str(cfg.policy.object_pose_source),
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
        # Under the twin's clock (sim time) a tick's observation arrives just before the clock reaches its
        # stamp. Acted on then, the action reaches the command node while its clock still reads the tick
        # before, so the watchdog sees it a period old, and once the node slips back to acting at the
        # tick, one period goes without action: the action turns stale (make demo under load: 26 holds
        # in 1,200 ticks). So under sim time the step waits for the clock to reach the observation.
        self.wait_for_clock = bool(cfg.ros.use_sim_time)
        self.rate_hz = float(cfg.control.rate_hz)
        self.report_period_s = float(cfg.policy.report_period_s)
        self.rate_tolerance = float(cfg.policy.rate_tolerance)
        self._report_start: tuple[float, float, int] | None = None
        self._latencies: list[float] = []

        sensors = ReentrantCallbackGroup()
        from_cameras = self.assembler.poses_from_cameras
        self.subscribe_sensors(
            self.assembler.sensor_cameras, self.object_poses and not from_cameras, callback_group=sensors
        )
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
            f"policy {checkpoint.path} (step {checkpoint.step}) on {self.device} in "
            f"{str(self.dtype).removeprefix('torch.')}, cameras {self.cameras}"
            f"{', object poses' if self.object_poses else ''}"
            f"{f' from cameras {self.assembler.pose_cameras}' if from_cameras else ''}, "
            f"{cfg.control.rate_hz} Hz"
        )

    def warm_up(self) -> None:
        """Decode a blank episode through its first context trim (`ActionDecoder.warmup`), so neither the
        first real step nor the first trim pays for allocations and kernel selection."""
        size = (self.assembler.height, self.assembler.width, 3)
        blank: dict[str, np.ndarray] = {f"{c}{PIXELS_SUFFIX}": np.zeros(size, np.uint8) for c in self.cameras}
        q = np.asarray(self.cfg.robot.nominal_posture, dtype=float)
        kinematics = self.assembler.kinematics
        blank[GRIPPER_KEY] = np.zeros(1, np.float32)
        if self.assembler.gripper_velocity:
            blank[GRIPPER_VELOCITY_KEY] = np.zeros(1, np.float32)
        blank[JOINTS_KEY] = q.astype(np.float32)
        blank[PINCH_KEY] = kinematics.pinch_pose(q).astype(np.float32)
        blank[TCP_KEY] = kinematics.tcp_pose(q).astype(np.float32)
        if self.object_poses:
            blank[OBJECTS_KEY] = placeholder_object_poses(self.cfg)
        if self.object_shapes:  # only the layout matters for the warm-up
            blank[SHAPE_KEY] = placeholder_object_shapes(self.cfg)
        seconds = self.decoder.warmup(blank)
        self.get_logger().info(f"decoder warmed up in {seconds:.2f} s")

    # -- inputs --------------------------------------------------------------------------------------
    def on_sensor_input(self) -> None:
        self.try_step()

    def on_episode_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
            episode = int(status["episode"])
        except (ValueError, KeyError, TypeError):
            return
        error = self.assembler.follow_episode_status(status)
        if error:
            self.get_logger().error(error, throttle_duration_sec=self.log_period_s)
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
                observation = self.assembler.assemble(
                    self.now_s(), all_new=not self._overdue, wait_for_clock=self.wait_for_clock
                )
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
    # One executor thread: a MultiThreadedExecutor spins on its futures while a step runs (py-spy: more
    # samples in rclpy's executor than in the model) and takes the GIL from the step. With one thread the
    # decode runs alone and sensor messages wait in their queues until it ends (the step uses the newest).
    # benchmarks/control_loop.py --model large policy.num_threads=2 (fp32, idle 2-core machine, one run
    # each): 4.5 actions/s with a 2-thread executor, 9.1 with one.
    return run_node(PolicyNode, argv, priority="policy")


if __name__ == "__main__":
    sys.exit(main())
