"""The objects' poses from the cell's cameras: colour segmentation and silhouette fitting of known meshes.

Why: the state policies read `objects/pose`, which only the twin knows. A real cell knows which objects are
in its basket (the triplet), where its cameras are (calibration/), and the RGB objects are plain red, green
and blue: each object's pose is the one whose projected outline best explains its colour's pixels in every
camera. The twin and a real camera publish the same images, so one estimator serves both.

How: the outline of a posed convex hull in a camera is the convex hull of its projected vertices, so a pose
costs a few hundred microseconds to score. An object is found from scratch by trying each face it can rest on
at a grid of yaws above the point its colour's pixel centroids triangulate to, then refined in all six
degrees of freedom (Nelder-Mead on the pixel cost); afterwards it is tracked from its last pose and found
again from scratch when it no longer explains its pixels. Pixels of the other objects count as possible
occluders, so an object behind another is not pushed out of view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import mujoco
import numpy as np
from scipy.optimize import minimize
from scipy.spatial import ConvexHull, cKDTree
from scipy.spatial.transform import Rotation

from gato_ros.calibration.calibration_file import camera_intrinsics, camera_pose, load_cell_calibration
from gato_ros.calibration.geometry import Pose, optical_camera_pose
from gato_ros.calibration.intrinsics import Intrinsics
from gato_ros.control.kinematics import OBJECT_REFERENCE_WXYZ, canonical_quat, rotation_to_quat_wxyz
from gato_ros.gato.tokenizer import OBJECT_POSES_KEY
from gato_ros.perception.gripper import GripperSilhouette, covering
from gato_ros.twin.observation_keys import ARM_ANGLES_KEY, GRIPPER_ANGLE_KEY
from gato_ros.twin.scene import posed_vertices
from gato_ros.twin.shape import SHAPE_KEY, ObjectGeometry, objects_shape

COLOURS = ("red", "green", "blue")  # object order of `objects/pose`: red, green, blue
SUBPIXEL_BITS = 3  # outlines are filled with 1/8-pixel vertex precision, so the cost moves smoothly


@dataclass(frozen=True)
class PerceptionSettings:
    """`perception.*` of the config (gato_ros/config/perception/default.yaml)."""

    floor_height: float
    min_value: int
    min_margin: int
    min_pixels: int
    occluded_weight: float
    yaw_candidates: int
    refine_candidates: int
    distinct_angle: float
    screen_candidates: int
    screen_evaluations: int
    search_evaluations: int
    track_evaluations: int
    keep_tolerance: float
    lost_cost: float
    position_step: float
    rotation_step: float

    @classmethod
    def from_config(cls, perception: Any) -> PerceptionSettings:
        return cls(
            floor_height=float(perception.floor_height),
            min_value=int(perception.segmentation.min_value),
            min_margin=int(perception.segmentation.min_margin),
            min_pixels=int(perception.segmentation.min_pixels),
            occluded_weight=float(perception.fit.occluded_weight),
            yaw_candidates=int(perception.fit.yaw_candidates),
            refine_candidates=int(perception.fit.refine_candidates),
            distinct_angle=float(perception.fit.distinct_angle),
            screen_candidates=int(perception.fit.screen_candidates),
            screen_evaluations=int(perception.fit.screen_evaluations),
            search_evaluations=int(perception.fit.search_evaluations),
            track_evaluations=int(perception.fit.track_evaluations),
            keep_tolerance=float(perception.fit.keep_tolerance),
            lost_cost=float(perception.fit.lost_cost),
            position_step=float(perception.fit.position_step),
            rotation_step=float(perception.fit.rotation_step),
        )


@dataclass(frozen=True)
class ProjectiveCamera:
    """A calibrated camera: world points to pixels (OpenCV convention, pixel centres at integers)."""

    name: str
    intrinsics: Intrinsics
    world_to_optical: Pose

    @classmethod
    def from_calibration(
        cls, calibration: Mapping[str, Any], name: str, width: int, height: int
    ) -> ProjectiveCamera:
        optical_in_world = optical_camera_pose(camera_pose(calibration["cameras"][name]))
        return cls(name, camera_intrinsics(calibration, name, width, height), optical_in_world.inverse())

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.intrinsics.distortion_array != 0.0))

    def project(
        self, points: np.ndarray, rotation: np.ndarray | None = None, position: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, 2) pixel coordinates (u right, v down) of (N, 3) points in front of the camera: world points,
        or body points of a body at (`rotation`, `position`) in the world (one matrix product, no copies)."""
        to_optical = self.world_to_optical
        if rotation is None:
            local = points @ to_optical.rotation.T + to_optical.position
        else:
            body = to_optical.rotation @ rotation
            local = points @ body.T + (to_optical.rotation @ position + to_optical.position)
        depth = np.maximum(local[:, 2:3], 1e-4)
        normalised = local[:, :2] / depth
        if self.distorted:
            pixels, _ = cv2.projectPoints(
                np.column_stack([normalised, np.ones(len(normalised))]), np.zeros(3), np.zeros(3),
                self.intrinsics.camera_matrix, self.intrinsics.distortion_array,
            )  # fmt: skip
            return pixels.reshape(-1, 2)
        k = self.intrinsics
        return np.column_stack([k.fx * normalised[:, 0] + k.cx, k.fy * normalised[:, 1] + k.cy])

    def ray(self, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The world ray (origin, unit direction) through a pixel."""
        k = self.intrinsics
        if self.distorted:
            normalised = cv2.undistortPoints(
                np.asarray(pixel, dtype=np.float64).reshape(1, 1, 2), k.camera_matrix, k.distortion_array
            ).reshape(2)
        else:
            normalised = np.array([(pixel[0] - k.cx) / k.fx, (pixel[1] - k.cy) / k.fy])
        optical_in_world = self.world_to_optical.inverse()
        direction = optical_in_world.rotation @ np.array([normalised[0], normalised[1], 1.0])
        return optical_in_world.position, direction / np.linalg.norm(direction)

    def outline(
        self, points: np.ndarray, rotation: np.ndarray | None = None, position: np.ndarray | None = None
    ) -> np.ndarray:
        """(H, W) uint8 mask of the convex outline of points (`project`'s): a convex body's silhouette."""
        mask = np.zeros((self.intrinsics.height, self.intrinsics.width), dtype=np.uint8)
        return fill_convex_hull(mask, self.project(points, rotation, position), 1)


def fill_convex_hull(image: np.ndarray, pixels: np.ndarray, value: float) -> np.ndarray:
    """The convex hull of (N, 2) pixel coordinates filled into `image` (in place, returned) with `value`."""
    fixed = np.round(pixels * (1 << SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillConvexPoly(image, cv2.convexHull(fixed), value, lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return image


def colour_masks(image: np.ndarray, settings: PerceptionSettings) -> np.ndarray:
    """(3, H, W) bool: the pixels whose red, green or blue channel dominates the other two (the objects)."""
    pixels = np.asarray(image, dtype=np.int16)
    masks = []
    for channel in range(3):
        others = np.delete(pixels, channel, axis=2).max(axis=2)
        value = pixels[..., channel]
        masks.append((value >= settings.min_value) & (value - others >= settings.min_margin))
    return np.stack(masks)


def triangulate(rays: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The point closest (least squares) to two or more world rays."""
    a, b = np.zeros((3, 3)), np.zeros(3)
    for origin, direction in rays:
        across = np.eye(3) - np.outer(direction, direction)
        a += across
        b += across @ origin
    return np.linalg.solve(a, b)


def resting_rotations(geometry: ObjectGeometry, tolerance: float = 1e-4) -> list[np.ndarray]:
    """Rotations (3, 3) that put each face the object can rest on (its centre of mass above the face) down,
    at yaw 0: where a search from scratch starts."""
    hull = ConvexHull(geometry.vertices)
    normals: list[np.ndarray] = []
    rotations = []
    for plane in hull.equations:
        normal, offset = plane[:3], plane[3]
        if any(float(normal @ seen) > 1.0 - 1e-6 for seen in normals):
            continue
        normals.append(normal)
        on_face = geometry.vertices[np.abs(geometry.vertices @ normal + offset) < tolerance]
        if len(on_face) < 3:
            continue
        # Face coordinates: two axes across the face; is the centre of mass's foot inside it?
        axis_u = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis_u /= np.linalg.norm(axis_u)
        axis_v = np.cross(normal, axis_u)
        face = np.column_stack([on_face @ axis_u, on_face @ axis_v])
        foot = np.array([geometry.centre_of_mass @ axis_u, geometry.centre_of_mass @ axis_v])
        try:
            face_hull = ConvexHull(face)
        except Exception:  # a degenerate (collinear) face cannot hold the object
            continue
        if np.all(face_hull.equations[:, :2] @ foot + face_hull.equations[:, 2] <= 0.0):
            rotation, _ = Rotation.align_vectors([[0.0, 0.0, -1.0]], [normal])
            rotations.append(rotation.as_matrix())
    return rotations


@dataclass
class ObjectTrack:
    """What the estimator knows of one object: its last pose (None until found) and how well it fitted."""

    pose: np.ndarray | None = None  # (7,) x, y, z, qw, qx, qy, qz
    cost: float = float("inf")
    searches: int = 0


@dataclass
class _Views:
    """One object's pixels in every camera: its own (`mask`) and those where its outline costs nothing
    extra (`free`: not its colour and not an occluder) as uint8 for fast counting."""

    mask: list[np.ndarray]
    free: list[np.ndarray]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    centroids: list[tuple[int, np.ndarray]] = field(default_factory=list)


class ObjectPoseEstimator:
    """Poses of the three RGB objects (red, green, blue) from colour images of calibrated cameras."""

    def __init__(
        self,
        cameras: Sequence[ProjectiveCamera],
        geometries: Sequence[ObjectGeometry],
        settings: PerceptionSettings,
        gripper: GripperSilhouette | None = None,
    ) -> None:
        if len(geometries) != len(COLOURS):
            raise ValueError(f"expected one geometry per colour {COLOURS}, got {len(geometries)}")
        self.cameras = list(cameras)
        self.geometries = list(geometries)
        self.settings = settings
        self._rest = [resting_rotations(g) for g in self.geometries]
        self._centres = [0.5 * (g.vertices.min(axis=0) + g.vertices.max(axis=0)) for g in self.geometries]
        self.tracks = [ObjectTrack() for _ in COLOURS]
        self.gripper = gripper

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        geometries: Sequence[ObjectGeometry],
        width: int | None = None,
        height: int | None = None,
    ) -> ObjectPoseEstimator:
        """From `cameras.*` (calibration file, policy cameras, image size) and `perception.*`."""
        calibration = load_cell_calibration(cfg.cameras)
        width = int(cfg.cameras.width if width is None else width)
        height = int(cfg.cameras.height if height is None else height)
        cameras = [
            ProjectiveCamera.from_calibration(calibration, str(name), width, height)
            for name in cfg.cameras.policy_cameras
        ]
        gripper = (
            GripperSilhouette.from_config(cfg, cameras) if bool(cfg.perception.gripper_occludes) else None
        )
        return cls(cameras, geometries, PerceptionSettings.from_config(cfg.perception), gripper)

    def reset(self) -> None:
        """Forget every object (a new episode: search from scratch)."""
        self.tracks = [ObjectTrack() for _ in COLOURS]

    # -- one frame -----------------------------------------------------------------------------------------
    def update(
        self, images: Sequence[np.ndarray], posture: tuple[np.ndarray, float] | None = None
    ) -> np.ndarray | None:
        """(3, 7) poses after one set of images (one per camera, in `cameras` order), or None while some
        object has never been seen. An object out of sight keeps its last pose. `posture`: the arm's joint
        angles (7,) and the finger driver's angle (rad) when the frames were taken; with a gripper model,
        the parts of the gripper nearer a camera than an object's last position may hide that object there
        (counted like the other objects' pixels)."""
        if len(images) != len(self.cameras):
            raise ValueError(f"expected {len(self.cameras)} images, got {len(images)}")
        masks = [colour_masks(image, self.settings) for image in images]
        gripper = None
        if self.gripper is not None and posture is not None:
            gripper = self.gripper.depths(np.asarray(posture[0]), float(posture[1]))
        for index in range(len(COLOURS)):
            hidden = None
            if gripper is not None:
                track = self.tracks[index]
                point = None if track.pose is None else track.pose[:3]
                hidden = [
                    covering(depths, camera, point)
                    for depths, camera in zip(gripper, self.cameras, strict=True)
                ]
            views = self._views(index, masks, hidden)
            if views.count < self.settings.min_pixels:
                continue
            self._fit(index, views)
        if any(track.pose is None for track in self.tracks):
            return None
        return np.stack([track.pose for track in self.tracks])

    def _views(
        self, index: int, masks: Sequence[np.ndarray], hidden: Sequence[np.ndarray] | None = None
    ) -> _Views:
        views = _Views([], [])
        for camera_index, mask in enumerate(masks):
            own = mask[index]
            views.mask.append(own.astype(np.uint8))
            occluders = np.delete(mask, index, axis=0).any(axis=0)
            if hidden is not None:
                occluders |= hidden[camera_index]
            views.free.append((~own & ~occluders).astype(np.uint8))
            count = int(own.sum())
            views.counts.append(count)
            views.count += count
            if count >= self.settings.min_pixels:
                rows, cols = np.nonzero(own)
                views.centroids.append((camera_index, np.array([cols.mean(), rows.mean()])))
        return views

    def cost(self, index: int, views: _Views, pose: np.ndarray) -> float:
        """Pixels of the object's colour outside its outline, plus (weighted) outline pixels on the
        background, over the colour's pixel count: 0 is a perfect fit."""
        return self._cost(index, views, pose[:3], _rotation(pose))

    def _cost(self, index: int, views: _Views, position: np.ndarray, rotation: np.ndarray) -> float:
        vertices = self.geometries[index].vertices
        missed, extra = 0, 0
        for camera, mask, free, count in zip(self.cameras, views.mask, views.free, views.counts, strict=True):
            outline = camera.outline(vertices, rotation, position)
            missed += count - int(np.count_nonzero(outline & mask))
            extra += int(np.count_nonzero(outline & free))
        return (missed + self.settings.occluded_weight * extra) / max(views.count, 1)

    def _fit(self, index: int, views: _Views) -> None:
        """Keep the last pose while it explains the pixels as well as before, else refine it from there, and
        search from scratch when that fails (or the object was never found)."""
        track = self.tracks[index]
        s = self.settings
        if track.pose is not None:
            cost = self.cost(index, views, track.pose)
            if cost <= track.cost + s.keep_tolerance:  # nothing moved (or only within the noise)
                track.cost = min(track.cost, cost)
                return
            pose, cost = self._refine(index, views, track.pose, s.track_evaluations)
            if cost < s.lost_cost:
                track.pose, track.cost = pose, cost
                return
        pose, cost = self._search(index, views)
        track.searches += 1
        if track.pose is None or cost < self.cost(index, views, track.pose):
            track.pose, track.cost = pose, cost

    def _search(self, index: int, views: _Views) -> tuple[np.ndarray, float]:
        """From scratch: each resting face at a grid of yaws above the colour's triangulated centroid; the
        best distinct ones refined briefly in all six degrees of freedom (a screen), the best few of those
        to convergence."""
        s = self.settings
        centre = self._centroid_point(index, views)
        vertices = self.geometries[index].vertices
        candidates = []
        for rest in self._rest[index]:
            for yaw in np.linspace(0.0, 2.0 * np.pi, s.yaw_candidates, endpoint=False):
                rotation = Rotation.from_euler("z", yaw).as_matrix() @ rest
                offset = rotation @ self._centres[index]
                on_floor = s.floor_height - (vertices @ rotation[2]).min()
                position = np.array([centre[0] - offset[0], centre[1] - offset[1], on_floor])
                candidates.append((self._cost(index, views, position, rotation), position, rotation))
        candidates.sort(key=lambda item: item[0])
        best_cost, best_pose = candidates[0][0], _pose(candidates[0][1], candidates[0][2])
        starts = distinct_starts(candidates, s.screen_candidates, s.distinct_angle)
        screened = [self._refine(index, views, _pose(p, r), s.screen_evaluations) for _, p, r in starts]
        screened.sort(key=lambda item: item[1])
        for pose, _ in screened[: s.refine_candidates]:
            refined, cost = self._refine(index, views, pose, s.search_evaluations)
            if cost < best_cost:
                best_pose, best_cost = refined, cost
        return best_pose, best_cost

    def _centroid_point(self, index: int, views: _Views) -> np.ndarray:
        """Where the colour's pixel centroids point: their rays' closest point, or (one camera) the ray's
        crossing of the plane half an object above the floor."""
        rays = [self.cameras[camera].ray(centroid) for camera, centroid in views.centroids]
        if len(rays) >= 2:
            return triangulate(rays)
        origin, direction = rays[0]
        extent = self.geometries[index].vertices.max(axis=0) - self.geometries[index].vertices.min(axis=0)
        height = self.settings.floor_height + 0.5 * float(np.median(extent))
        return origin + direction * (height - origin[2]) / min(direction[2], -1e-6)

    def _refine(
        self, index: int, views: _Views, start: np.ndarray, evaluations: int
    ) -> tuple[np.ndarray, float]:
        """Nelder-Mead over a position offset (m) and a world-frame rotation vector (rad) from `start`."""
        s = self.settings
        base, origin = _rotation(start), start[:3]

        def cost_of(x: np.ndarray) -> float:
            return self._cost(index, views, origin + x[:3], cv2.Rodrigues(x[3:])[0] @ base)

        steps = np.array([s.position_step] * 3 + [s.rotation_step] * 3)
        simplex = np.vstack([np.zeros(6), np.diag(steps)])
        result = minimize(
            cost_of, np.zeros(6), method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxfev": evaluations, "xatol": 1e-4, "fatol": 1e-4},
        )  # fmt: skip
        return _pose(origin + result.x[:3], cv2.Rodrigues(result.x[3:])[0] @ base), float(result.fun)


def mesh_distance(vertices: np.ndarray, pose_a: np.ndarray, pose_b: np.ndarray) -> float:
    """Mean symmetric closest-vertex distance (m) of one object's mesh at two poses (x, y, z, qw, qx, qy, qz):
    0 for the same pose or one that only a symmetry of the object tells apart (the cameras cannot either).
    The accuracy measure of the benchmarks and tests."""
    a = posed_vertices(vertices, pose_a[:3], pose_a[3:])
    b = posed_vertices(vertices, pose_b[:3], pose_b[3:])
    return 0.5 * float(cKDTree(a).query(b)[0].mean() + cKDTree(b).query(a)[0].mean())


def distinct_starts(
    candidates: Sequence[tuple[float, np.ndarray, np.ndarray]], count: int, min_angle: float
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """The best `count` of (cost, position, rotation) candidates sorted by cost, skipping any within
    `min_angle` (rad) of rotation of one already taken.

    Why: the best few by cost were mostly one resting face at neighbouring yaws, so when the object lay on
    another face (or tilted off a face, leaning on a neighbour) no refinement started near it: the fit took a
    wrong face whose outline came close, and red's planned grasp turned up to 90 degrees from the true one."""
    taken: list[tuple[float, np.ndarray, np.ndarray]] = []
    for candidate in candidates:
        rotation = candidate[2]
        # the angle between two rotations: arccos((trace(A^T B) - 1) / 2)
        if all(
            np.arccos(np.clip((np.trace(other[2].T @ rotation) - 1.0) / 2.0, -1.0, 1.0)) >= min_angle
            for other in taken
        ):
            taken.append(candidate)
            if len(taken) == count:
                break
    return taken


def _pose(position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(7,) pose in the objects' convention of `objects/pose` (canonical quaternion, w >= 0)."""
    quaternion = canonical_quat(rotation_to_quat_wxyz(rotation), OBJECT_REFERENCE_WXYZ)
    return np.concatenate([np.asarray(position, dtype=np.float64), quaternion])


def _rotation(pose: np.ndarray) -> np.ndarray:
    """The (3, 3) rotation of a (7,) pose (quaternion w, x, y, z; normalised first)."""
    quaternion = np.asarray(pose[3:], dtype=np.float64)
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, quaternion / np.linalg.norm(quaternion))
    return rotation.reshape(3, 3)


class FittedPoseObservation:
    """A lock-step observation (the twin's) the way the policy node assembles it with
    ``policy.object_pose_source=cameras``: ``objects/pose``, and ``objects/shape`` where present, replaced
    by poses fitted to the observation's own policy-camera frames. Shared by `gato-ros check` and
    `gato-ros collect`, so a checkpoint is checked, and corrective data is recorded, on what a real cell's
    policy reads rather than on the twin's exact poses."""

    def __init__(self, cfg: Any, shape_version: int, keep_pixels: bool) -> None:
        self.cfg = cfg
        self.shape_version = int(shape_version)
        self.keep_pixels = bool(keep_pixels)
        self.cameras = [str(name) for name in cfg.cameras.policy_cameras]
        self.estimator: ObjectPoseEstimator | None = None
        self._key: tuple[Any, ...] = ()

    def reset(self) -> None:
        """A new episode: every object is found from scratch."""
        if self.estimator is not None:
            self.estimator.reset()

    def __call__(
        self, observation: Mapping[str, np.ndarray], geometries: Sequence[ObjectGeometry]
    ) -> dict[str, np.ndarray] | None:
        """The observation with fitted poses (pixels dropped unless `keep_pixels`), or None while some
        object has not been seen yet (where the policy node holds the arm)."""
        frames = [observation[f"{camera}/pixels"] for camera in self.cameras]
        height, width = frames[0].shape[:2]
        key = (tuple(id(g) for g in geometries), width, height)
        if self.estimator is None or key != self._key:
            self.estimator = ObjectPoseEstimator.from_config(self.cfg, geometries, width=width, height=height)
            self._key = key
        poses = self.estimator.update(frames, self._posture(observation))
        if poses is None:
            return None
        result = dict(observation)
        result[OBJECT_POSES_KEY] = poses.reshape(-1).astype(np.float32)
        if SHAPE_KEY in result:
            result[SHAPE_KEY] = objects_shape(geometries, poses, self.shape_version)
        if not self.keep_pixels:
            result = {key: value for key, value in result.items() if not key.endswith("/pixels")}
        return result

    def _posture(self, observation: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float] | None:
        """The arm's joint angles and the finger driver's angle (from 0..255 units to rad), for the gripper's
        silhouette."""
        if ARM_ANGLES_KEY not in observation or GRIPPER_ANGLE_KEY not in observation:
            return None
        units = float(np.asarray(observation[GRIPPER_ANGLE_KEY]).reshape(-1)[0])
        low, high = (float(v) for v in self.cfg.robot.gripper.driver_range)
        fraction = float(np.clip(units / float(self.cfg.robot.gripper.command_range[1]), 0.0, 1.0))
        return np.asarray(observation[ARM_ANGLES_KEY]), low + fraction * (high - low)
