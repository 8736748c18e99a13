"""Conversions between numpy / calibration data and the standard ROS messages of the contract.

Shared by the twin, camera and policy nodes so that an image or a CameraInfo means exactly the same
thing whether it came from MuJoCo or from a RealSense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from builtin_interfaces.msg import Time
from omegaconf import DictConfig
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float64MultiArray, Int64MultiArray

from gato_ros.paths import calibration_dir

NANOS_PER_SECOND = 1_000_000_000

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "mono16": (np.dtype(np.uint16), 1),
}


def time_msg(seconds: float) -> Time:
    nanos = round(seconds * NANOS_PER_SECOND)
    return Time(sec=nanos // NANOS_PER_SECOND, nanosec=nanos % NANOS_PER_SECOND)


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


@dataclass(frozen=True)
class PinholeIntrinsics:
    """Intrinsics of one camera at one image size (pixels); distortion in ROS `plumb_bob` order."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def scaled_to(self, width: int, height: int) -> PinholeIntrinsics:
        """The same camera at another resolution (a pure resize, no crop)."""
        sx, sy = width / self.width, height / self.height
        return PinholeIntrinsics(
            width, height, self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
            self.distortion_model, self.distortion,
        )  # fmt: skip


def load_calibration(cfg: DictConfig) -> dict[str, Any]:
    """The calibration file named by `cameras.calibration_file` (a name under calibration/, or a path)."""
    name = Path(str(cfg.cameras.calibration_file))
    path = name if name.is_absolute() else calibration_dir() / name
    with path.open() as f:
        return yaml.safe_load(f)


def camera_intrinsics(
    calibration: Mapping[str, Any], camera: str, width: int, height: int
) -> PinholeIntrinsics:
    """A camera's intrinsics at `width` x `height` from the calibration file.

    A camera entry either carries measured intrinsics (``intrinsics: {width, height, fx, fy, cx, cy,
    distortion_model, distortion}``, as `gato-ros calibrate` writes for a real camera), scaled to the
    requested size, or only ``fovy_deg`` (the twin's cameras): an ideal pinhole with square pixels and
    the principal point at the image centre, fx = fy = (height / 2) / tan(fovy / 2), as MuJoCo renders.
    """
    entry = calibration["cameras"][camera]
    measured = entry.get("intrinsics")
    if measured:
        base = PinholeIntrinsics(
            int(measured["width"]), int(measured["height"]),
            float(measured["fx"]), float(measured["fy"]), float(measured["cx"]), float(measured["cy"]),
            str(measured.get("distortion_model", "plumb_bob")),
            tuple(float(d) for d in measured.get("distortion", (0.0,) * 5)),
        )  # fmt: skip
        return base.scaled_to(width, height)
    focal = (height / 2.0) / math.tan(math.radians(float(entry["fovy_deg"])) / 2.0)
    return PinholeIntrinsics(width, height, focal, focal, width / 2.0, height / 2.0)


def camera_info_msg(intrinsics: PinholeIntrinsics, stamp: Time, frame_id: str) -> CameraInfo:
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


def float_array_msg(values: Sequence[float] | np.ndarray) -> Float64MultiArray:
    return Float64MultiArray(data=[float(x) for x in np.asarray(values, dtype=np.float64).ravel()])


def int_array_msg(values: Sequence[int] | np.ndarray) -> Int64MultiArray:
    return Int64MultiArray(data=[int(x) for x in np.asarray(values, dtype=np.int64).ravel()])
