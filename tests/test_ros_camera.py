"""Camera node: frames injected into a RealSense software device come out as correct ROS messages."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy  # before pyrealsense2: the reverse import order segfaults the process at exit
import yaml

# isort: split
import pyrealsense2 as rs
from rclpy.executors import SingleThreadedExecutor

from gato_ros.config import load_config
from gato_ros.ros import contract
from gato_ros.ros.camera_node import CameraNode, HardwareClockSync, QueueFrameSource
from gato_ros.ros.messages import image_array

WIDTH, HEIGHT, FPS = 64, 48, 30
SERIAL = "000111222333"
CAMERA = "basket_front_left"


class SoftwareCamera:
    """A RealSense software device with one rgb8 colour stream, started into a frame queue."""

    def __init__(self) -> None:
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, SERIAL)
        self.sensor = self.device.add_sensor("RGB Camera")
        stream = rs.video_stream()
        stream.type, stream.index, stream.uid = rs.stream.color, 0, 1
        stream.width, stream.height, stream.fps, stream.bpp = WIDTH, HEIGHT, FPS, 3
        stream.fmt = rs.format.rgb8
        intrinsics = rs.intrinsics()
        intrinsics.width, intrinsics.height = WIDTH, HEIGHT
        intrinsics.fx = intrinsics.fy = 50.0
        intrinsics.ppx, intrinsics.ppy = WIDTH / 2, HEIGHT / 2
        intrinsics.model = rs.distortion.none
        intrinsics.coeffs = [0.0] * 5
        stream.intrinsics = intrinsics
        self.profile = self.sensor.add_video_stream(stream).as_video_stream_profile()
        self.queue = rs.frame_queue(16, keep_frames=True)
        self.sensor.open(self.profile)
        self.sensor.start(self.queue)

    def inject(self, pixels: np.ndarray, hardware_time_ms: float, number: int) -> None:
        frame = rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(pixels)
        frame.bpp, frame.stride = 3, WIDTH * 3
        frame.timestamp = hardware_time_ms
        frame.domain = rs.timestamp_domain.hardware_clock
        frame.frame_number = number
        frame.profile = self.profile
        self.sensor.on_video_frame(frame)

    def close(self) -> None:
        self.sensor.stop()
        self.sensor.close()


def collect(node, topic, store: list) -> None:
    node.create_subscription(topic.msg_type, topic.name, store.append, topic.qos.profile())


def spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.02)
    return predicate()


def test_hardware_clock_sync_keeps_device_spacing_and_never_stamps_the_future() -> None:
    sync = HardwareClockSync(window=4, resync_threshold_s=0.5)
    hw = [10.000, 10.033, 10.066, 10.100, 10.133]
    delays = [0.010, 0.004, 0.020, 0.006, 0.004]  # transport delay of each frame
    clock_offset = 100.0
    stamps = [sync.stamp(h, h + clock_offset + d) for h, d in zip(hw, delays, strict=True)]
    for h, d, s in zip(hw, delays, stamps, strict=True):
        assert s <= h + clock_offset + d + 1e-12  # never after the frame's arrival
    # once the fastest frame (4 ms) is in the window, stamps are exposure time + clock offset + 4 ms
    assert stamps[1:] == pytest.approx([h + clock_offset + 0.004 for h in hw[1:]], abs=1e-9)
    # a device clock reset (offset jumps by far more than the threshold) restarts the estimate
    reset = sync.stamp(0.5, hw[-1] + clock_offset + 0.040)
    assert sync.resyncs == 1
    assert reset == pytest.approx(hw[-1] + clock_offset + 0.040)


def test_camera_node_publishes_software_device_frames(ros_default_context, tmp_path: Path) -> None:
    camera = SoftwareCamera()
    cfg = load_config([f"ros.camera.name={CAMERA}", "ros.camera.frame_timeout_s=1.0"])
    node = CameraNode(cfg, source=QueueFrameSource(camera.queue, SERIAL))
    listener = rclpy.create_node("camera_test_listener")
    images, infos, references = [], [], []
    collect(listener, contract.camera_image(CAMERA), images)
    collect(listener, contract.camera_info(CAMERA), infos)
    collect(listener, contract.camera_time_reference(CAMERA), references)
    executor = SingleThreadedExecutor()
    executor.add_node(listener)
    try:
        assert spin_until(
            executor, lambda: listener.count_publishers(contract.camera_image(CAMERA).name), 5.0
        )
        spin_until(executor, lambda: False, 0.3)  # let discovery settle before the first frame
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(3)]
        # hardware clock runs slower than wall time, so the first frame keeps the smallest offset
        hardware_ms = [5000.0, 5001.0, 5002.0]
        before = time.time()
        for i, (pixels, hw) in enumerate(zip(frames, hardware_ms, strict=True)):
            camera.inject(pixels, hw, i)
            # 99 ms more wall time than device time between frames: the first frame keeps the smallest
            # receive offset unless the node picks it up 99 ms later than the next (a loaded CI runner
            # once delayed it by 20 ms)
            time.sleep(0.1)
        assert spin_until(
            executor, lambda: len(images) >= 3 and len(infos) >= 3 and len(references) >= 3, 5.0
        )
        after = time.time()
    finally:
        node.close()
        node.destroy_node()
        listener.destroy_node()
        executor.shutdown()
        camera.close()

    for pixels, msg in zip(frames, images, strict=True):
        assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", WIDTH, HEIGHT, WIDTH * 3)
        assert msg.header.frame_id == contract.camera_optical_frame(CAMERA)
        np.testing.assert_array_equal(image_array(msg), pixels)

    stamps = [contract.stamp_to_seconds(m.header.stamp) for m in images]
    assert before <= stamps[0] <= after  # mapped into the ROS (system) clock domain
    np.testing.assert_allclose(np.diff(stamps), np.diff(hardware_ms) / 1000.0, atol=1e-6)  # device spacing

    for msg, image, hw in zip(references, images, hardware_ms, strict=True):
        assert msg.header.stamp == image.header.stamp
        assert contract.stamp_to_seconds(msg.time_ref) == pytest.approx(hw / 1000.0, abs=1e-9)
        assert msg.source == f"hardware_clock:{SERIAL}"

    # intrinsics from calibration/ (fovy only): ideal pinhole at the stream size
    with open(Path(__file__).resolve().parents[1] / "calibration" / "rgb_stacking_cell.yaml") as f:
        fovy = yaml.safe_load(f)["cameras"][CAMERA]["fovy_deg"]
    focal = (HEIGHT / 2) / math.tan(math.radians(fovy) / 2)
    info = infos[0]
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.header.stamp == images[0].header.stamp
    # OpenCV convention (pixel centres at integers): the image centre is at (W - 1) / 2
    centre_x, centre_y = (WIDTH - 1) / 2, (HEIGHT - 1) / 2
    np.testing.assert_allclose(info.k, [focal, 0, centre_x, 0, focal, centre_y, 0, 0, 1])


def test_camera_info_uses_measured_intrinsics_scaled_to_the_stream(
    ros_default_context, tmp_path: Path
) -> None:
    calibration = {
        "frame_id": "world",
        "cameras": {
            CAMERA: {
                "position": [0, 0, 0],
                "quaternion_wxyz": [1, 0, 0, 0],
                "intrinsics": {
                    "width": 2 * WIDTH, "height": 2 * HEIGHT,
                    "fx": 120.0, "fy": 121.0, "cx": 63.0, "cy": 47.0,
                    "distortion_model": "plumb_bob", "distortion": [0.1, -0.05, 0.0, 0.0, 0.01],
                },
            }
        },
    }  # fmt: skip
    path = tmp_path / "cell.yaml"
    path.write_text(yaml.safe_dump(calibration))
    camera = SoftwareCamera()
    cfg = load_config([f"ros.camera.name={CAMERA}", f"cameras.calibration_file={path}"])
    node = CameraNode(cfg, source=QueueFrameSource(camera.queue, SERIAL))
    try:
        k = node.intrinsics(WIDTH, HEIGHT)
        # a resize maps pixel centres: c -> (c + 0.5) * s - 0.5
        assert (k.fx, k.fy, k.cx, k.cy) == pytest.approx((60.0, 60.5, 31.25, 23.25))
        assert k.distortion == pytest.approx((0.1, -0.05, 0.0, 0.0, 0.01))
    finally:
        node.close()
        node.destroy_node()
        camera.close()
