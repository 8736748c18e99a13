"""Where the package's data trees live, in a source checkout and in a colcon/pip install alike."""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path

PACKAGE = "gato_ros"
PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "config"


@cache
def share_dir() -> Path:
    """Root holding launch/, calibration/ and sim/: the source checkout, else share/gato_ros."""
    source_root = PACKAGE_DIR.parent
    if (source_root / "package.xml").is_file() and (source_root / "calibration").is_dir():
        return source_root
    try:  # a colcon install with ament_index on the path
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        return Path(sys.prefix) / "share" / PACKAGE


def calibration_dir() -> Path:
    return share_dir() / "calibration"


def sim_dir() -> Path:
    return share_dir() / "sim"


def launch_dir() -> Path:
    return share_dir() / "launch"


def policies_dir() -> Path:
    """Trained policies shipped with the package (each a checkpoint directory with its model card)."""
    return share_dir() / "policies"


@cache
def installed_package_dir(module: str, provides: str) -> Path:
    """Directory of an installed package, found without importing it (the dm-robotics wheels are read only
    for their asset files, and importing them would pull in their whole dependency tree)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{module} is not installed; it provides {provides}")
    return Path(next(iter(spec.submodule_search_locations)))
