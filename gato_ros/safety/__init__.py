"""ROS-free safety layer: joint-velocity command limits and the supervisor (watchdog, e-stop, ramp-in).

Always on: the config sets the limits' values, never whether they apply. `gato_ros.ros.command_node`
is its only user on the robot; it runs every command through `SafetySupervisor.tick`.
"""

from gato_ros.safety.inputs import InputError, parse_action, parse_joint_state
from gato_ros.safety.limits import (
    CommandLimiter,
    LimitedCommand,
    Reason,
    SafetyConfigError,
    SafetyLimits,
    workspace_distance,
)
from gato_ros.safety.supervisor import CommandRequest, JointSample, SafeCommand, SafetySupervisor

__all__ = [
    "CommandLimiter",
    "CommandRequest",
    "InputError",
    "JointSample",
    "LimitedCommand",
    "Reason",
    "SafeCommand",
    "SafetyConfigError",
    "SafetyLimits",
    "SafetySupervisor",
    "parse_action",
    "parse_joint_state",
    "workspace_distance",
]
