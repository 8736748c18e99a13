"""`gato-ros calibrate --capture`: save board images from a live RealSense (plain pyrealsense2, no ROS).

Interactive: the user places the board at its world pose for the extrinsics frames, then moves it through
varied poses for the intrinsics views, pressing Enter for each; a view where the board is not found is
reported and not counted. The colour stream's factory intrinsics are saved beside the images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import yaml
from omegaconf import DictConfig

from gato_ros.calibration.board import DetectionSettings, board_from_config

MS_PER_S = 1000
FINISH_WORDS = {"q", "quit", "done"}


class ColourSource(Protocol):
    """Where captured RGB frames come from."""

    def wait(self, timeout_s: float) -> np.ndarray | None: ...

    def factory_intrinsics(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class RealSenseColourSource:
    """The colour stream of one RealSense through `rs.pipeline` (rgb8)."""

    def __init__(self, serial: str, width: int, height: int, fps: int) -> None:
        import pyrealsense2 as rs  # only --capture needs librealsense

        self._rs = rs
        self.pipeline = rs.pipeline()
        config = rs.config()
        if serial:
            config.enable_device(serial)
        config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        self.profile = self.pipeline.start(config)

    def wait(self, timeout_s: float) -> np.ndarray | None:
        ok, frames = self.pipeline.try_wait_for_frames(int(timeout_s * MS_PER_S))
        if not ok:
            return None
        colour = frames.get_color_frame()
        return np.asanyarray(colour.get_data()).copy() if colour else None

    def factory_intrinsics(self) -> dict[str, Any]:
        stream = self.profile.get_stream(self._rs.stream.color).as_video_stream_profile()
        k = stream.get_intrinsics()
        return {
            "width": int(k.width), "height": int(k.height),
            "fx": float(k.fx), "fy": float(k.fy), "ppx": float(k.ppx), "ppy": float(k.ppy),
            "model": str(k.model).split(".")[-1], "coeffs": [float(c) for c in k.coeffs],
        }  # fmt: skip

    def close(self) -> None:
        self.pipeline.stop()


def _next_frame(source: ColourSource, timeout_s: float) -> np.ndarray:
    frame = source.wait(timeout_s)
    if frame is None:
        raise RuntimeError(f"no colour frame within {timeout_s} s")
    return frame


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def capture_camera(
    camera: str,
    source: ColourSource,
    camera_dir: Path,
    cfg: DictConfig,
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
) -> tuple[int, int]:
    """Capture one camera's extrinsics frames and intrinsics views; returns (extrinsics, intrinsics) counts.

    `cfg` is the `calibration` config node.
    """
    board = board_from_config(cfg.board)
    detection = DetectionSettings.from_config(cfg.detection)
    capture = cfg.capture
    timeout_s = float(capture.frame_timeout_s)
    extrinsics_dir = camera_dir / str(cfg.images.extrinsics_dir)
    intrinsics_dir = camera_dir / str(cfg.images.intrinsics_dir)
    extrinsics_dir.mkdir(parents=True, exist_ok=True)
    intrinsics_dir.mkdir(parents=True, exist_ok=True)
    factory_file = camera_dir / str(cfg.images.factory_intrinsics_file)
    factory_file.write_text(yaml.safe_dump(source.factory_intrinsics(), sort_keys=False))
    for _ in range(int(capture.warmup_frames)):
        _next_frame(source, timeout_s)

    position = [float(v) for v in cfg.board.position]
    ask(
        f"[{camera}] Lay the board at its world pose (origin {position} m, calibration.board) in full view, "
        "keep it still and press Enter "
    )
    saved_extrinsics = 0
    while saved_extrinsics == 0:
        frames = [_next_frame(source, timeout_s) for _ in range(int(capture.extrinsics_frames))]
        if board.detect(frames[-1], detection) is None:
            ask(f"[{camera}] board not found in the image; adjust light or placement and press Enter ")
            continue
        for index, frame in enumerate(frames):
            _save_rgb(extrinsics_dir / f"{index:03d}.png", frame)
        saved_extrinsics = len(frames)
    say(f"[{camera}] saved {saved_extrinsics} extrinsics frames in {extrinsics_dir}")

    wanted = int(capture.intrinsics_views)
    saved_intrinsics = 0
    while saved_intrinsics < wanted:
        answer = ask(
            f"[{camera}] intrinsics view {saved_intrinsics + 1}/{wanted}: hold the board at a new pose "
            "(tilted, another part of the image) and press Enter, or q + Enter to stop "
        )
        if answer.strip().lower() in FINISH_WORDS:
            break
        frame = _next_frame(source, timeout_s)
        if board.detect(frame, detection) is None:
            say(f"[{camera}] board not found; not saved")
            continue
        _save_rgb(intrinsics_dir / f"{saved_intrinsics:03d}.png", frame)
        saved_intrinsics += 1
    say(f"[{camera}] saved {saved_intrinsics} intrinsics views in {intrinsics_dir}")
    return saved_extrinsics, saved_intrinsics
