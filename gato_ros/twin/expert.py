"""`ScriptedExpert`: a privileged, state-based stacking policy that generates the training data.

Stages: approach above red -> descend -> close -> lift (grasp check) -> carry above blue -> lower until
red's bottom is just above blue's surface under it -> release -> retreat. A failed grasp, a dropped object
or a stalled stage sends it back to approach (up to `max_attempts`). The gripper yaw is aligned with the red
object's narrowest horizontal width, computed from its mesh vertices in their current orientation.

Blue's top is its most upward hull face, level or tilted: red's centre of mass goes deep inside it. When no
face of blue is level enough for red to stay on (tilted past the friction angle), each attempt starts by
tipping blue over: the closed fingers push it near its top toward where that face leans (tip stages).

`twin.expert.feedback=true` drops the plan's memory: every step reads the stage off the state (`_infer_stage`)
and acts on it, with no timers, retries or attempt budget, so the action is a function of the state alone.
That is the teacher DART and DAgger need: a state a learner drove into gets the label the expert would give
on its own path, not one that depends on how long the learner lingered in a stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.control.kinematics import tool_yaw
from gato_ros.twin.observation_keys import GRIPPER_VELOCITY_KEY
from gato_ros.twin.scene import body_vertices, posed_vertices

RED, GREEN, BLUE = 0, 1, 2
# The expert's labelling rule, recorded with every collected episode beside the twin's version: data labelled
# by different revisions disagree on the same states, so do not mix them. 1: up to 2026-12-06; 2: in the
# wrist's gap the grasp yaw is the end nearer the current yaw (`reachable_grasp_yaw`), not a clip.
EXPERT_VERSION = 2
WIDTH_SEARCH_ANGLES = 36  # candidate closing directions over [0, pi) for the narrowest-width grasp
LANDED_TILT_DEG = 3.0  # blue's lowest face this close to level: it lies on a face, not on an edge


class Stage(Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    CLOSE = "close"
    LIFT = "lift"
    CARRY = "carry"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"
    RECOVER = "recover"
    TIP_APPROACH = "tip_approach"  # blue's top too steep to stand on: push blue over first
    TIP_DESCEND = "tip_descend"
    TIP_PUSH = "tip_push"
    DONE = "done"


@dataclass
class Scene:
    """What the expert needs from one step: poses and the objects' vertices in their body frames."""

    object_poses: np.ndarray  # (3, 7)
    pinch_position: np.ndarray  # (3,)
    pinch_rotation: np.ndarray  # (3, 3)
    gripper: float  # 0..255
    vertices: tuple[np.ndarray, np.ndarray, np.ndarray]  # per object (N, 3) in the body frame
    centres_of_mass: np.ndarray  # (3, 3) world frame
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]  # per object: convex hull edges (vertex index pairs)
    facets: tuple[np.ndarray, np.ndarray, np.ndarray]  # per object: hull planes (F, 4) in the body frame
    exact: bool = True  # the objects' own meshes (False: boxes assumed from poses alone)
    gripper_velocity: float = 0.0  # 0..255 units per second, positive closing (0: unknown, taken as still)
    touching_red: tuple[bool, bool, bool] = (False, False, False)  # objects in contact with red (or unknown)

    _posed: dict[int, np.ndarray] = field(default_factory=dict)  # world vertices, computed once per step
    _planes: dict[int, np.ndarray] = field(default_factory=dict)
    _plans: dict[tuple, Any] = field(default_factory=dict)  # grasp and anchor plans, asked twice per step

    def world_vertices(self, obj: int) -> np.ndarray:
        if obj not in self._posed:
            pose = self.object_poses[obj]
            self._posed[obj] = posed_vertices(self.vertices[obj], pose[:3], pose[3:])
        return self._posed[obj]

    def world_facets(self, obj: int) -> np.ndarray:
        """(F, 4) hull planes n . p + d <= 0 (unit outward n) of an object in its current world pose."""
        if obj not in self._planes:
            pose = self.object_poses[obj]
            rotation = np.empty(9)
            mujoco.mju_quat2Mat(rotation, np.asarray(pose[3:], dtype=np.float64))
            normals = self.facets[obj][:, :3] @ rotation.reshape(3, 3).T
            offsets = self.facets[obj][:, 3] - normals @ np.asarray(pose[:3], dtype=np.float64)
            self._planes[obj] = np.column_stack([normals, offsets])
        return self._planes[obj]


def box_vertices(half_size: np.ndarray) -> np.ndarray:
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return corners * half_size


def _face_masks(vertices: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices within `band` of the top and of the bottom of a (world-frame) vertex set."""
    z = vertices[:, 2]
    return z > z.max() - band, z < z.min() + band


def hull_edges(vertices: np.ndarray) -> np.ndarray:
    """(E, 2) vertex index pairs of the edges of the convex hull of `vertices` (the shape MuJoCo collides)."""
    from scipy.spatial import ConvexHull

    simplices = ConvexHull(vertices).simplices
    pairs = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def hull_facets(vertices: np.ndarray) -> np.ndarray:
    """(F, 4) planes of the convex hull of `vertices`: n . p + d <= 0 inside, n a unit outward normal."""
    from scipy.spatial import ConvexHull

    return np.asarray(ConvexHull(vertices).equations, dtype=float)


def top_support(vertices: np.ndarray, facets: np.ndarray, band: float, tolerance: float = 1e-3) -> np.ndarray:
    """(K, 2) xy points of what red can stand on: the vertices within `band` of the object's top, and those of
    its most upward-facing hull face.

    A flat top is both. A tilted top (blue resting on a slanted side, its top face inclined by 5-20 degrees
    in a third of the training-object starts) has only its upper edge inside the band: placing red's centre
    of mass over that edge balanced it there and it slid off; over the inclined face it settles on it.
    """
    band_mask, _ = _face_masks(vertices, band)
    top = facets[int(np.argmax(facets[:, 2]))]
    on_face = np.abs(vertices @ top[:3] + top[3]) < tolerance
    return vertices[band_mask | on_face, :2]


def surface_heights(facets: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) heights of a convex hull's surface over xy points (upper < lower off its outline)."""
    up, down = facets[facets[:, 2] > 1e-6], facets[facets[:, 2] < -1e-6]
    upper = np.min((-up[:, 3][None] - xy @ up[:, :2].T) / up[:, 2][None], axis=1)
    lower = np.max((-down[:, 3][None] - xy @ down[:, :2].T) / down[:, 2][None], axis=1)
    sides = facets[np.abs(facets[:, 2]) <= 1e-6]  # vertical faces bound the outline without a height
    if len(sides):
        outside = np.any(xy @ sides[:, :2].T + sides[:, 3][None] > 1e-9, axis=1)
        upper = np.where(outside, -np.inf, upper)
    return upper, lower


def support_gap(
    upper_vertices: np.ndarray,
    upper_facets: np.ndarray,
    lower_facets: np.ndarray,
    shift: np.ndarray | None = None,
    samples: int = 15,
) -> float | None:
    """Vertical air between the underside of one convex object (moved horizontally by `shift`) and the top
    of another below it, where their outlines overlap (None: they do not); negative when they interpenetrate.

    The first contact of red lowered onto a tilted blue is wherever blue's surface is highest under red, not
    at blue's highest point: lowering by the latter's height released red a centimetre up.
    """
    if shift is not None:
        upper_vertices = upper_vertices + np.array([shift[0], shift[1], 0.0])
        upper_facets = upper_facets.copy()
        upper_facets[:, 3] -= upper_facets[:, :2] @ np.asarray(shift, dtype=float)[:2]
    low, high = upper_vertices[:, :2].min(axis=0), upper_vertices[:, :2].max(axis=0)
    ticks = np.linspace(0.0, 1.0, samples)
    grid = low + (high - low) * np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
    top_of_upper, bottom_of_upper = surface_heights(upper_facets, grid)
    top_of_lower, bottom_of_lower = surface_heights(lower_facets, grid)
    inside = (top_of_upper >= bottom_of_upper - 1e-9) & (top_of_lower >= bottom_of_lower - 1e-9)
    if not inside.any():
        return None
    return float(np.min(bottom_of_upper[inside] - top_of_lower[inside]))


def hull_slice(vertices: np.ndarray, edges: np.ndarray, z: float) -> np.ndarray:
    """(K, 2) xy points outlining the convex hull of world-frame `vertices` cut by the plane at height z."""
    a, b = vertices[edges[:, 0]], vertices[edges[:, 1]]
    crossing = (a[:, 2] - z) * (b[:, 2] - z) <= 0.0
    a, b = a[crossing], b[crossing]
    dz = b[:, 2] - a[:, 2]
    t = np.divide(z - a[:, 2], dz, out=np.zeros_like(dz), where=np.abs(dz) > 1e-12)
    return (a + t[:, None] * (b - a))[:, :2]


def outline_distance(points: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside; exact outside up to the hull's corners) from each xy point to the
    convex hull of the xy `outline`."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        equations = ConvexHull(outline).equations
    except (QhullError, ValueError):  # degenerate outline (a line or a point): distance to its points
        return np.min(np.linalg.norm(points[:, None, :] - outline[None, :, :], axis=2), axis=1)
    return np.max(points @ equations[:, :2].T + equations[:, 2], axis=1)


def stack_anchor_offset(
    red_vertices: np.ndarray,
    red_centre_of_mass_xy: np.ndarray,
    blue_vertices: np.ndarray,
    band: float,
    search: float = 0.03,
    step: float = 0.002,
    reachable: Callable[[np.ndarray], np.ndarray] | None = None,
    blue_facets: np.ndarray | None = None,
) -> np.ndarray:
    """Horizontal move that puts red where it rests most securely on blue (world-frame vertices).

    Red standing on blue tips over once its centre of mass leaves the support, red's bottom face
    meeting blue's top face; red's own part of that does not change with the move, so the move puts
    red's centre of mass as deep inside blue's top face as it gets (the widest margin to every edge of
    it). Among moves within a millimetre of that margin, the one nearest the midpoint rule (the
    midpoint of red's centre of mass and its bottom face's centre over the centre of blue's top face):
    a bigger overlap of the two faces. A narrow top face (b3) left red's centre of mass 7 mm from its
    edge with the midpoint rule alone; seeded gentle stacks placed this way hold on every test triplet
    (tests/test_twin_fidelity.py). `reachable(moves)` -> bool mask: only those moves are considered
    (the tool must be able to get there), unless none is. With `blue_facets` (blue's hull planes), blue's
    top is its `top_support` (a tilted top face counts), else the vertices within `band` of its top.
    """
    red_bottom = red_vertices[_face_masks(red_vertices, band)[1], :2].mean(axis=0)
    if blue_facets is None:
        blue_top = blue_vertices[_face_masks(blue_vertices, band)[0], :2]
    else:
        blue_top = top_support(blue_vertices, blue_facets, band)
    centre_of_mass = np.asarray(red_centre_of_mass_xy, dtype=float)[:2]
    midpoint_move = blue_top.mean(axis=0) - 0.5 * (red_bottom + centre_of_mass)
    ticks = np.arange(-search, search + 1e-9, step)
    moves = midpoint_move + np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
    if reachable is not None:
        mask = np.asarray(reachable(moves), dtype=bool)
        moves = moves[mask] if mask.any() else moves
    depth = -outline_distance(centre_of_mass + moves, blue_top)
    secure = depth >= depth.max() - 1e-3
    nearest = np.argmin(np.where(secure, np.linalg.norm(moves - midpoint_move, axis=1), np.inf))
    return moves[nearest]


def wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def reachable_grasp_yaw(yaw: float, current_yaw: float, limit: float) -> float:
    """The wrist yaw within +-`limit` that closes the fingers along `yaw`'s direction (pi-periodic: the
    fingers are symmetric), the one nearest `current_yaw`.

    Where no equivalent of `yaw` lies within the limits (the wrist's gap around +-pi/2, pi - 2 limit wide),
    either end closes within that gap of the direction, and the one nearer the current yaw is taken: the
    choice follows the state and keeps itself as the wrist turns toward it. Clipping the wrapped angle
    instead picked +limit or -limit by which side of pi/2 red's direction fell, a degree apart, which a
    student that sees the direction pi-periodically (`objects/shape`) cannot tell: a coin toss of full
    left or full right turns that it learned as both, and dithered between.
    """
    candidates = [c for c in (yaw + k * np.pi for k in (-2, -1, 0, 1, 2)) if -limit <= c <= limit]
    return float(min(candidates or [-limit, limit], key=lambda c: abs(c - current_yaw)))


def plan_grasp(scene: Scene, grasp_z: float, cfg: Any) -> tuple[float, np.ndarray]:
    """(closing direction in [0, pi), xy centre) of red's grasp: fingers closing across a pair of red's
    near-vertical sides at the grasp height, the narrowest such pair the gripper opens around, centred on
    red's cross-section there, over its centre of mass where the section allows, open fingers clear of
    green and blue. ``cfg``: `twin.expert` or the same keys (taper_band, taper_weight, max_grasp_width,
    pad_margin, com_offset_weight, grasp_offsets, open_finger_half_span, finger_clearance).

    Per closing direction: the width of red's cross-section at the grasp height, and its taper, how fast
    that width changes `taper_band` above and below (0 for vertical sides). Squeezing tapered sides (a
    prism's slanted faces, a cylinder lying on its side) pops the object out of the fingers however narrow
    it is there; score = width + taper_weight * taper. The expert turns the wrist to it
    (`ScriptedExpert._grasp_plan`); `objects/shape` version 3 gives it to a student (`gato_ros.twin.shape`).
    """
    vertices, edges = scene.world_vertices(RED), scene.edges[RED]
    bottom, top = float(vertices[:, 2].min()), float(vertices[:, 2].max())
    band = min(float(cfg.taper_band), 0.45 * (top - bottom))
    z = float(np.clip(grasp_z, bottom + band, top - band))
    angles = np.linspace(0.0, np.pi, WIDTH_SEARCH_ANGLES, endpoint=False)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    middle = hull_slice(vertices, edges, z)
    if len(middle) < 3:  # degenerate cut: fall back to the whole object's outline
        middle = vertices[:, :2]

    def widths(points: np.ndarray) -> np.ndarray:
        if len(points) < 2:
            return np.zeros(len(angles))
        projections = points @ directions.T
        return projections.max(axis=0) - projections.min(axis=0)

    width = widths(middle)
    taper = np.maximum(
        np.abs(widths(hull_slice(vertices, edges, z + band)) - width),
        np.abs(width - widths(hull_slice(vertices, edges, z - band))),
    ) / max(band, 1e-6)
    score = width + float(cfg.taper_weight) * taper
    score[width > float(cfg.max_grasp_width)] += 1.0  # wider than the open fingers: last resort
    # Along the closing direction the fingers centre red themselves. Across it the grasp sits over red's
    # centre of mass as far as the section allows (`pad_margin` of red beside the pads' middle): held
    # off its centre of mass, red swings in the fingers when lifted and lands tilted, on an edge. Other
    # points across the section are fallbacks that keep the open fingers off green and blue.
    across = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    along, side = middle @ directions.T, middle @ across.T  # (K, A)
    along_mid = 0.5 * (along.max(axis=0) + along.min(axis=0))
    side_low, side_high = side.min(axis=0), side.max(axis=0)
    margin = np.minimum(float(cfg.pad_margin), 0.5 * (side_high - side_low))
    com_side = across @ scene.centres_of_mass[RED, :2]
    fractions = np.linspace(0.0, 1.0, int(cfg.grasp_offsets))[:, None]
    sides = np.concatenate(
        [
            np.clip(com_side, side_low + margin, side_high - margin)[None],
            side_low + margin + fractions * (side_high - side_low - 2.0 * margin),
        ]
    )  # (J, A)
    centres = along_mid[None, :, None] * directions[None] + sides[..., None] * across[None]  # (J, A, 2)
    scores = score[None] + float(cfg.com_offset_weight) * np.abs(sides - com_side[None])
    # Open fingers that would come down on green or blue: a last resort too.
    half_span = float(cfg.open_finger_half_span)
    blocked = np.zeros(sides.shape, dtype=bool)
    for obj in (GREEN, BLUE):
        outline = obstacle_outline(scene, obj, z)
        if outline is None:
            continue
        for sign in (1.0, -1.0):
            fingers = (centres + sign * half_span * directions[None]).reshape(-1, 2)
            near = outline_distance(fingers, outline) < float(cfg.finger_clearance)
            blocked |= near.reshape(sides.shape)
    scores[blocked] += 0.5
    option, best = np.unravel_index(int(np.argmin(scores)), scores.shape)
    return float(angles[best]), centres[option, best]


def obstacle_outline(scene: Scene, obj: int, z: float) -> np.ndarray | None:
    """xy outline of the part of an object a fingertip at height z would hit (None: entirely below)."""
    vertices = scene.world_vertices(obj)
    above = vertices[vertices[:, 2] > z, :2]
    if not len(above):
        return None
    return np.concatenate([above, hull_slice(vertices, scene.edges[obj], z)])


class ScriptedExpert:
    """Stacks red on blue. `act(twin_or_obs)` -> (5,) action; call `reset()` at each episode start.

    Given the twin, it reads object geometry from the model; given an observation dict (with
    `objects/pose`), it assumes objects are boxes of `expert.fallback_half_size`.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.twin.expert
        self.rate_hz = float(cfg.control.rate_hz)
        self.action_low = np.asarray(cfg.control.action_low, dtype=float)
        self.action_high = np.asarray(cfg.control.action_high, dtype=float)
        ctrl = cfg.robot.cartesian_controller
        self.workspace_low = np.asarray(ctrl.workspace_low, dtype=float)
        self.workspace_high = np.asarray(ctrl.workspace_high, dtype=float)
        self.yaw_limit = float(ctrl.yaw_limit)
        # Feedback mode: the stage is read off the state at every step (no stage memory, timers or attempt
        # count), so the action is a function of the state and labels any state the same way.
        self.feedback = bool(self.cfg.get("feedback", False))
        self._vertex_cache: dict[Any, tuple[tuple[np.ndarray, ...], ...]] = {}
        box = box_vertices(np.asarray(self.cfg.fallback_half_size, dtype=float))
        self._box = (box, hull_edges(box), hull_facets(box))
        self.reset()

    # -- episode state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.stage = Stage.APPROACH
        self.attempts = 1
        self.stage_steps = 0
        self.grasp_yaw: float | None = None
        self.lift_start_red_z = 0.0
        self.lift_start_pinch_z = 0.0
        self.retreat_z = 0.0
        self.unstacked_steps = 0
        self.last_gripper = 0.0
        self.tips = 0
        self.tip_path: tuple[np.ndarray, np.ndarray] | None = None  # push start and end (x, y, z)
        self.travel_z: float | None = None  # feedback mode: approach at this height until over red

    @property
    def failed(self) -> bool:
        return self.stage is Stage.DONE and self.attempts > int(self.cfg.max_attempts)

    def _enter(self, stage: Stage) -> None:
        self.stage, self.stage_steps = stage, 0

    def _retry(self) -> None:
        if self.feedback:  # the next step reads the stage off the state again
            return
        self.attempts += 1
        self.grasp_yaw = None
        self._enter(Stage.RECOVER if self.attempts <= int(self.cfg.max_attempts) else Stage.DONE)

    # -- perception --------------------------------------------------------------------------------------
    def _scene(self, source: Any) -> Scene:
        if isinstance(source, dict):
            pinch = np.asarray(source["sawyer/pinch/pose"], dtype=float)
            rotation = np.empty(9)
            mujoco.mju_quat2Mat(rotation, pinch[3:])
            box, edges, facets = self._box
            poses = np.asarray(source["objects/pose"], dtype=float).reshape(3, 7)
            return Scene(
                object_poses=poses,
                pinch_position=pinch[:3],
                pinch_rotation=rotation.reshape(3, 3),
                gripper=float(np.asarray(source["gripper/joints/angle"]).reshape(-1)[0]),
                gripper_velocity=float(np.asarray(source.get(GRIPPER_VELOCITY_KEY, [0.0])).reshape(-1)[0]),
                vertices=(box, box, box),
                centres_of_mass=poses[:, :3].copy(),
                edges=(edges, edges, edges),
                facets=(facets, facets, facets),
                exact=False,
            )
        model = source.model
        key = (id(model), source.object_ids)
        if key not in self._vertex_cache:
            vertices = tuple(body_vertices(model, b) for b in source.index.object_bodies)
            edges, facets = tuple(hull_edges(v) for v in vertices), tuple(hull_facets(v) for v in vertices)
            self._vertex_cache = {key: (vertices, edges, facets)}
        pinch = source.pinch_pose()
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, pinch[3:])
        return Scene(
            object_poses=source.object_poses(),
            pinch_position=pinch[:3],
            pinch_rotation=rotation.reshape(3, 3),
            gripper=source.gripper_position(),
            vertices=self._vertex_cache[key][0],
            edges=self._vertex_cache[key][1],
            facets=self._vertex_cache[key][2],
            gripper_velocity=source.gripper_velocity(),
            touching_red=source.objects_touching_red(),
            centres_of_mass=source.data.xipos[list(source.index.object_bodies)].copy(),
        )

    def _grasp_plan(self, scene: Scene, grasp_z: float, current_yaw: float) -> tuple[float, np.ndarray]:
        """(yaw, xy) of red's grasp (`plan_grasp`), the yaw the reachable one nearest ``current_yaw``."""
        key = ("grasp", grasp_z, current_yaw)
        if key not in scene._plans:
            closing, centre = plan_grasp(scene, grasp_z, self.cfg)
            # Fingers close along the tool y axis, which points along yaw - pi/2.
            yaw = wrap_angle(float(closing) + np.pi / 2)
            limit = self.yaw_limit - float(self.cfg.yaw_limit_margin)
            scene._plans[key] = (reachable_grasp_yaw(yaw, current_yaw, limit), centre)
        return scene._plans[key]

    def _tip_plan(
        self, scene: Scene, budget: bool = True, pusher: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Push path that tips blue over when no face of it is level enough for red to stay on (None: blue's
        top will do, or the tip budget is spent).

        Blue lying on a slanted side (triplet 2's b3 in 15 of 40 starts: its top face at 40 degrees, past the
        friction angle of 27) can only hold red on another face. Pushed near its top toward where that face
        leans, it rolls onto a neighbouring side and shows a level face. The push runs through blue's centre
        of mass, from beside blue's uphill side to past its far side, `tip_depth` below its top.
        `pusher` (xy of fingers already pushing): push away from them instead, through the centre of mass
        (mid-roll, on an edge, blue's most upward face flips side and would reverse the push).
        """
        cfg = self.cfg
        if not scene.exact:  # a box assumed from a pose says nothing about which face is level
            return None
        facets = scene.world_facets(BLUE)
        top = facets[int(np.argmax(facets[:, 2]))]
        if np.degrees(np.arccos(np.clip(top[2], -1.0, 1.0))) <= float(cfg.tip_min_tilt_deg):
            return None
        if (budget and self.tips >= int(cfg.max_tips)) or np.linalg.norm(top[:2]) < 1e-6:
            return None
        direction = top[:2] / np.linalg.norm(top[:2])
        if pusher is not None:
            away = scene.centres_of_mass[BLUE, :2] - np.asarray(pusher, dtype=float)[:2]
            if np.linalg.norm(away) > 1e-6:
                direction = away / np.linalg.norm(away)
        vertices = scene.world_vertices(BLUE)
        along = vertices[:, :2] @ direction
        across_axis = np.array([-direction[1], direction[0]])
        lateral = float(across_axis @ scene.centres_of_mass[BLUE, :2]) * across_axis
        z = float(vertices[:, 2].max()) - float(cfg.tip_depth)
        start = lateral + (float(along.min()) - float(cfg.tip_standoff)) * direction
        end = lateral + (float(along.max()) + float(cfg.tip_follow_through)) * direction
        return np.array([*start, z]), np.array([*end, z])

    # -- control -----------------------------------------------------------------------------------------
    def _move(
        self,
        scene: Scene,
        target: np.ndarray,
        yaw: float | None,
        gripper: float,
        slow: bool = False,
        speed: float | None = None,
    ) -> tuple[np.ndarray, bool]:
        """Proportional tool velocity toward `target` (clamped to the workspace) -> (action, reached)."""
        target = np.clip(target, self.workspace_low, self.workspace_high)
        error = target - scene.pinch_position
        gain = float(self.cfg.position_gain)
        if speed is None:
            speed = float(self.cfg.slow_speed) if slow else float(self.action_high[0])
        velocity = np.clip(gain * error, -speed, speed)
        current_yaw = tool_yaw(scene.pinch_rotation)
        yaw_error = 0.0 if yaw is None else wrap_angle(yaw - current_yaw)
        yaw_rate = float(self.cfg.yaw_gain) * yaw_error
        action = np.clip(np.array([*velocity, yaw_rate, gripper]), self.action_low, self.action_high)
        reached = bool(
            np.linalg.norm(error) < float(self.cfg.position_tolerance)
            and abs(yaw_error) < float(self.cfg.yaw_tolerance)
        )
        return action, reached

    def act(self, source: Any) -> np.ndarray:
        """One action for the current state of the twin (or an observation dict with privileged poses)."""
        cfg = self.cfg
        scene = self._scene(source)
        red = scene.world_vertices(RED)
        blue = scene.world_vertices(BLUE)
        red_centre = scene.object_poses[RED, :3]
        grasp_z = self._grasp_height(red)
        if self.feedback:
            self._infer_stage(scene, red, blue, grasp_z)
        else:
            self._sync_stage(scene, red, blue)
        self.stage_steps += 1
        open_, close = -1.0, 1.0
        timeout = not self.feedback and self.stage_steps > float(cfg.stage_timeout_seconds) * self.rate_hz
        current_yaw = tool_yaw(scene.pinch_rotation)

        # A new attempt: tip blue over first? (Feedback mode decides that from the state in _infer_stage.)
        if not self.feedback and self.stage is Stage.APPROACH and self.stage_steps == 1:
            self.tip_path = self._tip_plan(scene)
            if self.tip_path is not None:
                self.tips += 1
                self._enter(Stage.TIP_APPROACH)
        if self.stage in (Stage.TIP_APPROACH, Stage.TIP_DESCEND, Stage.TIP_PUSH):
            return self._tip(scene, timeout)
        if self.stage in (Stage.APPROACH, Stage.DESCEND):
            # The grasp direction is chosen once per attempt; its centre follows red if it is nudged.
            yaw, grasp_xy = self._grasp_plan(scene, grasp_z, current_yaw)
            if self.grasp_yaw is None or (self.stage is Stage.APPROACH and self.stage_steps == 1):
                self.grasp_yaw = yaw
        if self.stage is Stage.APPROACH:
            approach_z = float(red[:, 2].max()) + float(cfg.approach_height)
            target = np.array([*grasp_xy, approach_z if self.travel_z is None else self.travel_z])
            action, reached = self._move(scene, target, self.grasp_yaw, open_)
            if reached and scene.gripper < float(cfg.open_gripper_threshold):
                self._enter(Stage.DESCEND)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.DESCEND:
            target = np.array([*grasp_xy, grasp_z])
            action, reached = self._move(scene, target, self.grasp_yaw, open_)
            if reached:
                self._enter(Stage.CLOSE)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.CLOSE:
            action, _ = self._move(scene, scene.pinch_position, None, close)
            settled = abs(scene.gripper - self.last_gripper) < float(cfg.gripper_settled_delta)
            self.last_gripper = scene.gripper
            if (settled and self.stage_steps >= float(cfg.close_seconds) * self.rate_hz) or timeout:
                self.lift_start_red_z = float(red_centre[2])
                self.lift_start_pinch_z = float(scene.pinch_position[2])
                self._enter(Stage.LIFT)
            return action
        carry_z = self._carry_height(scene, red)
        if self.stage is Stage.LIFT:
            target = np.array([*scene.pinch_position[:2], carry_z])
            action, reached = self._move(scene, target, None, close)
            risen = float(scene.pinch_position[2]) - self.lift_start_pinch_z
            if risen > float(cfg.grasp_check_height):
                red_risen = float(red_centre[2]) - self.lift_start_red_z
                if red_risen < 0.5 * risen or scene.gripper > float(cfg.empty_gripper_threshold):
                    self._retry()
                    return action
            if reached:
                self._enter(Stage.CARRY)
            elif timeout:
                self._retry()
            return action
        offset = self._anchor_offset(scene, red, blue)
        if self.stage is Stage.CARRY:
            target = np.array([*(scene.pinch_position[:2] + offset), carry_z])
            action, reached = self._move(scene, target, None, close)
            if self._dropped(scene):
                self._retry()
            elif reached:
                self._enter(Stage.LOWER)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.LOWER:
            target, near, placed = self._lower_plan(scene, red, blue, offset)
            action, _ = self._move(scene, target, None, close, slow=near)
            if self._dropped(scene):
                self._retry()
            elif placed:
                self._enter(Stage.RELEASE)
            elif timeout:
                self._retry()
            return action
        if self.stage is Stage.RELEASE:
            action, _ = self._move(scene, scene.pinch_position, None, open_)
            # The driver command is integrated, so opening first unwinds the closing command: wait for
            # the fingers to actually open before moving away.
            opened = scene.gripper < float(cfg.open_gripper_threshold)
            if (opened and self.stage_steps >= float(cfg.open_seconds) * self.rate_hz) or timeout:
                self._enter(Stage.RETREAT)
            return action
        if self.stage is Stage.RETREAT:
            if self.stage_steps == 1 and not self.feedback:  # feedback: set from red in _infer_stage
                rise = float(scene.pinch_position[2]) + float(cfg.retreat_height)
                self.retreat_z = min(float(cfg.lift_height), rise)
            target = np.array([*scene.pinch_position[:2], self.retreat_z])
            action, reached = self._move(scene, target, None, open_)
            if reached or timeout:
                if self._stacked(scene, red, blue):
                    self._enter(Stage.DONE)
                else:
                    self._retry()
            return action
        if self.stage is Stage.RECOVER:  # up, clear of every object, before approaching again
            top = max(float(scene.world_vertices(obj)[:, 2].max()) for obj in (RED, GREEN, BLUE))
            target_z = min(float(cfg.lift_height), top + float(cfg.approach_height))
            target = np.array([*scene.pinch_position[:2], max(target_z, float(scene.pinch_position[2]))])
            action, reached = self._move(scene, target, None, open_)
            if reached or timeout:
                self._enter(Stage.APPROACH)
            return action
        # DONE: hold still with the gripper open; a stack that comes apart is a failed attempt (feedback).
        if not self.failed and not self._stacked(scene, red, blue):
            self.unstacked_steps += 1
            if self.unstacked_steps > float(cfg.restack_seconds) * self.rate_hz:
                self._retry()
        else:
            self.unstacked_steps = 0
        return np.array([0.0, 0.0, 0.0, 0.0, open_])

    # -- plans shared by the stages ----------------------------------------------------------------------
    def _grasp_height(self, red: np.ndarray) -> float:
        """Tool-point height the fingers close at: `grasp_depth` of red's height below its top, bounded."""
        cfg = self.cfg
        height = float(red[:, 2].max() - red[:, 2].min())
        return max(
            float(red[:, 2].max()) - min(float(cfg.grasp_depth) * height, float(cfg.max_grasp_depth)),
            float(red[:, 2].min()) + float(cfg.min_grasp_height_above_bottom),
        )

    def _carry_height(self, scene: Scene, red: np.ndarray) -> float:
        """Carry just high enough for red's bottom to clear green and blue (not the workspace ceiling)."""
        cfg = self.cfg
        obstacles_top = max(float(scene.world_vertices(obj)[:, 2].max()) for obj in (GREEN, BLUE))
        return min(
            float(cfg.lift_height),
            max(
                obstacles_top + float(scene.pinch_position[2]) - float(red[:, 2].min())
                + float(cfg.carry_clearance),
                self.lift_start_pinch_z + 2.0 * float(cfg.grasp_check_height),
            ),
        )  # fmt: skip

    def _anchor_offset(self, scene: Scene, red: np.ndarray, blue: np.ndarray) -> np.ndarray:
        """Horizontal tool move that puts red over its resting place on blue (`stack_anchor_offset`)."""
        if ("anchor",) in scene._plans:
            return scene._plans[("anchor",)]
        pinch_xy = scene.pinch_position[:2]

        def reachable(moves: np.ndarray) -> np.ndarray:
            xy = pinch_xy + moves
            return np.all((xy >= self.workspace_low[:2]) & (xy <= self.workspace_high[:2]), axis=1)

        scene._plans[("anchor",)] = stack_anchor_offset(
            red,
            scene.centres_of_mass[RED, :2],
            blue,
            float(self.cfg.face_band),
            reachable=reachable,
            blue_facets=scene.world_facets(BLUE) if scene.exact else None,
        )
        return scene._plans[("anchor",)]

    def _lower_plan(
        self, scene: Scene, red: np.ndarray, blue: np.ndarray, offset: np.ndarray
    ) -> tuple[np.ndarray, bool, bool]:
        """(target, near, placed) for lowering red onto blue.

        Heights are measured to blue's surface under red (a tilted top is lower there than at its highest
        point), at the anchor for the target and where red is now for the release. Released (`placed`) only
        this close above the planned height (a drop tips red on a narrow top), over the anchor, or wherever
        red already rests on blue (friction holds it there: waiting only times out).
        """
        cfg = self.cfg
        top_gap = float(red[:, 2].min()) - float(blue[:, 2].max())
        anchored_gap = current_gap = None
        if scene.exact:
            red_facets, blue_facets = scene.world_facets(RED), scene.world_facets(BLUE)
            anchored_gap = support_gap(red, red_facets, blue_facets, shift=offset)
            current_gap = support_gap(red, red_facets, blue_facets)
        gap = top_gap if current_gap is None else current_gap
        drop = float(cfg.place_clearance) - (top_gap if anchored_gap is None else anchored_gap)
        target = scene.pinch_position + np.array([*offset, drop])
        aligned = np.linalg.norm(offset) < float(cfg.position_tolerance)
        placed = drop > -float(cfg.place_tolerance) and (aligned or gap < float(cfg.place_tolerance))
        return target, bool(gap < float(cfg.slow_zone)), bool(placed)

    # -- feedback mode: the stage from the state ---------------------------------------------------------
    def _infer_stage(self, scene: Scene, red: np.ndarray, blue: np.ndarray, grasp_z: float) -> None:
        """Enter the stage the state calls for, with what the stage needs set from the state alone.

        In order: a finished stack (fingers open) -> rise clear, then hold; red in the fingers -> close,
        lift, carry, lower or release (`_transport_stage`); blue's top too steep -> tip it (`_tip_stage`);
        fingers not open -> open while rising; else over red's grasp column -> descend and close, or
        travel there at a safe height.
        """
        cfg = self.cfg
        tolerance = float(cfg.position_tolerance)
        pinch = scene.pinch_position
        self.lift_start_pinch_z = self.lift_start_red_z = -np.inf  # carry height from the obstacles alone
        opened = scene.gripper < float(cfg.open_gripper_threshold)
        if opened and self._stacked(scene, red, blue):
            self.retreat_z = min(float(cfg.lift_height), float(red[:, 2].max()) + float(cfg.retreat_height))
            self._enter(Stage.RETREAT if float(pinch[2]) < self.retreat_z - tolerance else Stage.DONE)
            return
        if self._holding_red(scene):
            self._enter(self._transport_stage(scene, red, blue))
            return
        tip_path = self._tip_plan(scene, budget=False)
        if tip_path is not None and self._pushing_blue(scene, tip_path):
            tip_path = self._tip_plan(scene, budget=False, pusher=pinch)
        if tip_path is not None:
            self.tip_path = tip_path
            self._enter(self._tip_stage(scene, tip_path))
            return
        if not opened:
            self._enter(Stage.RECOVER)
            return
        current_yaw = tool_yaw(scene.pinch_rotation)
        yaw, grasp_xy = self._grasp_plan(scene, grasp_z, current_yaw)
        self.grasp_yaw = yaw
        xy_error = float(np.linalg.norm(pinch[:2] - grasp_xy))
        yaw_error = abs(wrap_angle(yaw - current_yaw))
        approach_z = float(red[:, 2].max()) + float(cfg.approach_height)
        # The column is wider than the approach's tolerance: descending corrects small offsets itself.
        column = xy_error < 2.0 * tolerance and yaw_error < 2.0 * float(cfg.yaw_tolerance)
        if column and float(pinch[2]) < approach_z + tolerance:
            at_grasp = (
                abs(float(pinch[2]) - grasp_z) < tolerance
                and xy_error < tolerance
                and yaw_error < float(cfg.yaw_tolerance)
            )
            self._enter(Stage.CLOSE if at_grasp else Stage.DESCEND)
            return
        self.travel_z = None
        if column:  # above the approach height: straight down to it
            self._enter(Stage.APPROACH)
            return
        # Elsewhere: rise to clear every object (as RECOVER does), then travel over red at that height.
        top = max(float(scene.world_vertices(obj)[:, 2].max()) for obj in (RED, GREEN, BLUE))
        self.travel_z = max(min(float(cfg.lift_height), top + float(cfg.approach_height)), approach_z)
        below = float(pinch[2]) < self.travel_z - 0.5 * float(cfg.approach_height)
        self._enter(Stage.RECOVER if below else Stage.APPROACH)

    def _transport_stage(self, scene: Scene, red: np.ndarray, blue: np.ndarray) -> Stage:
        """Red in the fingers: finish closing, lift straight up, carry over blue, lower, or release."""
        cfg = self.cfg
        tolerance = float(cfg.position_tolerance)
        settled = float(cfg.gripper_settled_delta) * self.rate_hz  # per-step delta as a speed
        offset = self._anchor_offset(scene, red, blue)
        # Lowering's release test counts only over blue (beside it, red's bottom is below blue's top too).
        # Also released: red over blue and already resting on blue or green (where the gap estimate did
        # not see it: lowering further only slides it up in the fingers; released, it settles on blue), and
        # red the fingers are opening on.
        if self._stacked(scene, red, blue):
            _, _, placed = self._lower_plan(scene, red, blue, offset)
            resting = scene.touching_red[GREEN] or scene.touching_red[BLUE]
            opening = scene.gripper_velocity < -3.0 * settled
            if placed or resting or opening:
                return Stage.RELEASE
        # Still closing on red where it lay (not once it is lifted: a slip in the fingers is not a grasp).
        floor = min(float(scene.world_vertices(obj)[:, 2].min()) for obj in (GREEN, BLUE))
        lifted = float(red[:, 2].min()) > floor + float(cfg.lifted_clearance)
        if scene.gripper_velocity > settled and not lifted:
            return Stage.CLOSE
        carry_z = self._carry_height(scene, red)
        height = float(scene.pinch_position[2])
        misaligned = float(np.linalg.norm(offset))
        # Up first, then across at the carry height; lowering (which also corrects small offsets) once over
        # blue, or already below the carry height within twice the tolerance of the anchor.
        high_enough = height > carry_z - 0.5 * float(cfg.carry_clearance)
        if misaligned > 2.0 * tolerance and not high_enough:
            return Stage.LIFT
        if misaligned > tolerance and high_enough:
            return Stage.CARRY
        return Stage.LOWER

    def _pushing_blue(self, scene: Scene, path: tuple[np.ndarray, np.ndarray]) -> bool:
        """The fingers are at push height beside (or against) blue: a push is under way."""
        standoff = float(self.cfg.tip_standoff)
        pinch = scene.pinch_position
        if abs(float(pinch[2]) - float(path[0][2])) > standoff:
            return False
        footprint = scene.world_vertices(BLUE)[:, :2]
        distance = float(outline_distance(pinch[None, :2], footprint)[0])
        return distance < standoff - float(self.cfg.position_tolerance)

    def _tip_stage(self, scene: Scene, path: tuple[np.ndarray, np.ndarray]) -> Stage:
        """Where the tool is on the push path: on the push line, above its start, or elsewhere."""
        tolerance = 2.0 * float(self.cfg.position_tolerance)
        pushing = float(self.cfg.tip_standoff)  # blue pushes the fingers aside: the line is wider once on it
        # Where the tool can go: a start beyond the workspace (blue near its edge) is reached clamped, as
        # `_move` drives it; measured to the unclamped start, the tool "never arrived" and hovered there.
        start, end = (np.clip(point, self.workspace_low, self.workspace_high) for point in path)
        pinch = scene.pinch_position
        length = float(np.linalg.norm(end[:2] - start[:2]))
        direction = (end[:2] - start[:2]) / max(length, 1e-9)
        relative = pinch[:2] - start[:2]
        along = float(relative @ direction)
        lateral = float(np.linalg.norm(relative - along * direction))
        on_line = lateral < pushing and abs(float(pinch[2]) - float(start[2])) < pushing
        if on_line and -tolerance < along < length:
            return Stage.TIP_PUSH
        if float(np.linalg.norm(relative)) < tolerance and float(pinch[2]) > float(start[2]):
            return Stage.TIP_DESCEND
        return Stage.TIP_APPROACH

    def _tip(self, scene: Scene, timeout: bool) -> np.ndarray:
        """The tip stages: above the push start, down beside blue, then slowly across it (fingers closed)."""
        assert self.tip_path is not None
        start, end = self.tip_path
        close = 1.0
        if self.stage is Stage.TIP_APPROACH:
            clear = max(float(scene.world_vertices(obj)[:, 2].max()) for obj in (RED, GREEN, BLUE))
            above = np.array([*start[:2], clear + float(self.cfg.tip_clearance)])
            action, reached = self._move(scene, above, None, close)
            if reached or timeout:
                self._enter(Stage.TIP_DESCEND)
            return action
        if self.stage is Stage.TIP_DESCEND:
            action, reached = self._move(scene, start, None, close)
            if reached or timeout:
                self._enter(Stage.TIP_PUSH)
            return action
        action, reached = self._move(scene, end, None, close, speed=float(self.cfg.tip_speed))
        # Done once blue lies on a face again with a level enough top (mid-roll it rests on an edge, held up
        # by the fingers: stopping there lets it roll back), or at the path's end.
        facets = scene.world_facets(BLUE)
        level = np.cos(np.radians(float(self.cfg.tip_min_tilt_deg)))
        landed = facets[:, 2].max() > level and facets[:, 2].min() < -np.cos(np.radians(LANDED_TILT_DEG))
        if landed or reached or timeout:
            self._enter(Stage.RECOVER)
        return action

    def _sync_stage(self, scene: Scene, red: np.ndarray, blue: np.ndarray) -> None:
        """Feedback: move to the stage the state shows when it contradicts the stage the expert is in.

        The stages are the expert's plan, but someone else may have moved the arm (a DAgger learner, noise,
        an operator): red already in the fingers means lift and carry it, not approach it again; red
        standing on blue with the fingers open means retreat, not grasp it off the stack. A fresh expert
        (`reset()`) thus labels states it never visited itself with the action that continues from them.
        """
        if self.stage in (Stage.RETREAT, Stage.DONE):
            return
        stacked = self._stacked(scene, red, blue)
        if stacked and scene.gripper < float(self.cfg.open_gripper_threshold):
            self._enter(Stage.RETREAT)
        elif self._holding_red(scene) and self.stage in (Stage.APPROACH, Stage.DESCEND, Stage.RECOVER):
            if stacked:
                self._enter(Stage.RELEASE)
                return
            self.lift_start_red_z = float(scene.object_poses[RED, 2])
            self.lift_start_pinch_z = float(scene.pinch_position[2])
            self._enter(Stage.LIFT)

    def _holding_red(self, scene: Scene) -> bool:
        """The fingers are closed on something (neither open nor closed on nothing) and red is there: its
        centre near the tool point, or (feedback mode) the tool point inside red's hull (a large red's centre
        is farther away from its grasp than `held_radius`)."""
        cfg = self.cfg
        between = float(cfg.open_gripper_threshold) < scene.gripper < float(cfg.empty_gripper_threshold)
        offset = scene.object_poses[RED, :3] - scene.pinch_position
        near = bool(np.abs(offset).max() < float(cfg.held_radius))
        if self.feedback and not near:
            planes = scene.world_facets(RED)
            inside = np.max(planes[:, :3] @ scene.pinch_position + planes[:, 3])
            near = bool(inside < float(cfg.finger_clearance))
        return bool(between and near)

    def _stacked(self, scene: Scene, red: np.ndarray, blue: np.ndarray) -> bool:
        """The sparse reward's geometry as far as poses show it: red's centre over blue's, higher by the
        benchmark's margin, and red's bottom clear of the floor blue stands on (no leaning stack)."""
        red_centre, blue_centre = scene.object_poses[RED, :3], scene.object_poses[BLUE, :3]
        return bool(
            np.linalg.norm(red_centre[:2] - blue_centre[:2]) < float(self.cfg.stacked_max_offset)
            and red_centre[2] - blue_centre[2] > float(self.cfg.stacked_height)
            and float(red[:, 2].min()) > float(blue[:, 2].min()) + float(self.cfg.stacked_floor_clearance)
        )

    def _dropped(self, scene: Scene) -> bool:
        """Red no longer follows the gripper (fell or slipped out)."""
        red_below_pinch = float(scene.pinch_position[2]) - float(scene.object_poses[RED, 2])
        return red_below_pinch > float(self.cfg.drop_distance) or scene.gripper > float(
            self.cfg.empty_gripper_threshold
        )


__all__ = ["ScriptedExpert", "Stage", "stack_anchor_offset"]
