"""The one topic contract of gato_ros, shared by the real cell, the twin and every node.

Every topic, service, message type, QoS profile and frame id used anywhere in the stack is declared here
and nowhere else, so the twin looks to the stack exactly like the real cell. Only standard message types
are used (no custom .msg: the interface generators are not on PyPI).

Names are relative (``gato/action``), so a node's namespace (``ros.namespace``, ``__ns``, a launch file's
namespace) and remaps apply: two cells share one ROS graph under ``/cell1`` and ``/cell2``. Under the
default namespace they read ``/gato/action`` etc. Two stay absolute by ROS convention: ``/clock`` (a
namespaced sim stack remaps it, see `gato_ros.ros.launcher.NodeSpec`) and ``/diagnostics`` (aggregated
across the graph; each status names its node).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState, TimeReference
from std_msgs.msg import Bool, Float64, Float64MultiArray, Int64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory


class Qos(Enum):
    """The three QoS classes of the contract."""

    SENSOR = "sensor"  # best effort, keep last 5: images, where the newest frame is all that matters
    RELIABLE = "reliable"  # reliable, keep last 10: commands, actions, joint states, status
    LATCHED = "latched"  # reliable + transient local, keep last 1: e-stop state, late joiners see it

    def profile(self) -> QoSProfile:
        if self is Qos.SENSOR:
            return qos_profile_sensor_data
        if self is Qos.RELIABLE:
            return QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
            )
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )


@dataclass(frozen=True)
class Topic:
    """A topic of the contract: its name, message type, QoS class and what it carries."""

    name: str
    msg_type: type
    qos: Qos
    doc: str


@dataclass(frozen=True)
class Service:
    name: str
    srv_type: type
    doc: str


# Frames
WORLD_FRAME = "world"
BASE_FRAME = "base"


def camera_optical_frame(camera: str) -> str:
    return f"{camera}_optical_frame"


# Robot state (published by the real robot driver or the twin)
JOINT_STATES = Topic(
    "joint_states",
    JointState,
    Qos.RELIABLE,
    "arm joints right_j0..right_j6 and the gripper driver joint: position, velocity, effort",
)
CLOCK = Topic("/clock", Clock, Qos.RELIABLE, "simulated time (twin only; nodes run with use_sim_time)")
# Privileged state for state-based policies (tokenizer.observation.use_privileged): the twin knows it; on
# a real cell a pose estimator may publish the same topic.
OBJECT_POSES = Topic(
    "twin/object_poses",
    PoseArray,
    Qos.RELIABLE,
    "poses of the red, green and blue objects (in that order), frame world, header stamp = the joint state's "
    "of the same tick (twin: published only while subscribed; real cell: a pose estimator)",
)


def camera_image(camera: str) -> Topic:
    return Topic(f"cameras/{camera}/image_raw", Image, Qos.SENSOR, "rgb8 image, header stamp = exposure time")


def camera_info(camera: str) -> Topic:
    return Topic(f"cameras/{camera}/camera_info", CameraInfo, Qos.SENSOR, "intrinsics from calibration/")


def camera_depth(camera: str) -> Topic:
    return Topic(
        f"cameras/{camera}/depth/image_raw",
        Image,
        Qos.SENSOR,
        "16UC1 depth in millimetres (RealSense only, optional), same stamp as the colour frame",
    )


def camera_time_reference(camera: str) -> Topic:
    return Topic(
        f"cameras/{camera}/time_reference",
        TimeReference,
        Qos.SENSOR,
        "per frame: header.stamp = the image's ROS stamp, time_ref = the device's own timestamp, "
        "source = '<timestamp domain>:<serial>' (RealSense only)",
    )


# Policy output
ACTION = Topic(
    "gato/action",
    Float64MultiArray,
    Qos.RELIABLE,
    "5-D action [vx, vy, vz, wz, gripper]: tool-point velocity (m/s, world), yaw rate (rad/s), "
    "gripper (>0 closes)",
)
TELEOP_ACTION = Topic(
    "teleop/action",
    Float64MultiArray,
    Qos.RELIABLE,
    "the operator's 5-D action (gato-ros teleop), the layout of gato/action; obeyed only after a takeover",
)
ACTION_TOKENS = Topic("gato/action_tokens", Int64MultiArray, Qos.RELIABLE, "raw action token ids of the step")
POLICY_LATENCY = Topic(
    "gato/latency", Float64, Qos.RELIABLE, "seconds from observation receipt to action publication"
)
RESET_POLICY = Service("gato/reset", Trigger, "episode boundary: clear the decoder's KV cache")

# Commands to the arm (ros2_control forward-command style), published only by the command node
JOINT_VELOCITY_COMMAND = Topic(
    "joint_velocity_controller/commands",
    Float64MultiArray,
    Qos.RELIABLE,
    "7 joint velocities (rad/s), already inside every safety limit",
)
GRIPPER_COMMAND = Topic(
    "gripper_controller/commands",
    Float64MultiArray,
    Qos.RELIABLE,
    "1 gripper command in [-255, 255] (positive closes)",
)
JOINT_TRAJECTORY_COMMAND = Topic(
    "joint_trajectory_controller/joint_trajectory",
    JointTrajectory,
    Qos.RELIABLE,
    "alternative command interface: one-point trajectory one control period ahead",
)

# Safety
ESTOP_REQUEST = Topic("safety/estop", Bool, Qos.RELIABLE, "True latches an e-stop (False does not release)")
ESTOP_STATE = Topic("safety/estop_state", Bool, Qos.LATCHED, "latched e-stop state")
ESTOP_SERVICE = Service("safety/trigger_estop", Trigger, "latch an e-stop")
RELEASE_SERVICE = Service("safety/release_estop", Trigger, "explicitly release a latched e-stop")
ENABLE_SERVICE = Service("safety/enable", SetBool, "enable (ramp in) or disable (hold) policy control")
ACTION_SOURCE = Topic(
    "safety/action_source",
    String,
    Qos.LATCHED,
    "the action source the command node obeys: policy or teleop (every switch; recorders tag steps with it)",
)
TAKEOVER_SERVICE = Service(
    "safety/takeover",
    SetBool,
    "true: the operator (teleop/action) takes over from the policy at once; false: hand back to the policy; "
    "either way the arm stops and ramps in",
)
DIAGNOSTICS = Topic("/diagnostics", DiagnosticArray, Qos.RELIABLE, "safety counters: every clamp and hold")

# Recording (gato-ros record)
RECORD_START = Service("record/start", Trigger, "start recording an episode (a take)")
RECORD_END = Service(
    "record/end", SetBool, "end the take: true = success, false = failure (the operator's label); it is kept"
)
RECORD_DISCARD = Service(
    "record/discard", Trigger, "drop the take: nothing of it is written, its number is reused"
)
RECORD_STOP = Service("record/stop", Trigger, "stop the recorder (a take in progress is discarded)")

# Twin episode control
EPISODE_STATUS = Topic(
    "twin/episode",
    String,
    Qos.RELIABLE,
    "JSON: episode, seed, step, sim_time, clock, success, done, time_limit, physics_unstable (the physics "
    "diverged: the episode ended, never a success), stacked_since (sim s the current stack first stood, or "
    "null), triplet, objects",
)
RESET_EPISODE = Service("twin/reset", Trigger, "start the next seeded episode")

TOPICS: tuple[Topic, ...] = (
    JOINT_STATES,
    CLOCK,
    OBJECT_POSES,
    ACTION,
    TELEOP_ACTION,
    ACTION_TOKENS,
    POLICY_LATENCY,
    JOINT_VELOCITY_COMMAND,
    GRIPPER_COMMAND,
    JOINT_TRAJECTORY_COMMAND,
    ESTOP_REQUEST,
    ESTOP_STATE,
    ACTION_SOURCE,
    DIAGNOSTICS,
    EPISODE_STATUS,
)
SERVICES: tuple[Service, ...] = (
    RESET_POLICY,
    ESTOP_SERVICE,
    RELEASE_SERVICE,
    ENABLE_SERVICE,
    TAKEOVER_SERVICE,
    RECORD_START,
    RECORD_END,
    RECORD_DISCARD,
    RECORD_STOP,
    RESET_EPISODE,
)


def stamp_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def markdown_table(cameras: tuple[str, ...] = ("basket_front_left", "basket_front_right")) -> str:
    """The contract as the README's table (regenerate with `python -m gato_ros.ros.contract`)."""
    rows = ["| topic / service | type | QoS | carries |", "|---|---|---|---|"]

    def shown(name: str) -> str:  # as resolved under the default (root) namespace
        return name if name.startswith("/") else f"/{name}"

    per_camera = (camera_image, camera_info, camera_depth, camera_time_reference)
    topics = list(TOPICS) + [f(c) for c in cameras for f in per_camera]
    for t in topics:
        kind = f"{t.msg_type.__module__.split('.')[0]}/{t.msg_type.__name__}"
        rows.append(f"| `{shown(t.name)}` | `{kind}` | {t.qos.value} | {t.doc} |")
    for s in SERVICES:
        kind = f"{s.srv_type.__module__.split('.')[0]}/{s.srv_type.__name__}"
        rows.append(f"| `{shown(s.name)}` (service) | `{kind}` | — | {s.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
