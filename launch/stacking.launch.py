"""ROS 2 launch file of the gato_ros stacking stack (needs a full ROS 2 install with launch_ros).

    ros2 launch gato_ros stacking.launch.py sim:=true                                   # on the twin
    ros2 launch gato_ros stacking.launch.py sim:=false checkpoint:=/path/ckpt device:=cuda \
        overrides:="robot.driver_command_timeout_s=0.1"   # the cell; the arm driver's own command timeout
    ros2 launch gato_ros stacking.launch.py sim:=true overrides:="ros.twin.action_source=expert"

The node list and every node's arguments come from `gato_ros.ros.launcher.stack_plan`, the same function
behind `gato-ros launch stacking` (for installs without launch_ros), so both start the same stack.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from gato_ros.config import load_config
from gato_ros.ros.launcher import PACKAGE, launch_overrides, stack_plan

TRUE_WORDS = ("true", "1", "yes")


def stack_nodes(context, *args, **kwargs):
    """Resolve the launch arguments, compose the config and turn the stack plan into Node actions."""
    sim = LaunchConfiguration("sim").perform(context).strip().lower() in TRUE_WORDS
    checkpoint = LaunchConfiguration("checkpoint").perform(context).strip() or None
    device = LaunchConfiguration("device").perform(context).strip() or None
    extra = LaunchConfiguration("overrides").perform(context).split()
    overrides = launch_overrides(sim, checkpoint, device, extra)
    cfg = load_config(overrides)
    return [
        Node(
            package=PACKAGE,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace or None,  # ros.namespace (overrides:="ros.namespace=/cell1")
            remappings=[("/clock", f"{spec.namespace}/clock")] if spec.namespace else None,
            arguments=list(spec.args),
            output="screen",
            emulate_tty=True,
        )
        for spec in stack_plan(cfg, sim, overrides)
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "sim", default_value="true", description="true: MuJoCo twin; false: real cell"
            ),
            DeclareLaunchArgument(
                "checkpoint",
                default_value="",
                description="policy checkpoint directory or shipped policy name (empty: policy.checkpoint)",
            ),
            DeclareLaunchArgument(
                "device", default_value="auto", description="policy device: auto | cpu | cuda"
            ),
            DeclareLaunchArgument(
                "overrides", default_value="", description="space-separated hydra overrides for every node"
            ),
            OpaqueFunction(function=stack_nodes),
        ]
    )
