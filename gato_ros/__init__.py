"""gato_ros: a Gato-style generalist policy on a ROS 2 arm for RGB-object stacking, with a MuJoCo twin.

Sub-packages: `gato_ros.gato` (ROS-free model core), `gato_ros.twin` (ROS-free MuJoCo twin),
`gato_ros.safety` (ROS-free command limits) and `gato_ros.ros` (thin rclpy nodes around them).
"""

__version__ = "0.1.0"
