"""Thin rclpy adapters around the ROS-free cores. Importing this package requires rclpy."""
