"""The MuJoCo twin of DeepMind's RGB-stacking cell (ROS-free): scene, physics, cameras, success, expert."""

from gato_ros.twin.env import TWIN_VERSION, StackingTwin, TwinStep
from gato_ros.twin.expert import EXPERT_VERSION, ScriptedExpert, Stage
from gato_ros.twin.scene import SceneIndex, build_scene, build_scene_spec
from gato_ros.twin.success import StackCheck, check_stack, is_stacked

__all__ = [
    "EXPERT_VERSION",
    "TWIN_VERSION",
    "SceneIndex",
    "ScriptedExpert",
    "StackCheck",
    "StackingTwin",
    "Stage",
    "TwinStep",
    "build_scene",
    "build_scene_spec",
    "check_stack",
    "is_stacked",
]
