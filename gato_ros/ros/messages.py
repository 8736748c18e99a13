"""Conversions between numpy / calibration data and the standard ROS messages of the contract.

Shared by the twin, camera and policy nodes so that an image or a CameraInfo means exactly the same
thing whether it came from MuJoCo or from a RealSense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray
from omegaconf import DictConfig
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, Int64MultiArray

from gato_ros.calibration.calibration_file import camera_intrinsics, load_cell_calibration
from gato_ros.calibration.intrinsics import Intrinsics

__all__ = [
    "camera_info_msg",
    "camera_intrinsics",
    "float_array_msg",
    "image_array",
    "image_msg",
    "int_array_msg",
    "joint_positions",
    "joint_state_msg",
    "load_calibration",
    "pose_array",
    "pose_array_msg",
    "time_from_nanos",
    "time_msg",
]

NANOS_PER_SECOND = 1_000_000_000
# A pose in the observation's convention: x, y, z, qw, qx, qy, qz (scalar-first quaternion, as MuJoCo).
POSE_SIZE = 7

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
}


def time_msg(seconds: float) -> Time:
    return time_from_nanos(round(seconds * NANOS_PER_SECOND))


def time_from_nanos(nanos: int) -> Time:
    return Time(sec=nanos // NANOS_PER_SECOND, nanosec=nanos % NANOS_PER_SECOND)


def image_msg(pixels: np.ndarray, stamp: Time, frame_id: str, encoding: str = "rgb8") -> Image:
    """A contiguous (H, W[, C]) array as an Image; rows are packed (step = W * C * itemsize)."""
    dtype, channels = ENCODINGS[encoding]
    array = np.ascontiguousarray(pixels, dtype=dtype)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        raise ValueError(f"{encoding} needs (H, W, {channels}), got {pixels.shape}")
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.shape[1] * channels * dtype.itemsize)
    msg.data = array.tobytes()
    return msg


def image_array(msg: Image, want: str = "rgb8") -> np.ndarray:
    """An Image as (H, W, C) (or (H, W) for one channel); rgb8/bgr8 are converted to `want` order."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r}")
    dtype, channels = ENCODINGS[msg.encoding]
    if msg.is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    row = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = row[:, : msg.width * channels * dtype.itemsize].copy().view(dtype)
    pixels = pixels.reshape(msg.height, msg.width, channels) if channels > 1 else pixels
    if {msg.encoding, want} == {"rgb8", "bgr8"}:
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels.astype(dtype.newbyteorder("="), copy=False))


def load_calibration(cfg: DictConfig) -> dict[str, Any]:
    """The calibration file named by `cameras.calibration_file` (a name under calibration/, or a path)."""
    return load_cell_calibration(cfg.cameras)


def camera_info_msg(intrinsics: Intrinsics, stamp: Time, frame_id: str) -> CameraInfo:
    """CameraInfo of an unrectified camera: K from the intrinsics, R identity, P = [K | 0]."""
    k = intrinsics
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.width, msg.height = k.width, k.height
    msg.distortion_model = k.distortion_model
    msg.d = list(k.distortion)
    msg.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def joint_state_msg(
    names: Sequence[str],
    positions: Sequence[float],
    velocities: Sequence[float],
    stamp: Time,
    efforts: Sequence[float] = (),
) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(x) for x in positions]
    msg.velocity = [float(x) for x in velocities]
    msg.effort = [float(x) for x in efforts]
    return msg


def joint_positions(msg: JointState, names: Sequence[str]) -> np.ndarray | None:
    """Positions of `names` in that order, or None if the message lacks one (a partial driver message)."""
    index = {n: i for i, n in enumerate(msg.name)}
    if any(n not in index or index[n] >= len(msg.position) for n in names):
        return None
    return np.array([msg.position[index[n]] for n in names], dtype=np.float64)


def joint_velocity(msg: JointState, name: str) -> float | None:
    """The velocity of joint `name`, or None if the message has no velocities for it (drivers may leave
    the field empty); a non-finite one is passed on (`ObservationAssembler.add_joints` refuses it)."""
    index = {n: i for i, n in enumerate(msg.name)}
    if name not in index or index[name] >= len(msg.velocity):
        return None
    return float(msg.velocity[index[name]])


def float_array_msg(values: Sequence[float] | np.ndarray) -> Float64MultiArray:
    return Float64MultiArray(data=[float(x) for x in np.asarray(values, dtype=np.float64).ravel()])


def int_array_msg(values: Sequence[int] | np.ndarray) -> Int64MultiArray:
    return Int64MultiArray(data=[int(x) for x in np.asarray(values, dtype=np.int64).ravel()])


def pose_array_msg(poses: np.ndarray, stamp: Time, frame_id: str) -> PoseArray:
    """(N, 7) poses x, y, z, qw, qx, qy, qz (the observation's scalar-first order) as a PoseArray (ROS
    quaternions are x, y, z, w)."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, POSE_SIZE)
    msg = PoseArray()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    for x, y, z, qw, qx, qy, qz in poses.tolist():
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        pose.orientation.w, pose.orientation.x = qw, qx
        pose.orientation.y, pose.orientation.z = qy, qz
        msg.poses.append(pose)
    return msg


def pose_array(msg: PoseArray) -> np.ndarray:
    """A PoseArray as (N, 7) x, y, z, qw, qx, qy, qz (the inverse of `pose_array_msg`)."""
    rows = []
    for p in msg.poses:
        position, q = p.position, p.orientation
        rows.append((position.x, position.y, position.z, q.w, q.x, q.y, q.z))
    return np.array(rows, dtype=np.float64).reshape(len(rows), POSE_SIZE)
