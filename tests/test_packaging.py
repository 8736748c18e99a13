"""Packaging for ROS users: `colcon build` of a copy of ros2_ws/ (the ament_python package through its
relative link), the install tree and the ament index; package.xml's dependencies; the requirements split."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gato_ros"


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout: {out.stderr.strip()}")
    return [name for name in out.stdout.splitlines() if (ROOT / name).exists() or (ROOT / name).is_symlink()]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent)) or shutil.which("colcon")
    if colcon is None:
        pytest.skip("colcon is not installed (requirements-dev.txt: colcon-common-extensions)")
    repo = tmp_path_factory.mktemp("repo")
    archive = repo / "tracked.tar"
    with tarfile.open(archive, "w") as tar:  # exactly what a clone holds: no .venv, outputs or data
        for name in tracked_files():
            tar.add(ROOT / name, arcname=name, recursive=False)
    with tarfile.open(archive) as tar:
        tar.extractall(repo, filter="tar")
    archive.unlink()
    workspace = repo / "ros2_ws"
    assert (workspace / "src" / PACKAGE).is_symlink()
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(repo), "LANG": "C.UTF-8"}
    result = subprocess.run(
        [colcon, "build", "--event-handlers", "console_direct-"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workspace / "install" / PACKAGE


def test_colcon_builds_the_workspace_into_a_complete_install_tree(colcon_install: Path) -> None:
    share = colcon_install / "share" / PACKAGE
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "stacking.launch.py").is_file()
    assert (share / "calibration").is_dir() and any((share / "calibration").iterdir())
    assert (share / "sim").is_dir()
    assert (share / "policies" / "default" / "config.json").exists()
    # the ament index knows the package (ros2 launch / ros2 run find it through this marker)
    assert (colcon_install / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    # the nodes launch_ros runs, and the CLI
    nodes = ("twin_node", "camera_node", "policy_node", "command_node", "teleop_node", "record_node")
    nodes += ("live_view_node",)
    for executable in (*nodes, "gato-ros"):
        assert (colcon_install / "lib" / PACKAGE / executable).is_file(), executable
    # the config tree once: as package data beside the code that reads it, not again under share/
    configs = sorted(p.relative_to(colcon_install) for p in colcon_install.rglob("config.yaml"))
    assert len(configs) == 1 and "site-packages" in str(configs[0]), configs


def test_package_xml_declares_what_the_code_imports_with_rosdep_keys() -> None:
    tree = ET.parse(ROOT / "package.xml")
    depends = {e.text for e in tree.getroot() if e.tag in {"exec_depend", "depend"}}
    for key in ("rclpy", "launch_ros", "python3-numpy", "python3-yaml", "python3-matplotlib",
                "python3-tqdm", "python3-imageio", "python3-torch", "python3-mujoco-pip"):  # fmt: skip
        assert key in depends, key


def test_requirements_split_keeps_ros_wheels_out_of_the_full_ros_install() -> None:
    python = (ROOT / "requirements-python.txt").read_text()
    assert "ros-" not in python and "torch==" in python and "mujoco==" in python
    assert "ros-rclpy" in (ROOT / "requirements-ros.txt").read_text()
    everything = (ROOT / "requirements.txt").read_text().split()
    for part in ("requirements-python.txt", "requirements-ros.txt", "requirements-dev.txt"):
        assert part in everything
    assert "requirements-python.txt" in (ROOT / "ros2_ws" / "README.md").read_text()
