"""One camera's calibration from its image directory: detect, intrinsics, extrinsics, quality gates.

Layout: <camera_dir>/<intrinsics_dir>/ (board moved through varied poses), <camera_dir>/<extrinsics_dir>/
(board still at its configured world pose), optionally <camera_dir>/<factory_intrinsics_file>.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import yaml
from omegaconf import DictConfig

from gato_ros.calibration.board import Board, BoardObservation, DetectionSettings, board_from_config
from gato_ros.calibration.calibration_file import camera_entry
from gato_ros.calibration.extrinsics import ExtrinsicsResult, ExtrinsicsSettings, solve_extrinsics
from gato_ros.calibration.geometry import Pose
from gato_ros.calibration.intrinsics import (
    Intrinsics,
    IntrinsicsResult,
    IntrinsicsSettings,
    calibrate_intrinsics,
    intrinsics_from_realsense,
)

INTRINSICS_SOURCES = ("auto", "images", "factory", "keep")


class CalibrationError(RuntimeError):
    """A calibration that cannot be computed or fails a quality gate; the message says what to do."""


@dataclass(frozen=True)
class BoardViews:
    """Corners of every image in a directory where the board was found."""

    observations: list[BoardObservation]
    used: list[Path]
    missed: list[Path] = field(default_factory=list)
    image_size: tuple[int, int] | None = None  # (width, height)


@dataclass(frozen=True)
class CameraCalibration:
    camera: str
    intrinsics: IntrinsicsResult
    extrinsics: ExtrinsicsResult
    intrinsics_views: BoardViews | None
    extrinsics_views: BoardViews
    board: Board
    board_in_world: Pose

    def entry(self) -> dict[str, Any]:
        """The camera's entry for the calibration file."""
        rms: dict[str, float] = {"extrinsics": round(self.extrinsics.rms_px, 4)}
        views = {"extrinsics": self.extrinsics.views}
        if self.intrinsics.rms_px is not None:
            rms["intrinsics"] = round(self.intrinsics.rms_px, 4)
        if self.intrinsics_views is not None and self.intrinsics.source == "images":
            views["intrinsics"] = len(self.intrinsics_views.used)
        provenance = {
            "tool": "gato-ros calibrate",
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "intrinsics_source": self.intrinsics.source,
            "board": self.board.describe(),
            "board_position": [round(float(v), 5) for v in self.board_in_world.position],
            "board_quaternion_wxyz": [round(float(v), 6) for v in self.board_in_world.quaternion_wxyz],
            "reprojection_rms_px": rms,
            "views": views,
        }
        return camera_entry(self.extrinsics.camera_in_world, self.intrinsics.intrinsics, provenance)


def list_images(directory: Path, extensions: Sequence[str]) -> list[Path]:
    if not directory.is_dir():
        return []
    suffixes = {e.lower() for e in extensions}
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def detect_views(
    images: Sequence[Path], board: Board, settings: DetectionSettings | None = None
) -> BoardViews:
    """Detect the board in every image; all images must share one size."""
    observations, used, missed = [], [], []
    size: tuple[int, int] | None = None
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CalibrationError(f"cannot read image {path}")
        image_size = (image.shape[1], image.shape[0])
        if size is not None and image_size != size:
            raise CalibrationError(
                f"{path} is {image_size[0]}x{image_size[1]}, the others {size[0]}x{size[1]}"
            )
        size = image_size
        found = board.detect(image, settings)
        if found is None:
            missed.append(path)
        else:
            observations.append(found)
            used.append(path)
    return BoardViews(observations, used, missed, size)


def _load_factory_intrinsics(path: Path) -> Intrinsics:
    return intrinsics_from_realsense(yaml.safe_load(path.read_text()))


def _resolve_intrinsics(
    source: str,
    views: BoardViews,
    factory_file: Path,
    previous_entry: Mapping[str, Any] | None,
    board: Board,
    settings: IntrinsicsSettings,
    image_size: tuple[int, int],
) -> IntrinsicsResult:
    if source not in INTRINSICS_SOURCES:
        raise CalibrationError(
            f"unknown intrinsics source {source!r}; one of {', '.join(INTRINSICS_SOURCES)}"
        )
    kept = (previous_entry or {}).get("intrinsics")
    if source == "auto":
        if len(views.observations) >= settings.min_views:
            source = "images"
        elif factory_file.is_file():
            source = "factory"
        elif kept:
            source = "keep"
        else:
            raise CalibrationError(
                f"no intrinsics: {len(views.observations)} usable board views (need {settings.min_views}), "
                f"no {factory_file.name} and none in the previous calibration"
            )
    try:
        if source == "images":
            if views.image_size is None:
                raise CalibrationError("no intrinsics images")
            result = calibrate_intrinsics(views.observations, board, views.image_size, settings)
            if result.intrinsics.image_size != image_size:
                raise CalibrationError(
                    f"intrinsics images are {views.image_size}, extrinsics images {image_size}: use one size"
                )
            return result
        if source == "factory":
            if not factory_file.is_file():
                raise CalibrationError(f"no factory intrinsics file {factory_file} (written by --capture)")
            return IntrinsicsResult(_load_factory_intrinsics(factory_file).scaled_to(*image_size), "factory")
        if not kept:
            raise CalibrationError(
                "--intrinsics keep: the previous calibration has no intrinsics for this camera"
            )
        return IntrinsicsResult(Intrinsics.from_dict(kept).scaled_to(*image_size), "kept")
    except ValueError as err:
        raise CalibrationError(str(err)) from err


def calibrate_camera(
    camera: str,
    camera_dir: Path,
    cfg: DictConfig,
    intrinsics_source: str = "auto",
    previous_entry: Mapping[str, Any] | None = None,
    force: bool = False,
) -> CameraCalibration:
    """Calibrate one camera from its image directory; `cfg` is the `calibration` config node."""
    try:
        board = board_from_config(cfg.board)
    except ValueError as err:
        raise CalibrationError(str(err)) from err
    detection = DetectionSettings.from_config(cfg.detection)
    extensions = list(cfg.images.extensions)
    extrinsics_images = list_images(camera_dir / str(cfg.images.extrinsics_dir), extensions)
    if not extrinsics_images:
        raise CalibrationError(f"no images in {camera_dir / str(cfg.images.extrinsics_dir)}")
    extrinsics_views = detect_views(extrinsics_images, board, detection)
    if not extrinsics_views.observations or extrinsics_views.image_size is None:
        raise CalibrationError("the board was found in none of the extrinsics images")
    intrinsics_settings = IntrinsicsSettings.from_config(cfg.intrinsics)
    intrinsics_images = list_images(camera_dir / str(cfg.images.intrinsics_dir), extensions)
    intrinsics_views = (
        detect_views(intrinsics_images, board, detection) if intrinsics_source in ("auto", "images") else None
    )
    intrinsics = _resolve_intrinsics(
        intrinsics_source,
        intrinsics_views or BoardViews([], []),
        camera_dir / str(cfg.images.factory_intrinsics_file),
        previous_entry,
        board,
        intrinsics_settings,
        extrinsics_views.image_size,
    )
    try:
        board_in_world = Pose.from_wxyz(cfg.board.position, cfg.board.quaternion_wxyz)
        extrinsics = solve_extrinsics(
            extrinsics_views.observations,
            board,
            intrinsics.intrinsics,
            board_in_world,
            ExtrinsicsSettings.from_config(cfg.extrinsics),
        )
    except (ValueError, RuntimeError) as err:
        raise CalibrationError(str(err)) from err
    limit = float(cfg.quality.max_reprojection_error_px)
    errors = {"intrinsics": intrinsics.rms_px, "extrinsics": extrinsics.rms_px}
    bad = {k: v for k, v in errors.items() if v is not None and v > limit}
    if bad and not force:
        described = ", ".join(f"{k} {v:.3f} px" for k, v in bad.items())
        raise CalibrationError(
            f"reprojection RMS {described} exceeds {limit} px (blurred or badly lit images, or a board "
            "that is not flat); --force writes it anyway"
        )
    return CameraCalibration(
        camera, intrinsics, extrinsics, intrinsics_views, extrinsics_views, board, board_in_world
    )
