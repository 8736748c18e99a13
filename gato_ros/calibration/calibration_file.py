"""Reading and writing calibration/<file>.yaml, the file the twin and the camera nodes read.

Per camera: `position` and `quaternion_wxyz` (MuJoCo camera convention) and `fovy_deg`, which the twin
uses; `intrinsics` (width, height, fx, fy, cx, cy, plumb_bob distortion), which the camera node's
CameraInfo uses; and `calibration` (how and when it was measured). Writing replaces only the cameras
given and keeps every other entry.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from gato_ros.calibration.geometry import Pose
from gato_ros.calibration.intrinsics import Intrinsics
from gato_ros.paths import calibration_dir

FILE_HEADER = """\
# Camera calibration of the RGB-stacking cell. World frame: robot base at the origin, z up.
# Extrinsics: position (m) and MuJoCo-convention quaternion (w, x, y, z) of the camera in the world,
# camera looking along its -z axis with +y up (MuJoCo / OpenGL convention).
# Intrinsics: fovy_deg, the vertical field of view (the twin renders an ideal pinhole with it); cameras
# calibrated by `gato-ros calibrate` also carry `intrinsics` (fx, fy, cx, cy in px at width x height,
# OpenCV convention, plumb_bob distortion k1 k2 p1 p2 k3), which the camera nodes publish as CameraInfo.
"""
POSITION_DECIMALS = 5  # 0.01 mm
QUATERNION_DECIMALS = 6
ANGLE_DECIMALS = 4


def cell_calibration_path(cameras_cfg: DictConfig) -> Path:
    """The file named by `cameras.calibration_file`: a name under calibration/, or an absolute path."""
    return calibration_dir() / str(cameras_cfg.calibration_file)


def load_cell_calibration(cameras_cfg: DictConfig) -> dict[str, Any]:
    """The cell's calibration as the twin scene and the camera nodes read it (the file must exist)."""
    return yaml.safe_load(cell_calibration_path(cameras_cfg).read_text())


def camera_intrinsics(calibration: Mapping[str, Any], camera: str, width: int, height: int) -> Intrinsics:
    """A camera's intrinsics at `width` x `height` from a calibration file's content.

    An entry either carries measured intrinsics (`intrinsics:`, as `gato-ros calibrate` writes for a real
    camera), resized to the requested size, or only `fovy_deg` (the twin's cameras): the ideal pinhole
    MuJoCo renders. Both follow the OpenCV convention, so the twin and a real camera publish the same thing.
    """
    entry = calibration["cameras"][camera]
    measured = entry.get("intrinsics")
    if measured:
        return Intrinsics.from_dict(measured).scaled_to(width, height)
    return Intrinsics.ideal(width, height, float(entry["fovy_deg"]))


def read_calibration(path: Path) -> dict[str, Any]:
    """The file's content, or an empty calibration when it does not exist yet."""
    if not path.is_file():
        return {"frame_id": "world", "cameras": {}}
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("frame_id", "world")
    data["cameras"] = dict(data.get("cameras") or {})
    return data


def camera_pose(entry: Mapping[str, Any]) -> Pose:
    """A camera entry's pose in the world (MuJoCo camera convention)."""
    return Pose.from_wxyz(entry["position"], entry["quaternion_wxyz"])


def camera_entry(
    camera_in_world: Pose, intrinsics: Intrinsics, provenance: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One camera's entry: the twin's pose and fovy plus the measured intrinsics."""
    entry: dict[str, Any] = {
        "position": [round(float(v), POSITION_DECIMALS) for v in camera_in_world.position],
        "quaternion_wxyz": [round(float(v), QUATERNION_DECIMALS) for v in camera_in_world.quaternion_wxyz],
        "fovy_deg": round(intrinsics.fovy_deg, ANGLE_DECIMALS),
        "intrinsics": intrinsics.to_dict(),
    }
    if provenance:
        entry["calibration"] = dict(provenance)
    return entry


def updated_calibration(
    previous: Mapping[str, Any], entries: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """`previous` with the given cameras' entries replaced (others kept, in their order)."""
    data = {key: value for key, value in previous.items() if key != "cameras"}
    data.setdefault("frame_id", "world")
    cameras = dict(previous.get("cameras") or {})
    cameras.update({name: dict(entry) for name, entry in entries.items()})
    data["cameras"] = cameras
    return data


class _FlowListDumper(yaml.SafeDumper):
    """Lists of numbers on one line, as the hand-written file has them."""


def _represent_list(dumper: yaml.SafeDumper, values: list) -> yaml.Node:
    flow = all(isinstance(v, int | float) for v in values)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", values, flow_style=flow)


_FlowListDumper.add_representer(list, _represent_list)


def format_calibration(data: Mapping[str, Any]) -> str:
    body = yaml.dump(dict(data), Dumper=_FlowListDumper, sort_keys=False, default_flow_style=False)
    return FILE_HEADER + body


def write_calibration(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash never leaves the twin a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = format_calibration(data)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
