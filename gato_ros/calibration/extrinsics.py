"""The camera's pose in the world from images of the board lying still at a known world pose.

The corners are averaged over the images (the board and camera are still, so this only removes sensor
noise), then `solvePnP` gives the board in the camera's optical frame; chained with the board's world
pose that is the camera in the world, converted to MuJoCo's camera convention for the calibration file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from omegaconf import DictConfig

from gato_ros.calibration.board import Board, BoardObservation
from gato_ros.calibration.geometry import Pose, mujoco_camera_pose, pose_from_rvec_tvec
from gato_ros.calibration.intrinsics import Intrinsics


@dataclass(frozen=True)
class ExtrinsicsSettings:
    min_views: int = 1
    max_corner_spread_px: float = 1.0

    @classmethod
    def from_config(cls, extrinsics: DictConfig) -> ExtrinsicsSettings:
        return cls(int(extrinsics.min_views), float(extrinsics.max_corner_spread_px))


@dataclass(frozen=True)
class ExtrinsicsResult:
    camera_in_world: Pose  # MuJoCo camera convention: looks along -z, +y up
    board_in_camera: Pose  # OpenCV optical frame: +z forward, +y down
    rms_px: float  # reprojection RMS of the averaged corners
    views: int
    corner_spread_px: float  # largest distance of a corner from its mean over the views


def solve_extrinsics(
    views: Sequence[BoardObservation],
    board: Board,
    intrinsics: Intrinsics,
    board_in_world: Pose,
    settings: ExtrinsicsSettings | None = None,
) -> ExtrinsicsResult:
    """Camera pose in the world from views (as `board.detect` gives them) of the still board."""
    settings = settings or ExtrinsicsSettings()
    needed = max(settings.min_views, 1)
    if len(views) < needed:
        raise ValueError(f"extrinsics need at least {needed} view(s) of the board, got {len(views)}")
    seen: dict[int, list[np.ndarray]] = {}
    for view in views:
        for corner_id, point in zip(view.ids.tolist(), view.image_points, strict=True):
            seen.setdefault(corner_id, []).append(np.asarray(point, dtype=np.float64))
    ids = np.array(sorted(seen))
    mean_corners = np.array([np.mean(seen[i], axis=0) for i in ids])
    spread = max(
        float(np.linalg.norm(np.asarray(seen[i]) - m, axis=1).max())
        for i, m in zip(ids, mean_corners, strict=True)
    )
    if spread > settings.max_corner_spread_px:
        raise ValueError(
            f"board corners move by up to {spread:.2f} px between the extrinsics images "
            f"(limit {settings.max_corner_spread_px} px): the board or the camera moved"
        )
    object_points = board.corner_points()[ids].astype(np.float64)
    camera_matrix, distortion = intrinsics.camera_matrix, intrinsics.distortion_array
    # IPPE is the planar-target solver (it also rejects the mirrored solution); LM then polishes it.
    ok, rvec, tvec = cv2.solvePnP(
        object_points, mean_corners, camera_matrix, distortion, flags=cv2.SOLVEPNP_IPPE
    )
    if not ok:
        raise RuntimeError("solvePnP found no board pose")
    rvec, tvec = cv2.solvePnPRefineLM(object_points, mean_corners, camera_matrix, distortion, rvec, tvec)
    projected, _ = cv2.projectPoints(object_points, rvec, tvec, camera_matrix, distortion)
    rms = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - mean_corners) ** 2, axis=1))))
    board_in_camera = pose_from_rvec_tvec(rvec, tvec)
    camera_in_board = board_in_camera.inverse()
    if camera_in_board.position[2] <= 0:
        raise RuntimeError("the camera is behind the board's printed face: check the board's corner order")
    camera_in_world = mujoco_camera_pose(board_in_world @ camera_in_board)
    return ExtrinsicsResult(camera_in_world, board_in_camera, rms, len(views), spread)
