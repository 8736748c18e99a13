"""RealSense camera node: colour (and optional depth) frames as `Image` + `CameraInfo` per camera.

One process per camera (``ros.camera.name``; serial from ``ros.camera.devices``). Intrinsics come from
calibration/ (`messages.camera_intrinsics`), not from the device, so the policy sees the cell as it was
calibrated.

**Timestamps.** Each frame carries the device's own timestamp (ms, in one of librealsense's domains:
``hardware_clock`` = the camera's free-running clock, ``global_time`` = that clock mapped to the host's
system time by librealsense, ``system_time`` = host arrival time). The header stamp is that exposure time
mapped into the ROS clock domain by `HardwareClockSync`: stamp = hw + min(receive - hw) over a sliding
window; the minimum is the frame with the least transport delay, so stamps keep the device's exact frame
spacing and never lie in the future. Both times are recorded: the node publishes a `TimeReference` per
frame (header.stamp = the ROS stamp of the image, time_ref = the raw device time, source =
``<domain>:<serial>``), so a recording can redo the mapping offline.

**Frame sources.** The node reads from a `FrameSource`: `PipelineFrameSource` (an ``rs.pipeline`` on a
real device) or `QueueFrameSource` (any sensor started into an ``rs.frame_queue``, e.g. an
``rs.software_device`` in the tests). A reader thread blocks on the source and publishes, so a slow
camera never stalls the executor.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import rclpy  # noqa: F401  (before pyrealsense2, see gato_ros/ros/__init__.py)

# isort: split
import pyrealsense2 as rs
from omegaconf import DictConfig
from sensor_msgs.msg import TimeReference

from gato_ros.ros import contract
from gato_ros.ros.messages import (
    camera_info_msg,
    camera_intrinsics,
    image_msg,
    load_calibration,
    time_from_nanos,
)
from gato_ros.ros.runtime import GatoNode, run_node

MS_PER_S = 1000.0
DEPTH_UNIT_M = 0.001  # REP 118: 16UC1 depth images are in millimetres


@dataclass(frozen=True)
class CameraFrame:
    """One capture: RGB (H, W, 3) uint8, optional depth (H, W) uint16 in mm, and the device's time."""

    color: np.ndarray
    depth: np.ndarray | None
    hardware_time_s: float
    timestamp_domain: str
    frame_number: int


def frame_from_realsense(frame: rs.frame, depth_scale_m: float = DEPTH_UNIT_M) -> CameraFrame | None:
    """A librealsense frame or frameset as a `CameraFrame`; None if it holds no colour image."""
    color = depth = None
    if frame.is_frameset():
        frames = frame.as_frameset()
        color, depth = frames.get_color_frame(), frames.get_depth_frame()
    elif frame.get_profile().stream_type() == rs.stream.color:
        color = frame
    if not color:
        return None
    video = color.as_video_frame()
    pixels = np.asanyarray(video.get_data())
    fmt = video.get_profile().format()
    if fmt == rs.format.bgr8:
        pixels = pixels[:, :, ::-1]
    elif fmt != rs.format.rgb8:
        raise ValueError(f"colour stream must be rgb8 or bgr8, got {fmt}")
    depth_mm = None
    if depth:
        raw = np.asanyarray(depth.as_depth_frame().get_data())
        depth_mm = (
            raw.copy()
            if abs(depth_scale_m - DEPTH_UNIT_M) < 1e-12
            else np.clip(raw * (depth_scale_m / DEPTH_UNIT_M), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        )
    return CameraFrame(
        color=np.ascontiguousarray(pixels),
        depth=depth_mm,
        hardware_time_s=color.get_timestamp() / MS_PER_S,
        timestamp_domain=color.get_frame_timestamp_domain().name,
        frame_number=int(color.get_frame_number()),
    )


class HardwareClockSync:
    """Maps a device's timestamps into the ROS clock: t_ros = t_hw + min over a window of (receive - t_hw).

    The smallest observed offset belongs to the frame that reached us fastest, so it is the best estimate
    of the clock offset plus the irreducible transport delay; the window lets it follow clock drift.
    An offset that jumps above the estimate by more than `resync_threshold_s` (device reset, host clock
    step) restarts the estimate rather than stamping frames far in the past.
    """

    def __init__(self, window: int, resync_threshold_s: float) -> None:
        self._offsets: deque[float] = deque(maxlen=window)
        self._resync_threshold_s = resync_threshold_s
        self.resyncs = 0

    def stamp(self, hardware_time_s: float, receive_time_s: float) -> float:
        offset = receive_time_s - hardware_time_s
        if self._offsets and offset - min(self._offsets) > self._resync_threshold_s:
            self._offsets.clear()
            self.resyncs += 1
        self._offsets.append(offset)
        return hardware_time_s + min(self._offsets)


class FrameSource(Protocol):
    """Where a camera node's frames come from."""

    serial: str

    def wait(self, timeout_s: float) -> CameraFrame | None: ...

    def close(self) -> None: ...


class PipelineFrameSource:
    """A real RealSense through ``rs.pipeline``: rgb8 colour (+ z16 depth) at the configured mode."""

    def __init__(self, serial: str, width: int, height: int, fps: int, depth: bool) -> None:
        self.pipeline = rs.pipeline()
        config = rs.config()
        if serial:
            config.enable_device(serial)
        config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        if depth:
            config.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
        profile = self.pipeline.start(config)
        device = profile.get_device()
        self.serial = device.get_info(rs.camera_info.serial_number)
        self.depth_scale_m = device.first_depth_sensor().get_depth_scale() if depth else DEPTH_UNIT_M

    def wait(self, timeout_s: float) -> CameraFrame | None:
        ok, frames = self.pipeline.try_wait_for_frames(int(timeout_s * MS_PER_S))
        return frame_from_realsense(frames, self.depth_scale_m) if ok else None

    def close(self) -> None:
        self.pipeline.stop()


class QueueFrameSource:
    """Frames from an ``rs.frame_queue`` that sensors (real ones, or an ``rs.software_device``) feed."""

    def __init__(self, queue: rs.frame_queue, serial: str, depth_scale_m: float = DEPTH_UNIT_M) -> None:
        self.queue = queue
        self.serial = serial
        self.depth_scale_m = depth_scale_m

    def wait(self, timeout_s: float) -> CameraFrame | None:
        ok, frame = self.queue.try_wait_for_frame(int(timeout_s * MS_PER_S))
        return frame_from_realsense(frame, self.depth_scale_m) if ok else None

    def close(self) -> None:
        """The queue's sensors belong to whoever started them."""


def source_from_config(cfg: DictConfig) -> PipelineFrameSource:
    cam = cfg.ros.camera
    serial = str(cam.devices.get(cam.name, "") or "")
    return PipelineFrameSource(serial, int(cam.width), int(cam.height), int(cam.fps), bool(cam.depth))


class CameraNode(GatoNode):
    """Publishes one RealSense camera on the contract's camera topics."""

    SETTINGS = ("control", "cameras", "ros.camera")

    def __init__(self, cfg: DictConfig, source: FrameSource | None = None, **kwargs: Any) -> None:
        self.camera = str(cfg.ros.camera.name)
        super().__init__(f"camera_{self.camera}", cfg, **kwargs)
        cam = cfg.ros.camera
        self.calibration = load_calibration(cfg)
        if self.camera not in self.calibration["cameras"]:
            raise ValueError(f"camera {self.camera!r} is not in {cfg.cameras.calibration_file}")
        self.frame_id = contract.camera_optical_frame(self.camera)
        self.image_pub = self.publisher(contract.camera_image(self.camera))
        self.info_pub = self.publisher(contract.camera_info(self.camera))
        self.time_pub = self.publisher(contract.camera_time_reference(self.camera))
        self.depth_pub = self.publisher(contract.camera_depth(self.camera)) if cam.depth else None
        self.clock_sync = HardwareClockSync(int(cam.clock_sync_window), float(cam.clock_resync_threshold_s))
        self.frame_timeout_s = float(cam.frame_timeout_s)
        self.log_period_s = float(cam.log_period_s)
        self.frames_published = 0
        self._intrinsics: dict[tuple[int, int], Any] = {}
        self.source = source if source is not None else source_from_config(cfg)
        self.get_logger().info(f"camera {self.camera}: RealSense {self.source.serial or '(software)'}")
        self._running = threading.Event()
        self._running.set()
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.camera}_reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        last_frame = time.monotonic()
        while self._running.is_set():
            try:
                frame = self.source.wait(self.frame_timeout_s)
            except RuntimeError as err:  # librealsense raises on device loss / timeouts
                frame = None
                self.get_logger().error(f"{self.camera}: {err}", throttle_duration_sec=self.log_period_s)
            if not self._running.is_set():
                return
            if frame is None:
                if time.monotonic() - last_frame > self.frame_timeout_s:
                    self.get_logger().error(
                        f"{self.camera}: no frame for {time.monotonic() - last_frame:.1f} s",
                        throttle_duration_sec=self.log_period_s,
                    )
                continue
            last_frame = time.monotonic()
            self.publish_frame(frame, self.get_clock().now().nanoseconds)

    def intrinsics(self, width: int, height: int) -> Any:
        key = (width, height)
        if key not in self._intrinsics:
            self._intrinsics[key] = camera_intrinsics(self.calibration, self.camera, width, height)
        return self._intrinsics[key]

    def publish_frame(self, frame: CameraFrame, receive_time_ns: int) -> None:
        """Publish one frame received at `receive_time_ns` on the node's clock."""
        stamp_s = self.clock_sync.stamp(frame.hardware_time_s, receive_time_ns * 1e-9)
        stamp = time_from_nanos(round(stamp_s * 1e9))
        height, width = frame.color.shape[:2]
        self.image_pub.publish(image_msg(frame.color, stamp, self.frame_id, "rgb8"))
        self.info_pub.publish(camera_info_msg(self.intrinsics(width, height), stamp, self.frame_id))
        if self.depth_pub is not None and frame.depth is not None:
            self.depth_pub.publish(image_msg(frame.depth, stamp, self.frame_id, "16UC1"))
        reference = TimeReference()
        reference.header.stamp = stamp
        reference.header.frame_id = self.frame_id
        reference.time_ref = time_from_nanos(round(frame.hardware_time_s * 1e9))
        reference.source = f"{frame.timestamp_domain}:{self.source.serial}"
        self.time_pub.publish(reference)
        self.frames_published += 1

    def close(self) -> None:
        self._running.clear()
        self._reader.join(timeout=2.0 * self.frame_timeout_s)
        self.source.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(CameraNode, argv, priority="camera")


if __name__ == "__main__":
    sys.exit(main())
