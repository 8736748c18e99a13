"""The recorder node: episodes ("takes") from the live topics, on the real cell or the twin.

Sampling. Every control period it assembles the observation with the policy's own `ObservationAssembler`
(the same topics, crops, proprioception and freshness checks; `SensorNode`), so training sees exactly what
the policy is given. A step's label is the action the arm obeyed next: the newest action, received after
the observation was taken, of the source the command node obeys (ACTION_SOURCE: the policy's ACTION or the
operator's TELEOP_ACTION). A period without a whole, fresh observation is not recorded and is counted
(with its reason), as are camera frames repeated from the previous step and the stamp skew between the
parts of each step. ``record.object_poses`` adds the objects' poses, ``record.object_shapes`` the poses and
the objects' shapes (for a state policy with shapes), the objects named by ``policy.object_ids`` or else by
each twin episode's status; a take records the ids it used in its metadata (``object_ids``).

Takes. RECORD_START, RECORD_END (success or failure: the operator's label), RECORD_DISCARD (nothing of the
take is written, its number is reused) and RECORD_STOP, or the keys n / s / f / d / q in the terminal
(``record.keyboard``). After each take a reset phase of ``record.reset_seconds`` follows (the twin resets
itself through RESET_EPISODE); with ``record.auto_start`` the next take then starts by itself.

Writing. `EpisodeWriter` (crash-safe: a killed recorder leaves every finished take readable and no
partial file the next run would trip on; numbering continues) encodes and writes each take on its own
thread, so the control-rate sampling never waits for the disk; the per-step sampling cost and the
writer's backlog are reported. A take's source is ``twin/teleop`` or ``real/teleop`` when the operator
drove throughout, ``*/intervention`` when the policy drove and the operator took over, ``*/policy`` when
the policy drove throughout; its metadata carries the task, the operator's label, the calibration's
identity, the steps per source and the operator's step ranges, the counts of dropped steps and
repeated frames, and the stamp skew.

    python -m gato_ros.ros.record_node [key=value ...] [--ros-args ...]     (or: gato-ros record)
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from gato_ros.calibration.calibration_file import cell_calibration_path
from gato_ros.control.kinematics import ArmKinematics
from gato_ros.control.teleop import TerminalKeys
from gato_ros.gato.data import STACKING_TASK, EpisodeWriter
from gato_ros.gato.images import policy_image_size
from gato_ros.ros import contract
from gato_ros.ros.mcap_log import McapTopicLog, recover
from gato_ros.ros.observation import Observation, ObservationAssembler, cell_object_ids
from gato_ros.ros.runtime import run_node
from gato_ros.ros.sensor_inputs import SensorNode
from gato_ros.twin.shape import shape_metadata

POLICY, TELEOP = "policy", "teleop"
KEY_HELP = "keys: n new take, s end as success, f end as failure, d discard the take, q quit"


def calibration_identity(cfg: DictConfig) -> str:
    """The calibration file's name and the first 16 hex digits of its SHA-256: which cell geometry a take
    was recorded with."""
    path = cell_calibration_path(cfg.cameras)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else "missing"
    return f"{Path(path).name}:{digest}"


def step_ranges(flags: list[bool]) -> list[list[int]]:
    """[[first, last], ...] of the runs of True in `flags`."""
    ranges: list[list[int]] = []
    for index, flag in enumerate(flags):
        if flag and ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        elif flag:
            ranges.append([index, index])
    return ranges


def summary(values: np.ndarray) -> dict[str, float] | None:
    return {"mean": float(values.mean()), "max": float(values.max())} if values.size else None


@dataclass
class Take:
    """What is known about the take being recorded (the steps themselves are in the writer)."""

    index: int
    twin_episode: dict[str, Any] | None
    operator: list[bool] = field(default_factory=list)  # per step: the operator's action was the label
    dropped: Counter[str] = field(default_factory=Counter)  # periods without a recorded step, by reason
    repeated_frames: Counter[str] = field(default_factory=Counter)  # part -> steps reusing its last reading
    skew_s: list[float] = field(default_factory=list)
    sample_s: list[float] = field(default_factory=list)  # wall cost of sampling + handing a step over
    repeated_labels: int = 0  # steps labelled with an action received before their observation
    last_stamps: dict[str, float] = field(default_factory=dict)
    live_twin_episode: int | None = None  # the twin episode seen running during the take

    @property
    def steps(self) -> int:
        return len(self.operator)


class RecordNode(SensorNode):
    SETTINGS = ("control", "record")

    def __init__(self, cfg: DictConfig, keys: TerminalKeys | None = None, **kwargs: Any) -> None:
        super().__init__("record_node", cfg, **kwargs)
        rec = cfg.record
        self.sim = bool(cfg.ros.use_sim_time)
        self.cell = "twin" if self.sim else "real"
        self.cameras = [str(c) for c in (rec.cameras or cfg.cameras.policy_cameras)]
        # the shapes follow from the poses and the objects' ids (policy.object_ids, else the twin's episode)
        self.object_shapes = bool(rec.object_shapes)
        self.object_poses = bool(rec.object_poses) or self.object_shapes
        self.joint_names = [str(n) for n in cfg.robot.joint_names]
        self.gripper_joint = str(cfg.robot.gripper.joint_name)
        self.log_period_s = float(rec.log_period_s)
        self.assembler = ObservationAssembler(
            cfg,
            self.cameras,
            ArmKinematics(cfg.robot),
            object_poses=self.object_poses,
            image_size=policy_image_size(cfg),
            object_shapes=self.object_shapes,
            object_ids=cell_object_ids(cfg),
            gripper_velocity=bool(rec.gripper_velocity),
        )
        self.rate_hz = float(cfg.control.rate_hz)
        self.writer = EpisodeWriter(
            str(rec.out_dir),
            self.rate_hz,
            source=f"{self.cell}/{TELEOP}",
            clock="ros_sim" if self.sim else "ros",
            image_codec=str(rec.image_codec),
        )
        self.task = str(rec.task) or STACKING_TASK
        self.calibration = calibration_identity(cfg)
        self.reset_seconds = float(rec.reset_seconds)
        self.max_steps = round(float(rec.max_seconds) * self.rate_hz)
        self.episodes_wanted = int(rec.episodes)
        self.auto_start = bool(rec.auto_start)
        self.end_on_twin_outcome = bool(rec.end_on_twin_outcome)
        self.keys = keys
        # the raw log beside each take: every topic of the contract (per-camera topics included)
        self.mcap = bool(rec.mcap)
        self.mcap_flush_s = float(rec.mcap_flush_s)
        per_camera = (contract.camera_image, contract.camera_info, contract.camera_depth,
                      contract.camera_time_reference)  # fmt: skip
        self.log_topics = [*contract.TOPICS, *(f(c) for c in self.cameras for f in per_camera)]
        self.mcap_log: McapTopicLog | None = None
        self._recover_interrupted_logs()

        self.source = POLICY  # what the command node obeys, per ACTION_SOURCE
        self.actions: dict[str, tuple[np.ndarray, float] | None] = {POLICY: None, TELEOP: None}
        self.pending: tuple[Observation, float] | None = None  # a step waiting for its label
        self.take: Take | None = None
        self.kept = 0
        self.reset_until: float | None = None  # wall time the reset phase ends
        self.twin_status: dict[str, Any] | None = None
        self.last_drop: str | None = None  # why the newest dropped period was not recorded

        self.subscribe_sensors(self.cameras, self.object_poses)
        self.subscription(contract.ACTION, lambda msg: self.on_action(POLICY, msg))
        self.subscription(contract.TELEOP_ACTION, lambda msg: self.on_action(TELEOP, msg))
        self.subscription(contract.ACTION_SOURCE, self.on_action_source)
        self.subscription(contract.EPISODE_STATUS, self.on_episode_status)
        self.service(contract.RECORD_START, self.on_start)
        self.service(contract.RECORD_END, self.on_end)
        self.service(contract.RECORD_DISCARD, self.on_discard)
        self.service(contract.RECORD_STOP, self.on_stop)
        self.reset_client = self.client(contract.RESET_EPISODE)
        self.timer = self.create_timer(1.0 / self.rate_hz, self.on_tick)
        self.get_logger().info(
            f"recording into {self.writer.directory} (next take {self.writer.next_index}), cameras "
            f"{self.cameras}{', object poses' if self.object_poses else ''}"
            f"{' and shapes' if self.object_shapes else ''}, {self.rate_hz:g} Hz"
        )
        if self.object_shapes and not self.sim and self.assembler.object_ids is None:
            self.get_logger().warning(
                "record.object_shapes on the real cell: name the loaded objects with policy.object_ids "
                "(red, green, blue, e.g. [r3,s0,b2]); until then no period is recorded"
            )
        if self.keys is not None:
            self.get_logger().info(KEY_HELP)
        if self.auto_start:
            self.start_take()

    # -- inputs --------------------------------------------------------------------------------------
    def on_action(self, source: str, msg: Float64MultiArray) -> None:
        action = np.asarray(msg.data, dtype=np.float32)
        if action.shape != (5,) or not np.all(np.isfinite(action)):
            self.get_logger().error(
                f"ignoring a malformed {source} action", throttle_duration_sec=self.log_period_s
            )
            return
        self.actions[source] = (action, time.monotonic())

    def on_action_source(self, msg: String) -> None:
        if msg.data in (POLICY, TELEOP):
            self.source = msg.data

    def on_episode_status(self, msg: String) -> None:
        try:
            self.twin_status = json.loads(msg.data)
        except ValueError:
            return
        error = self.assembler.follow_episode_status(self.twin_status)
        if error:
            self.get_logger().error(error, throttle_duration_sec=self.log_period_s)
        take, status = self.take, self.twin_status
        if take is None or not self.end_on_twin_outcome or not isinstance(status, dict):
            return
        # unattended collection on the twin: the take ends with the episode it recorded, labelled by the
        # twin's success check (a status still showing the previous, finished episode is not this one's)
        if not status.get("done"):
            take.live_twin_episode = status.get("episode")
        elif take.live_twin_episode is not None and status.get("episode") == take.live_twin_episode:
            self.end_take(success=bool(status.get("success")))

    # -- takes ---------------------------------------------------------------------------------------
    def _recover_interrupted_logs(self) -> None:
        """A raw log left unfinished by a killed recorder belongs to a take that was lost with it (its
        number is given to the next take): kept, completed, as ``episode_N.interrupted.mcap``."""
        for active in sorted(self.writer.directory.glob("*.mcap.active")):
            target = active.with_name(active.name.removesuffix(".mcap.active") + ".interrupted.mcap")
            kept = recover(active, target)
            self.get_logger().warning(
                f"{active.name}: left by an interrupted recording; {kept} messages kept in {target.name}"
            )

    def start_take(self) -> str:
        if self.take is not None:
            return f"take {self.take.index} is already being recorded"
        shapes = shape_metadata(self.assembler.shape_version) if self.object_shapes else {}
        index = self.writer.begin_episode(
            task=self.task,
            calibration=self.calibration,
            operator_label=None,
            twin_start=self.twin_status,
            **shapes,
        )
        self.take = Take(index, self.twin_status)
        if self.mcap:
            path = self.writer.directory / f"episode_{index:06d}.mcap"
            self.mcap_log = McapTopicLog(self, path, self.log_topics, self.mcap_flush_s)
        self.pending = None
        self.reset_until = None
        self.assembler.reset()
        self.get_logger().info(f"take {index}: recording")
        return f"recording take {index}"

    def end_take(self, success: bool) -> str:
        take = self.take
        if take is None:
            return "no take is being recorded"
        self._flush_pending()
        self.take = None
        raw_log = self._close_log(keep=True)
        teleop_steps = sum(take.operator)
        if take.steps and teleop_steps == take.steps:
            kind = TELEOP
        elif teleop_steps:
            kind = "intervention"
        else:
            kind = POLICY
        skew = np.asarray(take.skew_s) * 1e3
        sample = np.asarray(take.sample_s) * 1e3
        path = self.writer.end_episode(
            success=success,
            source=f"{self.cell}/{kind}",
            operator_label="success" if success else "failure",
            steps_by_source={POLICY: take.steps - teleop_steps, TELEOP: teleop_steps},
            operator_steps=step_ranges(take.operator),
            dropped_steps=dict(take.dropped),
            repeated_labels=take.repeated_labels,
            repeated_frames=dict(take.repeated_frames),
            stamp_skew_ms=summary(skew),
            sample_cost_ms=summary(sample),
            twin_end=self.twin_status,
            raw_log=raw_log,
            **({"object_ids": list(self.assembler.object_ids or [])} if self.object_shapes else {}),
        )
        self.begin_reset()
        if path is None:
            return f"take {take.index} had no steps: nothing written"
        self.kept += 1
        dropped = sum(take.dropped.values())
        self.get_logger().info(
            f"take {take.index}: {'success' if success else 'failure'}, {take.steps} steps ({kind}), "
            f"{dropped} periods dropped, sampling {float(sample.mean()) if sample.size else 0.0:.2f} ms/step,"
            f" writer backlog {self.writer.backlog} -> {path.name}"
        )
        if self.episodes_wanted and self.kept >= self.episodes_wanted:
            self.get_logger().info(f"{self.kept} takes recorded: stopping")
            self.request_exit(0)
        return f"take {take.index} kept as {'success' if success else 'failure'} ({take.steps} steps)"

    def discard_take(self) -> str:
        if self.take is None:
            return "no take is being recorded"
        index, self.take, self.pending = self.take.index, None, None
        self.writer.discard_episode()
        self._close_log(keep=False)
        self.get_logger().info(f"take {index}: discarded (nothing written; the number is reused)")
        self.begin_reset()
        return f"take {index} discarded"

    def _close_log(self, keep: bool) -> dict[str, Any] | None:
        """Finish (or delete) the take's raw log; its name and per-topic message and loss counts."""
        log, self.mcap_log = self.mcap_log, None
        if log is None:
            return None
        counts = log.close(keep=keep)
        return {"file": log.path.name, **counts} if keep else None

    def begin_reset(self) -> None:
        """The reset phase: the twin resets itself; the next take (auto_start) waits reset_seconds."""
        if self.sim and self.reset_client.service_is_ready():
            self.reset_client.call_async(contract.RESET_EPISODE.srv_type.Request())
        self.reset_until = time.monotonic() + self.reset_seconds

    def stop(self) -> str:
        if self.take is not None:
            self.discard_take()
        self.request_exit(0)
        return "stopping"

    # -- services ------------------------------------------------------------------------------------
    def on_start(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.message = self.start_take()
        response.success = self.take is not None
        return response

    def on_end(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        response.success = self.take is not None
        response.message = self.end_take(bool(request.data))
        return response

    def on_discard(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = self.take is not None
        response.message = self.discard_take()
        return response

    def on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = True, self.stop()
        return response

    # -- sampling ------------------------------------------------------------------------------------
    def on_tick(self) -> None:
        self._handle_keys()
        if self.take is None:
            if self.auto_start and self.reset_until is not None and time.monotonic() >= self.reset_until:
                self.start_take()
            return
        started = time.monotonic()
        self._flush_pending()
        if self.take is None:  # the pending step ended the take (its stamps went back: discarded)
            return
        observation = self.assembler.assemble(self.now_s(), all_new=False)
        if isinstance(observation, str):
            self.take.dropped[observation.split(":")[0]] += 1
            self.last_drop = observation
            self.get_logger().warning(f"not recorded: {observation}", throttle_duration_sec=self.log_period_s)
            return
        self.pending = (observation, started)
        self.take.sample_s.append(time.monotonic() - started)
        if self.max_steps and self.take.steps + 1 >= self.max_steps:
            self.end_take(success=False)

    def _flush_pending(self) -> None:
        """Record the pending observation with its label: the obeyed source's newest action, received
        after the observation was taken (else its newest one: the operator held still)."""
        if self.pending is None or self.take is None:
            return
        observation, taken = self.pending
        latest = self.actions[self.source]
        if latest is None:
            self.take.dropped["no action from the source obeyed"] += 1
            self.pending = None
            return
        action, received = latest
        take = self.take
        if received < taken:  # no newer action: the source repeats itself (an operator holding still)
            take.repeated_labels += 1
        for key, stamp in self.assembler.last_used.items():
            if take.last_stamps.get(key) == stamp:
                take.repeated_frames[key] += 1
        take.last_stamps = dict(self.assembler.last_used)
        self.pending = None
        try:
            self.writer.add_step(observation.values, action, timestamp=observation.newest_stamp_s)
        except ValueError as err:  # stamps went back (a restarted twin or driver): the take is unusable
            self.get_logger().error(f"take {take.index}: {err}; discarding it")
            self.discard_take()
            return
        take.skew_s.append(observation.newest_stamp_s - observation.oldest_stamp_s)
        take.operator.append(self.source == TELEOP)

    def _handle_keys(self) -> None:
        if self.keys is None:
            return
        for key in self.keys.read():
            if key == "n":
                self.start_take()
            elif key in "sf":
                self.end_take(success=key == "s")
            elif key == "d":
                self.discard_take()
            elif key == "q":
                self.stop()

    def close(self) -> None:
        """A take in progress is discarded (unlabelled); finished takes are written before exit."""
        try:
            if self.take is not None:
                self.discard_take()
            self.writer.close()
        finally:
            if self.keys is not None:
                self.keys.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(RecordNode, argv)


if __name__ == "__main__":
    sys.exit(main())
