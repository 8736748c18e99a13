"""ament_python build of gato_ros: installs the Python package (with its config tree), its console entry
points, and the launch/, calibration/, sim/ and policies/ trees under share/gato_ros as colcon expects."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "gato_ros"
ROOT = Path(__file__).parent


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """Map every file under `folder` to share/gato_ros/<same relative path>."""
    entries: dict[str, list[str]] = {}
    for path in sorted((ROOT / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(ROOT)
            entries.setdefault(str(Path("share") / PACKAGE / rel.parent), []).append(str(rel))
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "ros2_ws"]),
    package_data={PACKAGE: ["config/**/*.yaml", "config/*.yaml", "assets/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("launch"),
        *share_tree("calibration"),
        *share_tree("sim"),
        *share_tree("policies"),
        # the config tree is package data (gato_ros/config, read through gato_ros.paths.CONFIG_DIR): once
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="gato_ros maintainers",
    maintainer_email="maintainers@gato-ros.dev",
    description="Gato-style generalist policy on a ROS 2 arm for RGB-object stacking, with a MuJoCo twin",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "gato-ros = gato_ros.cli:main",
            # the nodes, for launch_ros (`ros2 run gato_ros twin_node`, launch/stacking.launch.py)
            "twin_node = gato_ros.ros.twin_node:main",
            "camera_node = gato_ros.ros.camera_node:main",
            "policy_node = gato_ros.ros.policy_node:main",
            "command_node = gato_ros.ros.command_node:main",
            "teleop_node = gato_ros.ros.teleop_node:main",
            "record_node = gato_ros.ros.record_node:main",
            "live_view_node = gato_ros.ros.live_view_node:main",
        ],
    },
)
