"""What the policy sees, assembled from the newest reading of each sensor (ROS-free; ROS message parsing
stays in the nodes). The policy node acts on it and the recorder records it, so training data holds
exactly what the policy is given at run time. See `ObservationAssembler` and the policy node's docstring.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from gato_ros.control.kinematics import OBJECT_REFERENCE_WXYZ, ArmKinematics, canonical_quat
from gato_ros.gato.images import fit_image, policy_image_size
from gato_ros.perception.object_poses import ObjectPoseEstimator
from gato_ros.ros.messages import POSE_SIZE
from gato_ros.twin.observation_keys import ARM_ANGLES_KEY, GRIPPER_ANGLE_KEY, GRIPPER_VELOCITY_KEY
from gato_ros.twin.shape import (
    FEATURES_PER_OBJECT,
    SHAPE_KEY,
    ObjectGeometry,
    object_geometry,
    objects_shape,
    shape_version,
)

PIXELS_SUFFIX = "/pixels"
GRIPPER_KEY = GRIPPER_ANGLE_KEY
JOINTS_KEY = ARM_ANGLES_KEY
PINCH_KEY = "sawyer/pinch/pose"
TCP_KEY = "sawyer/tcp/pose"
PROPRIO_KEYS = (GRIPPER_KEY, JOINTS_KEY, PINCH_KEY, TCP_KEY)
OBJECTS_KEY = "objects/pose"  # privileged: red, green, blue poses (x, y, z, qw, qx, qy, qz each)
OBJECTS_PART = "object poses"  # what the logs call that part
GRIPPER_VELOCITY_PART = "a finite velocity of the gripper joint"  # what the logs call it
OBJECT_IDS_PART = "object ids"  # which meshes the shapes come from (policy.object_ids or the twin's episode)
OBJECT_POSE_SOURCES = ("topic", "cameras")  # policy.object_pose_source
NOT_SEEN = "object poses from the cameras: not every object seen yet"
WAITING_FOR_CLOCK = "observation ahead of the clock, acted on once the clock reaches it"
# Float slack on stamp comparisons (s): stamps are integer nanoseconds, far below any real lead.
STAMP_TOLERANCE_S = 1e-6


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


def cell_object_ids(cfg: DictConfig) -> list[str]:
    """The objects a real cell has loaded (``policy.object_ids``, red, green, blue); empty on the twin, which
    names them with each episode."""
    return [str(i) for i in cfg.policy.object_ids or []]


def placeholder_object_shapes(cfg: DictConfig) -> np.ndarray:
    """An ``objects/shape`` of the right size (zeros) for warming up the decoder: only its layout matters."""
    return np.zeros(len(cfg.twin.object_colors) * FEATURES_PER_OBJECT, dtype=np.float32)


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
        object_shapes: bool = False,
        object_ids: Sequence[str] = (),
        shape_features_version: int | None = None,
        gripper_velocity: bool = False,
        object_pose_source: str = "topic",
    ) -> None:
        """`object_poses`: the observation also needs ``objects/pose`` (a state-based checkpoint), one
        pose per ``twin.object_colors`` entry, from `add_object_poses`. `image_size`: (width, height) the
        policy was trained at (default ``cfg.cameras``). `object_shapes`: also ``objects/shape``, computed
        from those poses and the meshes of the objects named by `object_ids` (a real cell names the triplet it
        has loaded: fixed) or else by each twin episode (`follow_episode_status`); implies `object_poses`.
        `shape_features_version`: the features' version the policy was trained on (default ``cfg``'s).
        `gripper_velocity`: the observation has ``gripper/joints/velocity`` (joint states without a finite
        gripper velocity then give none); without it, never (the keys of an episode must not change).
        `object_pose_source`: where ``objects/pose`` comes from, ``topic`` (`add_object_poses`: the twin's, or
        a pose estimator's) or ``cameras``: fitted here to the newest images of ``cameras.policy_cameras``
        (`gato_ros.perception`), which the observation then waits for too, with the objects' meshes (named
        as for the shapes)."""
        if object_pose_source not in OBJECT_POSE_SOURCES:
            raise ValueError(
                f"object_pose_source must be one of {OBJECT_POSE_SOURCES}, got {object_pose_source!r}"
            )
        self.cfg = cfg
        self.cameras = list(cameras)  # the policy's images
        self.object_shapes = object_shapes
        self.shape_version = shape_version(cfg) if shape_features_version is None else shape_features_version
        self.object_poses = object_poses or object_shapes
        self.poses_from_cameras = self.object_poses and object_pose_source == "cameras"
        self.pose_cameras = [str(c) for c in cfg.cameras.policy_cameras] if self.poses_from_cameras else []
        # every camera an observation needs: the policy's images and the pose estimator's
        self.sensor_cameras = list(dict.fromkeys([*self.cameras, *self.pose_cameras]))
        self.needs_object_ids = object_shapes or self.poses_from_cameras
        self._estimator: ObjectPoseEstimator | None = None
        self._estimator_key: tuple[Any, ...] | None = None
        self._estimator_reset = False
        self.gripper_velocity = gripper_velocity
        self.geometries: tuple[ObjectGeometry, ...] | None = None
        self.object_ids: tuple[str, ...] | None = None
        self.num_objects = len(cfg.twin.object_colors)
        self.fixed_object_ids = bool(object_ids)
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
        if self.needs_object_ids and object_ids:
            self.set_object_ids(object_ids)

    def add_image(self, camera: str, pixels: np.ndarray, stamp_s: float, received_s: float) -> None:
        with self._lock:
            self.images[camera] = Part(pixels, stamp_s, received_s)

    def add_joints(
        self,
        arm: np.ndarray,
        gripper_rad: float,
        stamp_s: float,
        received_s: float,
        gripper_rad_s: float | None = None,
    ) -> None:
        """Arm joint angles (rad), the gripper driver's angle (rad) and, where the joint state has it, its
        velocity (rad/s; None: not reported, or not finite)."""
        velocity = None if gripper_rad_s is None or not np.isfinite(gripper_rad_s) else float(gripper_rad_s)
        with self._lock:
            self.joints = Part((arm, gripper_rad, velocity), stamp_s, received_s)

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

    def set_object_ids(self, object_ids: Sequence[str]) -> None:
        """Name the objects (red, green, blue RGB-object ids): their meshes give ``objects/shape``. A
        KeyError (and the old ids kept) for an unknown id or a wrong count."""
        ids = tuple(str(i) for i in object_ids)
        if len(ids) != self.num_objects:
            raise KeyError(f"expected {self.num_objects} object ids, got {list(ids)}")
        if ids == self.object_ids:
            return
        geometries = tuple(object_geometry(i) for i in ids)
        with self._lock:
            self.object_ids, self.geometries = ids, geometries

    def follow_episode_status(self, status: Any) -> str | None:
        """Take the object ids of a twin episode's status (its ``objects``) for the shapes, unless the
        cell named its objects; an error line (and the old ids kept) when it names unknown ones."""
        if not self.needs_object_ids or self.fixed_object_ids or not isinstance(status, dict):
            return None
        if not status.get("objects"):
            return None
        try:
            self.set_object_ids(status["objects"])
        except (KeyError, TypeError) as err:
            return f"episode status names unknown objects, no shapes: {err}"
        return None

    def reset(self) -> None:
        """Forget what was acted on (a new episode may restart the sensors' stamps) and where the objects
        were (a new episode places them anew)."""
        with self._lock:
            self.last_used = {}
            self._estimator_reset = True

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

    def assemble(self, now_s: float, all_new: bool = True, wait_for_clock: bool = False) -> Observation | str:
        """The observation to act on at `now_s` (node clock), or why there is none. `all_new`: every part
        must be newer than in the last observation acted on; else one new part is enough (a dropped
        camera frame then costs one period, not the whole loop). `wait_for_clock`: a part stamped ahead of
        `now_s` is not used until the clock reaches it (the twin's discrete clock: see `PolicyNode`)."""
        with self._lock:
            if self.last_now_s is not None and now_s < self.last_now_s:
                # The clock went back (the twin restarted under sim time): what was acted on before is
                # from another timeline; parts still stamped ahead of the clock are refused below.
                self.last_used = {}
            self.last_now_s = now_s
            missing = [c for c in self.sensor_cameras if c not in self.images]
            if self.joints is None:
                missing.append("joint states")
            if self.object_poses and not self.poses_from_cameras and self.poses is None:
                missing.append(OBJECTS_PART)
            if self.needs_object_ids and self.geometries is None:
                missing.append(OBJECT_IDS_PART)
            if missing:
                return f"no data yet from {', '.join(missing)}"
            if self.gripper_velocity and self.joints.value[2] is None:
                return f"joint states without {GRIPPER_VELOCITY_PART} (the policy observes it)"
            parts = {
                **{f"{c}{PIXELS_SUFFIX}": self.images[c] for c in self.sensor_cameras},
                "joints": self.joints,
            }
            if self.poses is not None and self.object_poses and not self.poses_from_cameras:
                parts[OBJECTS_KEY] = self.poses
            joints = self.joints
            geometries = self.geometries
            reset_estimator, self._estimator_reset = self._estimator_reset, False
        stamps = [p.stamp_s for p in parts.values()]
        oldest, newest = min(stamps), max(stamps)
        if newest - now_s > self.max_lead_s:
            ahead = max(parts, key=lambda k: parts[k].stamp_s)
            return (
                f"observation from the future: {ahead} is stamped {newest - now_s:.3f} s ahead of the clock "
                f"(max {self.max_lead_s:.3f} s; did the clock go back?)"
            )
        if wait_for_clock and newest - now_s > STAMP_TOLERANCE_S:
            return f"{WAITING_FOR_CLOCK}: stamped {newest - now_s:.3f} s ahead"
        if now_s - oldest > self.max_age_s:
            stale = min(parts, key=lambda k: parts[k].stamp_s)
            return f"stale observation: {stale} is {now_s - oldest:.3f} s old (max {self.max_age_s} s)"
        if newest - oldest > self.max_skew_s:
            skew = newest - oldest
            return f"unsynchronized observation: parts stamped {skew:.3f} s apart (max {self.max_skew_s} s)"
        repeated = [k for k, p in parts.items() if p.stamp_s <= self.last_used.get(k, -np.inf)]
        if repeated and (all_new or len(repeated) == len(parts)):
            return f"no new observation since the last action ({', '.join(repeated)})"
        images = {f"{c}{PIXELS_SUFFIX}": parts[f"{c}{PIXELS_SUFFIX}"] for c in self.cameras}
        values = {k: fit_image(p.value, self.width, self.height) for k, p in images.items()}
        poses = parts[OBJECTS_KEY].value if OBJECTS_KEY in parts else None
        if self.poses_from_cameras and geometries is not None:
            frames = [parts[f"{c}{PIXELS_SUFFIX}"].value for c in self.pose_cameras]
            try:
                estimated = self._estimate(geometries, frames, reset_estimator, joints.value)
            except Exception as err:  # never take the node down: no observation -> the arm holds
                return f"object poses from the cameras failed: {err!r}"
            if estimated is None:
                return NOT_SEEN
            poses = estimated
        if poses is not None:
            values[OBJECTS_KEY] = poses
            if self.object_shapes and geometries is not None:
                values[SHAPE_KEY] = objects_shape(geometries, poses, self.shape_version)
        arm, gripper_rad, gripper_rad_s = joints.value
        low, high = self.gripper_range
        gripper = np.clip((gripper_rad - low) / (high - low), 0.0, 1.0) * self.gripper_units
        values[GRIPPER_KEY] = np.array([gripper], dtype=np.float32)
        if self.gripper_velocity:  # units per second on the angle's scale, as the twin observes it
            speed = gripper_rad_s / (high - low) * self.gripper_units
            values[GRIPPER_VELOCITY_KEY] = np.array([speed], dtype=np.float32)
        values[JOINTS_KEY] = np.asarray(arm, dtype=np.float32)
        values[PINCH_KEY] = self.kinematics.pinch_pose(arm).astype(np.float32)
        values[TCP_KEY] = self.kinematics.tcp_pose(arm).astype(np.float32)
        with self._lock:
            self.last_used = {k: p.stamp_s for k, p in parts.items()}
        received = max(p.received_s for p in parts.values())
        return Observation(dict(sorted(values.items())), oldest, newest, received)

    def _estimate(
        self,
        geometries: Sequence[ObjectGeometry],
        frames: Sequence[np.ndarray],
        reset: bool,
        joints: tuple[np.ndarray, float, float | None],
    ) -> np.ndarray | None:
        """(num_objects * 7,) float32 poses fitted to the cameras' frames, or None while some object has not
        been seen. The estimator is rebuilt for other objects or another image size, reset per episode;
        `joints` (arm angles, gripper driver angle and speed) place the gripper that may hide the objects."""
        heights, widths = {f.shape[0] for f in frames}, {f.shape[1] for f in frames}
        if len(heights) != 1 or len(widths) != 1:
            raise ValueError(f"pose cameras {self.pose_cameras} deliver images of different sizes")
        key = (tuple(id(g) for g in geometries), widths.pop(), heights.pop())
        if self._estimator is None or key != self._estimator_key:
            self._estimator = ObjectPoseEstimator.from_config(
                self.cfg, geometries, width=key[1], height=key[2]
            )
            self._estimator_key = key
        elif reset:
            self._estimator.reset()
        arm, gripper_rad, _ = joints
        poses = self._estimator.update(frames, (np.asarray(arm), float(gripper_rad)))  # canonical quaternions
        return None if poses is None else poses.reshape(-1).astype(np.float32)
