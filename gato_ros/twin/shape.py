"""`objects/shape`: what each object's geometry means for a grasp and a stack, in its current pose.

Why: the scripted expert's grasp yaw, grasp point and heights come from the objects' hulls (the narrowest
section of red, blue's top face), so a state policy that sees poses only cannot tell the right action
on a new shape (policies/state/README.md, "Object shape"). Body-frame extents did not help a regressor:
it has to rotate them by the pose itself. These features are the geometry already turned into the world
frame, per object, relative to its pose position (metres unless noted):

    bottom, top          lowest and highest point (z)
    cos 2a, sin 2a       a = the grasp's closing direction across the section at grasp height (pi-periodic)
    width                the section's width along it
    centre x, y          middle of that section along and across that direction
    normal x, y, z       unit outward normal of the most upward-facing hull face (blue's top: tilted or not)

The closing direction has three versions (`twin.shape_version`; a checkpoint without the key read version 1):
1, the narrowest width; 2, the expert's criterion: width plus `TAPER_WEIGHT` times the taper (how
fast the width changes `TAPER_BAND` above and below), wider than `MAX_GRASP_WIDTH` only as a last resort.
Squeezed, tapered sides push an object out of the fingers, so the expert grasps a narrow prism (triplet 1's
red r3) across its vertical faces, 90 degrees from its narrowest width in 93 % of triplet-1 episodes: under
version 1 every student turned to the wrong yaw there (10 % success; policies/default/README.md).
3 (current): as 2, and red's row is the expert's whole grasp plan (`gato_ros.twin.expert.plan_grasp`): its
closing direction and centre also weigh red's centre of mass and keep the open fingers off green and blue,
at the expert's grasp height. Under version 2 a student aligned precisely with a direction up to 90 degrees
(and a centre some millimetres) from where the expert grasps, and the expert's labels said "rise, come again".

A real cell has them too when it knows its objects: the RGB objects are a fixed set of meshes, so a pose
estimator that names the object (the operator loads a known triplet) gives the same numbers from mesh and
pose. The twin publishes them beside the poses (`twin.shape_observations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import Any

import mujoco
import numpy as np

from gato_ros.gato.tokenizer import OBJECT_SHAPES_KEY, SHAPE_FEATURES_PER_OBJECT
from gato_ros.twin.assets import mesh_path
from gato_ros.twin.expert import RED, Scene, hull_edges, hull_facets, hull_slice, plan_grasp
from gato_ros.twin.scene import body_vertices, posed_vertices

# The key and row layout are the tokenizer's too (privileged_frame pinch_yaw turns the direction columns).
SHAPE_KEY = OBJECT_SHAPES_KEY
FEATURES_PER_OBJECT = SHAPE_FEATURES_PER_OBJECT
SECTION_ANGLES = 36  # candidate width directions over [0, pi): 5 degree steps
# The section sits this fraction of the height below the top, at most this far (m): where the expert's
# fingers close (twin.expert.grasp_depth / max_grasp_depth). Constants, not read from the config: they define
# the features, so a trained policy must see the same numbers whatever the expert is tuned to later.
GRASP_DEPTH = 0.5
MAX_GRASP_DEPTH = 0.035
# Version 2's grasp criterion: the expert's defaults (twin.expert.taper_band, taper_weight, max_grasp_width),
# constants for the same reason.
TAPER_BAND = 0.008
TAPER_WEIGHT = 0.05
MAX_GRASP_WIDTH = 0.075
SHAPE_VERSION = 3  # what the twin, the recorder and scripts/add_shape_features.py write by default
SHAPE_VERSIONS = (1, 2, 3)
# Version 3's grasp plan: the expert's defaults (twin.expert.*) and its grasp height, constants as above.
MIN_GRASP_HEIGHT = 0.02  # twin.expert.min_grasp_height_above_bottom (m)
GRASP_PLAN = SimpleNamespace(
    taper_band=TAPER_BAND,
    taper_weight=TAPER_WEIGHT,
    max_grasp_width=MAX_GRASP_WIDTH,
    pad_margin=0.012,
    com_offset_weight=1.0,
    grasp_offsets=5,
    open_finger_half_span=0.05,
    finger_clearance=0.012,
)


def shape_version(cfg: Any) -> int:
    """The features' version a config asks for (`twin.shape_version`): a checkpoint's config written before
    the key existed read version 1."""
    twin = cfg.get("twin") or {}
    version = int(twin.get("shape_version", 1))
    if version not in SHAPE_VERSIONS:
        raise ValueError(f"twin.shape_version must be one of {SHAPE_VERSIONS}, got {version}")
    return version


def shape_metadata(version: int) -> dict[str, int]:
    """What an episode that records `objects/shape` says of it (`gato-ros train` checks it)."""
    return {"shape_version": int(version)}


def episode_shape_version(metadata: dict[str, Any]) -> int:
    """The version of an episode's recorded `objects/shape` (episodes from before the key: 1)."""
    return int(metadata.get("shape_version", 1))


@dataclass(frozen=True)
class ObjectGeometry:
    """One object's convex hull in its body frame: vertices (N, 3), hull edges (E, 2), hull planes (F, 4),
    and its centre of mass (3,) (uniform density, as the twin's objects)."""

    vertices: np.ndarray
    edges: np.ndarray
    facets: np.ndarray
    centre_of_mass: np.ndarray

    @classmethod
    def from_vertices(cls, vertices: np.ndarray, centre_of_mass: np.ndarray | None = None) -> ObjectGeometry:
        points = np.asarray(vertices, dtype=float)
        com = points.mean(axis=0) if centre_of_mass is None else np.asarray(centre_of_mass, dtype=float)
        return cls(points, hull_edges(points), hull_facets(points), com)


@cache
def object_geometry(object_id: str) -> ObjectGeometry:
    """The hull of an RGB object as the twin places it in a body at the origin (the same compiled mesh)."""
    spec = mujoco.MjSpec()
    spec.add_mesh(name="mesh", file=str(mesh_path(object_id)))
    body = spec.worldbody.add_body(name="object", pos=[0.0, 0.0, 0.0])
    body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname="mesh")
    model = spec.compile()
    body_id = model.body("object").id
    return ObjectGeometry.from_vertices(body_vertices(model, body_id), model.body_ipos[body_id].copy())


_ANGLES = np.linspace(0.0, np.pi, SECTION_ANGLES, endpoint=False)
_DIRECTIONS = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)


def _section_along(section: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A section's (K, 2) points projected on each candidate direction (K, SECTION_ANGLES), and its widths
    along them (SECTION_ANGLES,)."""
    along = section @ _DIRECTIONS.T
    return along, along.max(axis=0) - along.min(axis=0)


def _section_widths(world: np.ndarray, edges: np.ndarray, z: float) -> np.ndarray:
    """(SECTION_ANGLES,) widths of the hull's section at height z along each candidate direction."""
    section = hull_slice(world, edges, z)
    if len(section) < 2:
        return np.zeros(SECTION_ANGLES)
    return _section_along(section)[1]


def _grasp_scores(world: np.ndarray, edges: np.ndarray, z: float, widths: np.ndarray) -> np.ndarray:
    """Version 2: per direction the width plus TAPER_WEIGHT x taper (the width's change per metre within
    TAPER_BAND above or below), plus 1 where wider than the open fingers (`ScriptedExpert._grasp_plan`)."""
    bottom, top = float(world[:, 2].min()), float(world[:, 2].max())
    band = min(TAPER_BAND, 0.45 * (top - bottom))
    middle = float(np.clip(z, bottom + band, top - band))
    at = _section_widths(world, edges, middle)
    above, below = _section_widths(world, edges, middle + band), _section_widths(world, edges, middle - band)
    taper = np.maximum(np.abs(above - at), np.abs(at - below)) / max(band, 1e-6)
    return widths + TAPER_WEIGHT * taper + (widths > MAX_GRASP_WIDTH)


def shape_features(geometry: ObjectGeometry, pose: np.ndarray, version: int = SHAPE_VERSION) -> np.ndarray:
    """(FEATURES_PER_OBJECT,) features of one object at a pose (x, y, z, qw, qx, qy, qz); see the module."""
    pose = np.asarray(pose, dtype=float)
    position = pose[:3]
    world = posed_vertices(geometry.vertices, position, pose[3:])
    bottom, top = float(world[:, 2].min()), float(world[:, 2].max())
    height = top - bottom
    z = max(top - min(GRASP_DEPTH * height, MAX_GRASP_DEPTH), bottom + 0.1 * height)
    section = hull_slice(world, geometry.edges, z)
    if len(section) < 3:  # a degenerate cut (a vertex or an edge at that height): the whole outline
        section = world[:, :2]
    along, widths = _section_along(section)
    best = int(np.argmin(widths if version == 1 else _grasp_scores(world, geometry.edges, z, widths)))
    direction = _DIRECTIONS[best]
    across = np.array([-direction[1], direction[0]])
    side = section @ across
    middle_along = 0.5 * (along[:, best].max() + along[:, best].min())
    centre = middle_along * direction + 0.5 * (side.max() + side.min()) * across
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, pose[3:] / max(np.linalg.norm(pose[3:]), 1e-12))
    normals = geometry.facets[:, :3] @ rotation.reshape(3, 3).T
    normal = normals[int(np.argmax(normals[:, 2]))]
    angle = 2.0 * _ANGLES[best]
    return np.array(
        [
            bottom - position[2],
            top - position[2],
            np.cos(angle),
            np.sin(angle),
            widths[best],
            centre[0] - position[0],
            centre[1] - position[1],
            *normal,
        ],
        dtype=np.float32,
    )


def planned_grasp(
    geometries: tuple[ObjectGeometry, ...], poses: np.ndarray
) -> tuple[float, np.ndarray, float]:
    """Version 3: red's grasp as the expert plans it (`plan_grasp`, `GRASP_PLAN`) from the three objects'
    meshes and (3, 7) poses: (closing direction in [0, pi), world xy centre, section width along it)."""
    pairs = list(zip(geometries, poses, strict=True))
    centres_of_mass = np.stack([posed_vertices(g.centre_of_mass[None], p[:3], p[3:])[0] for g, p in pairs])
    scene = Scene(
        object_poses=poses,
        pinch_position=np.zeros(3),
        pinch_rotation=np.eye(3),
        gripper=0.0,
        vertices=tuple(g.vertices for g in geometries),  # type: ignore[arg-type]
        centres_of_mass=centres_of_mass,
        edges=tuple(g.edges for g in geometries),  # type: ignore[arg-type]
        facets=tuple(g.facets for g in geometries),  # type: ignore[arg-type]
    )
    red = scene.world_vertices(RED)  # posed once, and reused by the plan
    bottom, top = float(red[:, 2].min()), float(red[:, 2].max())
    grasp_z = max(top - min(GRASP_DEPTH * (top - bottom), MAX_GRASP_DEPTH), bottom + MIN_GRASP_HEIGHT)
    closing, centre = plan_grasp(scene, grasp_z, GRASP_PLAN)
    section = hull_slice(red, geometries[RED].edges, grasp_z)
    if len(section) < 2:
        section = red[:, :2]
    along = section @ np.array([np.cos(closing), np.sin(closing)])
    return closing, np.asarray(centre, dtype=float), float(along.max() - along.min())


def objects_shape(
    geometries: tuple[ObjectGeometry, ...], poses: np.ndarray, version: int = SHAPE_VERSION
) -> np.ndarray:
    """(3 * FEATURES_PER_OBJECT,) red, green, blue features for (3, 7) poses (the `objects/shape` value)."""
    poses = np.asarray(poses, dtype=float).reshape(len(geometries), 7)
    rows = [shape_features(g, p, min(version, 2)) for g, p in zip(geometries, poses, strict=True)]
    if version == 3:  # red's grasp direction, width and centre: the expert's plan
        closing, centre, width = planned_grasp(geometries, poses)
        rows[RED][2:7] = [np.cos(2 * closing), np.sin(2 * closing), width, *(centre - poses[RED, :2])]
    return np.concatenate(rows)


def shape_track(object_ids: tuple[str, ...], poses: np.ndarray, version: int = SHAPE_VERSION) -> np.ndarray:
    """(T, 3 * FEATURES_PER_OBJECT) features of a recorded episode from its object ids and (T, 21) poses."""
    geometries = tuple(object_geometry(str(i)) for i in object_ids)
    poses = np.asarray(poses, dtype=float).reshape(len(poses), -1)
    return np.stack([objects_shape(geometries, p, version) for p in poses]).astype(np.float32)
