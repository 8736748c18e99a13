"""The benchmark's basket, read in place from the dm-robotics-manipulation wheel.

The wheel ships the basket in two parts: `standard_cell/rgb_basket_assets/rgb_basket.xml` (the laser-cut
visual meshes, none of which collide) and, in `standard_cell/rgb_basket.py`, the primitive collision
surfaces the benchmark actually simulates (a floor box and four 25.5-degree sloped sides). That module
imports dm_control's composer, so its constants are read with `ast` (parsed, never executed) instead of
importing it. Only the basket's placement in the world (which the benchmark's environment sets) comes from
this project, in `sim/<twin.basket_file>`; the ground plane is the arena's (`gato_ros.twin.arena`).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import yaml
from omegaconf import DictConfig

from gato_ros.paths import installed_package_dir, sim_dir

BASKET_BODY = "rgb_basket"  # the visual body of rgb_basket.xml
COLLISION_BODY = "collision_basket"  # the body rgb_basket.py hangs the collision surfaces on
FLOOR_GEOM = "basket_base_surface_CollisionGeom"
SURFACES_CONSTANT = "_BASKET_SURFACE_GEOMS_COLLISIONS_KWARGS"


@cache
def basket_source_dir() -> Path:
    """`dm_robotics/manipulation/standard_cell` inside the installed wheel."""
    return installed_package_dir("dm_robotics.manipulation", "the RGB-stacking basket") / "standard_cell"


def basket_xml() -> Path:
    return basket_source_dir() / "rgb_basket_assets" / "rgb_basket.xml"


@cache
def _module_tree() -> ast.Module:
    return ast.parse((basket_source_dir() / "rgb_basket.py").read_text())


def _literal_constant(name: str) -> Any:
    for node in _module_tree().body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} not found in {basket_source_dir() / 'rgb_basket.py'}")


def _call_keywords(body_name: str) -> dict[str, Any]:
    """Literal keywords of the `add('body', name=body_name, ...)` call in rgb_basket.py."""
    for node in ast.walk(_module_tree()):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        name = keywords.get("name")
        if isinstance(name, ast.Constant) and name.value == body_name:
            return {key: ast.literal_eval(value) for key, value in keywords.items()}
    raise LookupError(f"no body {body_name!r} is added in {basket_source_dir() / 'rgb_basket.py'}")


def _floats(text: str | list[float]) -> list[float]:
    return [float(v) for v in (text.split() if isinstance(text, str) else text)]


@cache
def collision_surfaces() -> tuple[dict[str, Any], ...]:
    """The benchmark's colliding basket geoms (name, type, pos, size, axisangle), in the collision body."""
    return tuple(dict(kwargs) for kwargs in _literal_constant(SURFACES_CONSTANT))


def collision_body_frame() -> tuple[list[float], list[float]]:
    """(pos, quat) of the collision body in the basket frame."""
    keywords = _call_keywords(COLLISION_BODY)
    return _floats(keywords.get("pos", "0 0 0")), _floats(keywords.get("quat", "1 0 0 0"))


def load_placement(twin_cfg: DictConfig) -> dict:
    """This project's part: where the basket frame sits in the world."""
    return yaml.safe_load((sim_dir() / str(twin_cfg.basket_file)).read_text())


def _axisangle_quat(axisangle: str) -> list[float]:
    values = _floats(axisangle)
    quat = np.empty(4)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(values[:3]), values[3])
    return quat.tolist()


def add_basket(
    spec: mujoco.MjSpec,
    twin_cfg: DictConfig,
    collision_bits: tuple[int, int],
    visual_group: int,
    collision_group: int,
) -> list[mujoco.MjsGeom]:
    """The wheel's visual basket and its collision surfaces, placed per `sim/`.

    Returns the colliding surfaces so the caller sets their contact parameters.
    """
    placement = load_placement(twin_cfg)
    contype, conaffinity = collision_bits
    colliding = []

    basket = spec.worldbody.add_body(
        name="basket", pos=_floats(placement["position"]), quat=_floats(placement["quat"])
    )
    visual = mujoco.MjSpec.from_file(str(basket_xml()))
    visual.meshdir = str(basket_xml().parent)
    body = basket.add_frame().attach_body(visual.body(BASKET_BODY), "basket/", "")
    for geom in body.geoms:
        geom.contype = geom.conaffinity = 0
        geom.group = visual_group

    pos, quat = collision_body_frame()
    collider = basket.add_body(name=COLLISION_BODY, pos=pos, quat=quat)
    for surface in collision_surfaces():
        geom = collider.add_geom(
            name=str(surface["name"]),
            type=getattr(mujoco.mjtGeom, f"mjGEOM_{str(surface['type']).upper()}"),
            pos=_floats(surface.get("pos", "0 0 0")),
            size=_floats(surface["size"]),
            group=collision_group,
        )
        if "axisangle" in surface:
            geom.quat = _axisangle_quat(surface["axisangle"])
        colliding.append(geom)
    for geom in colliding:  # contact parameters are the caller's (scene.set_contact)
        geom.contype, geom.conaffinity = contype, conaffinity
    return colliding
