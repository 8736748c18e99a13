"""Rigid poses and the two camera conventions the calibration converts between.

OpenCV's optical frame looks along +z with +y down; a MuJoCo (and OpenGL) camera looks along -z with +y
up. The two differ by a half turn about the camera's x axis, so the same physical camera has rotation
`R_optical @ OPTICAL_TO_MUJOCO` in MuJoCo's convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

OPTICAL_TO_MUJOCO = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Pose:
    """A frame's pose in a parent frame: x_parent = rotation @ x_frame + position."""

    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3)

    @classmethod
    def from_wxyz(cls, position: Sequence[float], quaternion_wxyz: Sequence[float]) -> Pose:
        quaternion = np.asarray(quaternion_wxyz, dtype=np.float64)
        if not np.isfinite(quaternion).all() or np.linalg.norm(quaternion) < 1e-9:
            raise ValueError(f"invalid quaternion {list(quaternion_wxyz)}")
        rotation = Rotation.from_quat(quaternion, scalar_first=True).as_matrix()
        return cls(np.asarray(position, dtype=np.float64).reshape(3), rotation)

    @property
    def quaternion_wxyz(self) -> np.ndarray:
        """Unit quaternion (w, x, y, z) with w >= 0 (one of the two signs, so files diff cleanly)."""
        quaternion = Rotation.from_matrix(self.rotation).as_quat(scalar_first=True)
        return -quaternion if quaternion[0] < 0 else quaternion

    def inverse(self) -> Pose:
        rotation_t = self.rotation.T
        return Pose(-rotation_t @ self.position, rotation_t)

    def __matmul__(self, other: Pose) -> Pose:
        """Composition: (parent <- self) @ (self <- other) = parent <- other."""
        return Pose(self.rotation @ other.position + self.position, self.rotation @ other.rotation)

    def transform(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ self.rotation.T + self.position


def pose_from_rvec_tvec(rvec: np.ndarray, tvec: np.ndarray) -> Pose:
    """OpenCV's (rvec, tvec) of an object in the camera: x_camera = R(rvec) x_object + tvec."""
    rotation = Rotation.from_rotvec(np.asarray(rvec, dtype=np.float64).reshape(3)).as_matrix()
    return Pose(np.asarray(tvec, dtype=np.float64).reshape(3), rotation)


def mujoco_camera_pose(optical_camera_in_world: Pose) -> Pose:
    """The same camera's pose in MuJoCo's camera convention (looks along -z, +y up)."""
    return Pose(optical_camera_in_world.position, optical_camera_in_world.rotation @ OPTICAL_TO_MUJOCO)


def optical_camera_pose(mujoco_camera_in_world: Pose) -> Pose:
    """Inverse of `mujoco_camera_pose` (the half turn is its own inverse)."""
    return Pose(mujoco_camera_in_world.position, mujoco_camera_in_world.rotation @ OPTICAL_TO_MUJOCO)


def pose_change(before: Pose, after: Pose) -> tuple[float, float]:
    """(distance in m, rotation angle in degrees) between two poses of one frame."""
    distance = float(np.linalg.norm(after.position - before.position))
    relative = Rotation.from_matrix(before.rotation.T @ after.rotation)
    return distance, float(np.degrees(relative.magnitude()))


def fovy_deg(fy: float, height: int) -> float:
    """Vertical field of view of a pinhole with focal length fy (px) over `height` rows."""
    return math.degrees(2.0 * math.atan((height / 2.0) / fy))


def focal_from_fovy(fovy: float, height: int) -> float:
    return (height / 2.0) / math.tan(math.radians(fovy) / 2.0)
