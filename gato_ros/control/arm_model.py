"""The Sawyer + Robotiq FTS300 + Robotiq 2F-85 arm as a `mujoco.MjSpec`, from the dm-robotics wheels' assets.

One builder serves the kinematics model (control) and the twin's scene, so the tool point the controller
steers is exactly the tool point the simulation moves. Assets are read in place from the installed wheel,
never copied into the repository.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import mujoco

from gato_ros.paths import installed_package_dir

ARM_JOINTS = ("right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6")
GRIPPER_PREFIX = "gripper/"
WRIST_SENSOR_PREFIX = "fts/"
PINCH_SITE = GRIPPER_PREFIX + "pinch_site"
FLANGE_SITE = "wrist_site"
GRIPPER_DRIVER_JOINTS = (GRIPPER_PREFIX + "left_driver_joint", GRIPPER_PREFIX + "right_driver_joint")
GRIPPER_TENDON = GRIPPER_PREFIX + "split"
# The gripper is mounted rotated -90 deg about the flange z axis on the real Sawyer (dm_robotics
# `use_rotated_gripper`); the wheel's Sawyer model does not include that mount.
GRIPPER_MOUNT_QUAT = (0.70711, 0.0, 0.0, 0.70711)
# Joint classes the wheel's sawyer.xml refers to but defines only in its actuator files.
_SAWYER_JOINT_CLASSES = ("large_joint", "medium_joint", "small_joint")


@cache
def moma_models_dir() -> Path:
    """`dm_robotics/moma/models` inside the installed dm-robotics-moma wheel (found without importing it)."""
    return installed_package_dir("dm_robotics.moma", "the Sawyer/Robotiq assets") / "models"


def sawyer_xml() -> Path:
    return moma_models_dir() / "vendor/rethink/sawyer_description/mjcf/sawyer.xml"


def gripper_xml() -> Path:
    return moma_models_dir() / "vendor/robotiq_beta_robots/mujoco/robotiq_2f85_v2.xml"


def wrist_sensor_xml() -> Path:
    return moma_models_dir() / "end_effectors/wrist_sensors/robotiq_fts300.xml"


def _load_sawyer_spec() -> mujoco.MjSpec:
    path = sawyer_xml()
    text = path.read_text()
    classes = "".join(f"<default class='{name}'/>" for name in _SAWYER_JOINT_CLASSES)
    spec = mujoco.MjSpec.from_string(text.replace("<default>", "<default>" + classes, 1))
    # from_string has no model directory: make the wheel's relative meshdir absolute.
    spec.meshdir = str((path.parent / spec.meshdir).resolve())
    return spec


def _load_spec(path: Path) -> mujoco.MjSpec:
    spec = mujoco.MjSpec.from_file(str(path))
    spec.meshdir = str((path.parent / spec.meshdir).resolve())
    return spec


def build_arm_spec(with_wrist_sensor: bool = True) -> mujoco.MjSpec:
    """Sawyer with the FTS300 wrist sensor and the 2F-85 gripper attached to its flange.

    The arm base sits at the world origin. Bodies keep the wheel's names; the wrist sensor's and gripper's
    are prefixed with `fts/` and `gripper/`. No actuators for the arm: the twin adds its own.
    """
    spec = _load_sawyer_spec()
    mount = spec.body("hand").add_site(name="gripper_mount", quat=list(GRIPPER_MOUNT_QUAT))
    gripper = _load_spec(gripper_xml())
    if with_wrist_sensor:
        sensor = _load_spec(wrist_sensor_xml())
        mount.attach_body(sensor.body("base_mount"), WRIST_SENSOR_PREFIX, "")
        mount = spec.site(WRIST_SENSOR_PREFIX + "ft_sensor_attachment_site")
    mount.attach_body(gripper.body("base_mount"), GRIPPER_PREFIX, "")
    return spec
