"""The benchmark's arena, read in place from the installed wheels: ground plane, light, sky and headlight.

DeepMind's environment builds its cell on dm-robotics' empty MoMa arena (`moma/models/arenas/empty_assets/
arena.xml`: a checkered ground plane with friction 0.4 and one spot light 1.5 m above the robot's base,
in the world frame the twin shares with it) and renders with dm_control composer's headlight
(`composer/arena.xml`). The twin copies those elements from the files, so its cameras see the benchmark's
light and ground; `twin.rendering` may only switch shadows off (their cost in software GL).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import mujoco

from gato_ros.paths import installed_package_dir

GROUND_GEOM = "ground"


@cache
def arena_xml() -> Path:
    """The empty MoMa arena of the dm-robotics-moma wheel."""
    moma = installed_package_dir("dm_robotics.moma", "the RGB-stacking arena")
    return moma / "models" / "arenas" / "empty_assets" / "arena.xml"


@cache
def composer_arena_xml() -> Path:
    """dm_control composer's base arena (its `<visual>` headlight is what the benchmark renders with)."""
    return installed_package_dir("dm_control", "the composer arena's headlight") / "composer" / "arena.xml"


def _copy_texture(spec: mujoco.MjSpec, source: mujoco.MjsTexture) -> None:
    texture = spec.add_texture(name=source.name, type=source.type)
    for field in ("builtin", "rgb1", "rgb2", "width", "height", "mark", "markrgb"):
        setattr(texture, field, getattr(source, field))


def add_arena(spec: mujoco.MjSpec, shadows: bool) -> mujoco.MjsGeom:
    """Sky, ground plane (with its material and contact parameters), the light and the headlight of the
    benchmark's arena. Returns the ground geom (it collides; the caller sets its collision bits)."""
    arena = mujoco.MjSpec.from_file(str(arena_xml()))
    for texture in arena.textures:
        _copy_texture(spec, texture)
    for source in arena.materials:
        material = spec.add_material(name=source.name)
        material.textures = list(source.textures)
        for field in ("texrepeat", "texuniform", "reflectance", "rgba"):
            setattr(material, field, getattr(source, field))

    source = arena.geom(GROUND_GEOM)
    ground = spec.worldbody.add_geom(name=GROUND_GEOM, type=source.type)
    # Every field set from the file: geoms added to the twin's spec would otherwise inherit the Sawyer
    # model's default class (friction 0.1, solref 0.02 1.1).
    for field in ("size", "material", "friction", "condim", "solref", "solimp", "rgba"):
        setattr(ground, field, getattr(source, field))

    for source in arena.lights:
        light = spec.worldbody.add_light(name=source.name or "arena_light")
        for field in (
            "pos", "dir", "type", "diffuse", "specular", "ambient", "cutoff", "exponent", "attenuation",
        ):  # fmt: skip
            setattr(light, field, getattr(source, field))
        light.castshadow = bool(shadows and source.castshadow)

    headlight = mujoco.MjSpec.from_file(str(composer_arena_xml())).visual.headlight
    for field in ("ambient", "diffuse", "specular", "active"):
        setattr(spec.visual.headlight, field, getattr(headlight, field))
    return ground
