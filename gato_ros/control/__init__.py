"""ROS-free arm control: Sawyer + gripper kinematics and the benchmark's Cartesian velocity controller."""

from gato_ros.control.cartesian import CartesianVelocityController
from gato_ros.control.kinematics import ArmKinematics, ToolState, down_rotation, tool_yaw

__all__ = ["ArmKinematics", "CartesianVelocityController", "ToolState", "down_rotation", "tool_yaw"]
