"""Where the gripper hides the objects: its silhouette in each camera from the arm's joint angles.

Why: while red is in the fingers, the fingers hide part of it. The pose fit reads every pixel it cannot see
as missing object, pulls red's outline off the fingers and gets red's pose wrong by millimetres exactly when
the policy lowers and releases it. The gripper is known: the arm model the twin and `ArmKinematics` share
(Sawyer + FTS300 + 2F-85), posed by the joint states every cell publishes. Its parts' outlines are pixels
where an object may be hidden, like the pixels of another object.

How: each visual part of the gripper is a convex hull of its mesh; the arm's seven joint angles and the
driver angle of the fingers pose them by forward kinematics (the 2F-85's linkage keeps its pads parallel:
the spring link turns with the driver and the follower back by as much), and each hull's outline is filled
in every camera, as the objects' are. Only the parts nearer a camera than an object may hide it: a finger
behind red leaves red visible, and counting it let red's fit turn into the fingers. On an object the
2F-85's fingers can also adapt (the linkage folds); the driver angle alone cannot tell, and the silhouette
then misplaces a finger by up to ~2 cm. Off by default (`perception.gripper_occludes`) until measured on
every object group again: it fits red better once grasped, and its first versions came with stale-action
holds through ROS (policies/default's card, "The gripper's silhouette").
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mujoco
import numpy as np
from scipy.spatial import ConvexHull

from gato_ros.control.arm_model import ARM_JOINTS, GRIPPER_PREFIX, build_arm_spec

if TYPE_CHECKING:
    from gato_ros.perception.object_poses import ProjectiveCamera

# The 2F-85's joints per side and how far each turns per radian of its driver (the linkage, closed in the
# twin by equality constraints, keeps the pads parallel: spring link with the driver, follower back).
FINGER_LINKAGE = {"driver_joint": 1.0, "coupler_joint": 0.0, "spring_link_joint": 1.0, "follower_joint": -1.0}
SIDES = ("left", "right")
# Hull vertices snapped to this grid (m) before the hull is taken again: 5-10 times fewer vertices to project
# (24-129 per part), the outline within about a millimetre, a fraction of a pixel at the cameras' distance.
HULL_GRID = 0.002


@dataclass(frozen=True)
class _GripperParts:
    """The arm model and the gripper parts' hulls: the same for every silhouette, built once per process."""

    model: mujoco.MjModel
    arm_qpos: np.ndarray
    finger_qpos: np.ndarray
    finger_ratio: np.ndarray
    geoms: tuple[int, ...]
    hulls: tuple[np.ndarray, ...]  # each part's hull vertices in its geom frame
    vertices: np.ndarray  # all parts' hull vertices in one array (posed and projected at once) ...
    part_of_vertex: np.ndarray
    slices: tuple[slice, ...]  # ... each part a slice of it


@functools.cache
def _gripper_parts() -> _GripperParts:
    """Compiling the arm model takes ~0.1 s: an estimator rebuilt for each episode's objects must not pay it
    at the episode's first frame."""
    model = build_arm_spec().compile()
    linkage = [
        (int(model.joint(f"{GRIPPER_PREFIX}{side}_{joint}").qposadr[0]), ratio)
        for side in SIDES
        for joint, ratio in FINGER_LINKAGE.items()
    ]
    geoms, hulls = [], []
    for geom in range(model.ngeom):
        body = model.body(model.geom_bodyid[geom]).name
        if not body.startswith(GRIPPER_PREFIX) or model.geom_type[geom] != mujoco.mjtGeom.mjGEOM_MESH:
            continue
        mesh = int(model.geom_dataid[geom])
        start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        vertices = np.asarray(model.mesh_vert[start : start + count], dtype=np.float64)
        snapped = np.unique(np.round(vertices[ConvexHull(vertices).vertices] / HULL_GRID) * HULL_GRID, axis=0)
        geoms.append(geom)
        hulls.append(snapped[ConvexHull(snapped).vertices])
    bounds = np.cumsum([0, *(len(h) for h in hulls)])
    return _GripperParts(
        model=model,
        arm_qpos=np.array([model.joint(name).qposadr[0] for name in ARM_JOINTS]),
        finger_qpos=np.array([index for index, _ in linkage]),
        finger_ratio=np.array([ratio for _, ratio in linkage]),
        geoms=tuple(geoms),
        hulls=tuple(hulls),
        vertices=np.vstack(hulls),
        part_of_vertex=np.repeat(np.arange(len(hulls)), [len(h) for h in hulls]),
        slices=tuple(slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)),
    )


class GripperSilhouette:
    """The gripper's outline in each camera at a posture of the arm and fingers."""

    def __init__(self, cameras: Sequence[ProjectiveCamera]) -> None:
        self.cameras = list(cameras)
        self._parts = _gripper_parts()
        self.model = self._parts.model
        self.geoms = list(self._parts.geoms)
        self._data = mujoco.MjData(self.model)

    @classmethod
    def from_config(cls, cfg: Any, cameras: Sequence[ProjectiveCamera]) -> GripperSilhouette:
        names = tuple(cfg.robot.joint_names)
        if names != ARM_JOINTS:
            raise ValueError(f"robot.joint_names {names} do not match the Sawyer model's {ARM_JOINTS}")
        return cls(cameras)

    def pose(self, arm_angles: np.ndarray, driver_angle: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each part's world (rotation, position) at the arm's joint angles (7,) and the fingers' driver
        angle (rad)."""
        data, parts = self._data, self._parts
        data.qpos[parts.arm_qpos] = np.asarray(arm_angles, dtype=np.float64).reshape(-1)[: len(ARM_JOINTS)]
        data.qpos[parts.finger_qpos] = parts.finger_ratio * float(driver_angle)
        mujoco.mj_kinematics(self.model, data)
        return [(data.geom_xmat[g].reshape(3, 3).copy(), data.geom_xpos[g].copy()) for g in self.geoms]

    def depths(self, arm_angles: np.ndarray, driver_angle: float) -> list[np.ndarray]:
        """Per camera, (H, W) float32: the depth (m, along the optical axis) of the centre of the nearest
        gripper part covering each pixel, inf where none does (the parts drawn far to near)."""
        from gato_ros.perception.object_poses import fill_convex_hull

        posed, parts = self.pose(arm_angles, driver_angle), self._parts
        rotations = np.stack([rotation for rotation, _ in posed])[parts.part_of_vertex]
        positions = np.stack([position for _, position in posed])[parts.part_of_vertex]
        world = np.einsum("nij,nj->ni", rotations, parts.vertices) + positions
        images = []
        for camera in self.cameras:
            to_optical = camera.world_to_optical
            depth = world @ to_optical.rotation[2] + to_optical.position[2]
            pixels = camera.project(world)
            # a part (partly) behind the camera has no outline to fill
            drawn = [(float(depth[part].mean()), part) for part in parts.slices if np.all(depth[part] > 1e-3)]
            image = np.full((camera.intrinsics.height, camera.intrinsics.width), np.inf, dtype=np.float32)
            drawn.sort(key=lambda item: -item[0])  # far to near: the nearest part's depth stays
            for part_depth, part in drawn:
                fill_convex_hull(image, pixels[part], part_depth)
            images.append(image)
        return images

    def masks(
        self, arm_angles: np.ndarray, driver_angle: float, in_front_of: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """(H, W) bool mask per camera of the pixels the gripper covers; with a world point `in_front_of`,
        only of the parts nearer the camera than that point."""
        return [
            covering(image, camera, in_front_of)
            for image, camera in zip(self.depths(arm_angles, driver_angle), self.cameras, strict=True)
        ]


def covering(
    depths: np.ndarray, camera: ProjectiveCamera, in_front_of: np.ndarray | None = None
) -> np.ndarray:
    """One camera's pixels covered by a gripper part (`GripperSilhouette.depths`' image), only by parts nearer
    the camera than a world point when one is given: a finger behind an object cannot hide it."""
    if in_front_of is None:
        return np.isfinite(depths)
    to_optical = camera.world_to_optical
    return depths < float((to_optical.rotation @ np.asarray(in_front_of) + to_optical.position)[2])
