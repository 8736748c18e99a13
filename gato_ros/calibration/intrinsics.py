"""Pinhole intrinsics: from board views (OpenCV `calibrateCamera`), from RealSense factory values, or kept.

One `Intrinsics` type serves calibration, the twin and the camera nodes' CameraInfo
(`calibration_file.camera_intrinsics`, `gato_ros.ros.messages.camera_info_msg`), so all of them agree on the
OpenCV convention (pixel centres at integer coordinates) and on how a resize moves the principal point.
Distortion is stored in OpenCV / ROS `plumb_bob` order (k1, k2, p1, p2, k3), the order of `CameraInfo.d`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from omegaconf import DictConfig

from gato_ros.calibration.board import Board, BoardObservation
from gato_ros.calibration.geometry import focal_from_fovy, fovy_deg

PLUMB_BOB = "plumb_bob"
PLUMB_BOB_LENGTH = 5
# RealSense models whose coefficients OpenCV's plumb_bob model reproduces (the others are exact only when
# all their coefficients are zero, as on most D400 colour streams).
REALSENSE_PLUMB_BOB_MODELS = {"brown_conrady", "none"}


@dataclass(frozen=True)
class Intrinsics:
    """One camera at one image size (pixels; OpenCV convention, pixel centres at integers)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = (0.0,) * PLUMB_BOB_LENGTH
    distortion_model: str = PLUMB_BOB

    @property
    def camera_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distortion_array(self) -> np.ndarray:
        return np.asarray(self.distortion, dtype=np.float64)

    @property
    def fovy_deg(self) -> float:
        return fovy_deg(self.fy, self.height)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.width, self.height

    def scaled_to(self, width: int, height: int) -> Intrinsics:
        """The same lens at another resolution of the same sensor (a pure resize, same aspect ratio)."""
        if (width, height) == (self.width, self.height):
            return self
        if abs(width * self.height - height * self.width) > max(width, self.width):
            raise ValueError(
                f"intrinsics for {self.width}x{self.height} cannot be used at {width}x{height}: "
                "another aspect ratio is a crop, not a resize"
            )
        sx, sy = width / self.width, height / self.height
        # Pixel centres sit at integers: a resize maps u -> (u + 0.5) * s - 0.5.
        return Intrinsics(
            width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
            self.distortion, self.distortion_model,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The `intrinsics:` entry of a calibration file."""
        return {
            "width": int(self.width),
            "height": int(self.height),
            "fx": round(float(self.fx), 4),
            "fy": round(float(self.fy), 4),
            "cx": round(float(self.cx), 4),
            "cy": round(float(self.cy), 4),
            "distortion_model": self.distortion_model,
            "distortion": [round(float(d), 8) for d in self.distortion],
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Intrinsics:
        model = str(entry.get("distortion_model", PLUMB_BOB))
        if model != PLUMB_BOB:
            raise ValueError(f"unsupported distortion model {model!r} (expected {PLUMB_BOB})")
        distortion = tuple(float(d) for d in entry.get("distortion", (0.0,) * PLUMB_BOB_LENGTH))
        return cls(
            int(entry["width"]), int(entry["height"]),
            float(entry["fx"]), float(entry["fy"]), float(entry["cx"]), float(entry["cy"]),
            distortion, model,
        )  # fmt: skip

    @classmethod
    def ideal(cls, width: int, height: int, fovy: float) -> Intrinsics:
        """A distortion-free pinhole with square pixels centred on the image: how MuJoCo renders."""
        focal = focal_from_fovy(fovy, height)
        return cls(width, height, focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)


@dataclass(frozen=True)
class IntrinsicsResult:
    intrinsics: Intrinsics
    source: str  # "images", "factory" or "kept"
    rms_px: float | None = None  # reprojection RMS over all views (images only)
    per_view_rms_px: tuple[float, ...] = ()


@dataclass(frozen=True)
class IntrinsicsSettings:
    min_views: int = 6
    fix_k3: bool = True
    fix_tangential: bool = False
    max_iterations: int = 100
    epsilon: float = 1e-9

    @classmethod
    def from_config(cls, intrinsics: DictConfig) -> IntrinsicsSettings:
        return cls(
            min_views=int(intrinsics.min_views),
            fix_k3=bool(intrinsics.fix_k3),
            fix_tangential=bool(intrinsics.fix_tangential),
            max_iterations=int(intrinsics.max_iterations),
            epsilon=float(intrinsics.epsilon),
        )


def calibrate_intrinsics(
    views: Sequence[BoardObservation],
    board: Board,
    image_size: tuple[int, int],
    settings: IntrinsicsSettings | None = None,
) -> IntrinsicsResult:
    """fx, fy, cx, cy and distortion from several views of the board (as `board.detect` gives them)."""
    settings = settings or IntrinsicsSettings()
    if len(views) < settings.min_views:
        raise ValueError(
            f"intrinsics need at least {settings.min_views} board views, got {len(views)}: "
            "capture more images with the board tilted and spread over the whole image"
        )
    corners = board.corner_points()
    object_points = [corners[v.ids].astype(np.float32) for v in views]
    image_points = [np.asarray(v.image_points, dtype=np.float32).reshape(-1, 1, 2) for v in views]
    flags = 0
    if settings.fix_k3:
        flags |= cv2.CALIB_FIX_K3
    if settings.fix_tangential:
        flags |= cv2.CALIB_ZERO_TANGENT_DIST
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, settings.max_iterations, settings.epsilon)
    rms, camera_matrix, distortion, rvecs, tvecs = cv2.calibrateCamera(
        object_points, image_points, image_size, None, None, flags=flags, criteria=criteria
    )
    distortion = np.asarray(distortion, dtype=np.float64).ravel()[:PLUMB_BOB_LENGTH]
    distortion = np.pad(distortion, (0, PLUMB_BOB_LENGTH - distortion.size))
    per_view = []
    for points, observed, rvec, tvec in zip(object_points, image_points, rvecs, tvecs, strict=True):
        projected, _ = cv2.projectPoints(points, rvec, tvec, camera_matrix, distortion)
        per_view.append(float(np.sqrt(np.mean(np.sum((projected - observed).reshape(-1, 2) ** 2, axis=1)))))
    width, height = image_size
    (fx, _, cx), (_, fy, cy) = camera_matrix[:2].tolist()
    intrinsics = Intrinsics(width, height, fx, fy, cx, cy, tuple(float(d) for d in distortion))
    return IntrinsicsResult(intrinsics, "images", float(rms), tuple(per_view))


def intrinsics_from_realsense(entry: Mapping[str, Any]) -> Intrinsics:
    """Factory intrinsics as `--capture` stores them from `rs.video_stream_profile.get_intrinsics()`.

    Keys: width, height, fx, fy, ppx, ppy, model (librealsense's distortion name), coeffs (5 values).
    """
    coeffs = tuple(float(c) for c in entry.get("coeffs", (0.0,) * PLUMB_BOB_LENGTH))
    model = str(entry.get("model", "none")).lower()
    if model not in REALSENSE_PLUMB_BOB_MODELS and any(abs(c) > 0.0 for c in coeffs):
        raise ValueError(
            f"RealSense distortion model {model!r} with non-zero coefficients has no plumb_bob equivalent; "
            "calibrate the intrinsics from board images instead"
        )
    coeffs = (coeffs + (0.0,) * PLUMB_BOB_LENGTH)[:PLUMB_BOB_LENGTH]
    return Intrinsics(
        int(entry["width"]), int(entry["height"]),
        float(entry["fx"]), float(entry["fy"]), float(entry["ppx"]), float(entry["ppy"]),
        coeffs,
    )  # fmt: skip
