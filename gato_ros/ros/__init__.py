"""Thin rclpy adapters around the ROS-free cores. Importing this package requires rclpy.

rclpy is imported here, first: when pyrealsense2's native libraries load before rclpy's, the process
segfaults at exit (pyrealsense2 2.59 + ROS 2 Kilted wheels), so every module of the package gets rclpy
loaded before the camera node pulls in pyrealsense2.
"""

import rclpy  # noqa: F401
