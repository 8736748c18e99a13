"""Offscreen rendering of the twin's cameras; the one place that picks the OpenGL backend.

Backend: `MUJOCO_GL` if the user set it, else the first of `twin.rendering.backends` (EGL, then OSMesa)
whose context can be created. We create the GL context ourselves rather than through `mujoco.Renderer`,
so the choice does not depend on which module imported mujoco first.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import mujoco
import numpy as np

SUPPORTED_BACKENDS = ("egl", "osmesa", "glfw")
_chosen_backend: str | None = None


def _create_context(backend: str, width: int, height: int) -> Any:
    module = importlib.import_module(f"mujoco.{backend}")
    context = module.GLContext(width, height)
    context.make_current()
    return context


def create_gl_context(backends: Sequence[str], width: int, height: int) -> tuple[Any, str]:
    """An OpenGL context from the first backend that works (the first success is kept for the process)."""
    global _chosen_backend
    requested = os.environ.get("MUJOCO_GL", "").strip().lower()
    if _chosen_backend is not None:
        candidates = [_chosen_backend]
    elif requested in SUPPORTED_BACKENDS:
        candidates = [requested]
    else:
        candidates = [b for b in backends if b in SUPPORTED_BACKENDS]
    errors = []
    for backend in candidates:
        # PyOpenGL binds its platform on first import; each mujoco backend module sets it if unset.
        if "OpenGL" not in sys.modules:
            os.environ["PYOPENGL_PLATFORM"] = backend if backend != "glfw" else ""
        try:
            context = _create_context(backend, width, height)
        except Exception as err:  # every failure means "try the next backend"
            errors.append(f"{backend}: {err}")
            continue
        _chosen_backend = backend
        return context, backend
    raise RuntimeError(
        "no OpenGL backend for offscreen rendering works "
        f"({'; '.join(errors)}); install Mesa EGL or OSMesa, or set MUJOCO_GL"
    )


class CameraRenderer:
    """Renders named cameras of one model to (H, W, 3) uint8 arrays. Call `close()` when done."""

    def __init__(
        self,
        model: mujoco.MjModel,
        width: int,
        height: int,
        backends: Sequence[str] = ("egl", "osmesa"),
        hidden_groups: Sequence[int] = (),
        reflections: bool = True,
    ) -> None:
        self.model, self.width, self.height = model, width, height
        self._context, self.backend = create_gl_context(backends, width, height)
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._option = mujoco.MjvOption()
        # On by default: with constraint islands enabled it would recolour every body by island.
        self._option.flags[mujoco.mjtVisFlag.mjVIS_ISLAND] = 0
        for group in hidden_groups:
            self._option.geomgroup[group] = 0
        # Reflective materials (the arena's ground) are drawn with a second, mirrored pass of the scene;
        # the flag persists across mjv_updateScene, so it is set once.
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflections)
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._viewport = mujoco.MjrRect(0, 0, width, height)
        self._pixels = np.empty((height, width, 3), dtype=np.uint8)
        self._closed = False

    def render(self, data: mujoco.MjData, camera_id: int) -> np.ndarray:
        if self._closed:
            raise RuntimeError("renderer is closed")
        self._context.make_current()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(
            self.model,
            data,
            self._option,
            self._perturb,
            self._camera,
            mujoco.mjtCatBit.mjCAT_ALL,
            self._scene,
        )
        mujoco.mjr_render(self._viewport, self._scene, self._mjr)
        mujoco.mjr_readPixels(self._pixels, None, self._viewport, self._mjr)
        return np.flipud(self._pixels).copy()  # OpenGL rows start at the bottom

    def geom_ids(self, data: mujoco.MjData, camera_id: int) -> np.ndarray:
        """(H, W) int: the id of the geom each pixel shows (-1: none). Ground truth for what a camera sees,
        e.g. to check a perception model's masks; render it from a renderer without reflections."""
        flags = self._scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        try:
            pixels = self.render(data, camera_id).astype(np.int64)
        finally:
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        segment = pixels[..., 0] + (pixels[..., 1] << 8) + (pixels[..., 2] << 16)  # scene geom index + 1
        lookup = np.full(self._scene.ngeom + 2, -1, dtype=np.int64)
        for index in range(self._scene.ngeom):
            geom = self._scene.geoms[index]
            if geom.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lookup[index + 1] = geom.objid
        return lookup[np.clip(segment, 0, self._scene.ngeom + 1)]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mjr.free()
        self._context.free()

    def __del__(self) -> None:  # best effort; explicit close() avoids EGL teardown errors
        with contextlib.suppress(Exception):
            self.close()
