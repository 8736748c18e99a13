"""The sensor side shared by the nodes that assemble observations (the policy node, the recorder): camera
images, joint states and object poses from the contract's topics into an `ObservationAssembler`, with the
same checks, so a recorded step holds exactly what the policy would be given."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import Image, JointState

from gato_ros.ros import contract
from gato_ros.ros.messages import image_array, joint_positions, joint_velocity, pose_array
from gato_ros.ros.observation import ObservationAssembler
from gato_ros.ros.runtime import GatoNode


class SensorNode(GatoNode):
    """A `GatoNode` that assembles observations: a subclass sets ``self.assembler``, ``self.joint_names``,
    ``self.gripper_joint`` and ``self.log_period_s``, calls `subscribe_sensors`, and overrides
    `on_sensor_input` (run after every accepted reading) where it needs to."""

    assembler: ObservationAssembler
    joint_names: list[str]
    gripper_joint: str
    log_period_s: float

    def subscribe_sensors(self, cameras: Sequence[str], object_poses: bool, **kwargs: Any) -> None:
        for camera in cameras:
            self.subscription(
                contract.camera_image(camera), lambda msg, c=camera: self.on_image(c, msg), **kwargs
            )
        self.subscription(contract.JOINT_STATES, self.on_joint_states, **kwargs)
        if object_poses:
            self.subscription(contract.OBJECT_POSES, self.on_object_poses, **kwargs)

    def on_sensor_input(self) -> None:
        """Called after each accepted reading (the policy node steps as soon as an observation is whole)."""

    def on_image(self, camera: str, msg: Image) -> None:
        received = time.monotonic()
        try:
            pixels = image_array(msg, "rgb8")
        except ValueError as err:
            self.get_logger().error(f"{camera}: {err}", throttle_duration_sec=self.log_period_s)
            return
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            self.get_logger().error(f"{camera}: not a colour image", throttle_duration_sec=self.log_period_s)
            return
        self.assembler.add_image(camera, pixels, contract.stamp_to_seconds(msg.header.stamp), received)
        self.on_sensor_input()

    def on_joint_states(self, msg: JointState) -> None:
        received = time.monotonic()
        arm = joint_positions(msg, self.joint_names)
        gripper = joint_positions(msg, [self.gripper_joint])
        if arm is None or gripper is None or not np.all(np.isfinite(arm)) or not np.isfinite(gripper[0]):
            self.get_logger().error(
                "joint state without finite positions for every arm joint and the gripper",
                throttle_duration_sec=self.log_period_s,
            )
            return
        self.assembler.add_joints(
            arm,
            float(gripper[0]),
            contract.stamp_to_seconds(msg.header.stamp),
            received,
            gripper_rad_s=joint_velocity(msg, self.gripper_joint),
        )
        self.on_sensor_input()

    def on_object_poses(self, msg: PoseArray) -> None:
        received = time.monotonic()
        if msg.header.frame_id != contract.WORLD_FRAME:
            self.get_logger().error(
                f"ignoring object poses in frame {msg.header.frame_id!r} (expected {contract.WORLD_FRAME!r})",
                throttle_duration_sec=self.log_period_s,
            )
            return
        try:
            self.assembler.add_object_poses(
                pose_array(msg), contract.stamp_to_seconds(msg.header.stamp), received
            )
        except ValueError as err:
            self.get_logger().error(f"ignoring object poses: {err}", throttle_duration_sec=self.log_period_s)
            return
        self.on_sensor_input()
