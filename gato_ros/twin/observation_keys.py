"""Observation keys the twin adds to the benchmark's proprioception, in one place for the twin, its expert and
the ROS observation assembly (which sit on different layers and must agree on the spelling)."""

ARM_ANGLES_KEY = "sawyer/joints/angle"  # the arm's seven joint angles (rad)
GRIPPER_ANGLE_KEY = "gripper/joints/angle"  # the finger driver's opening, 0 (open) .. 255 (closed)

# The gripper driver's speed in 0..255 units per second (positive: closing), the scale of
# ``gripper/joints/angle``; a real gripper's joint state reports it in rad/s. The expert lifts once the
# fingers have stopped on red, which a policy that sees only the angle cannot tell from their last closing
# steps.
GRIPPER_VELOCITY_KEY = "gripper/joints/velocity"
