"""Camera calibration (ROS-free): checkerboard detection, intrinsics, extrinsics against a board at a
known world pose, and the calibration/ file the twin and the camera nodes read. `gato-ros calibrate`
(`gato_ros.tools.calibrate`) is its command line."""

from gato_ros.calibration.board import (
    Board,
    BoardObservation,
    CharucoBoard,
    Checkerboard,
    DetectionSettings,
    board_from_config,
)
from gato_ros.calibration.calibration_file import (
    camera_entry,
    camera_intrinsics,
    camera_pose,
    load_cell_calibration,
    read_calibration,
    updated_calibration,
    write_calibration,
)
from gato_ros.calibration.camera import CalibrationError, CameraCalibration, calibrate_camera
from gato_ros.calibration.extrinsics import ExtrinsicsResult, solve_extrinsics
from gato_ros.calibration.geometry import Pose, mujoco_camera_pose, optical_camera_pose, pose_change
from gato_ros.calibration.intrinsics import Intrinsics, IntrinsicsResult, calibrate_intrinsics

__all__ = [
    "Board",
    "BoardObservation",
    "CalibrationError",
    "CameraCalibration",
    "CharucoBoard",
    "Checkerboard",
    "DetectionSettings",
    "ExtrinsicsResult",
    "Intrinsics",
    "IntrinsicsResult",
    "Pose",
    "board_from_config",
    "calibrate_camera",
    "calibrate_intrinsics",
    "camera_entry",
    "camera_intrinsics",
    "camera_pose",
    "load_cell_calibration",
    "mujoco_camera_pose",
    "optical_camera_pose",
    "pose_change",
    "read_calibration",
    "solve_extrinsics",
    "updated_calibration",
    "write_calibration",
]
