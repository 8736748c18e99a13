"""ROS-free parts of `gato-ros eval` (gato_ros/tools/eval.py): statistics, episode attribution, reports."""

from gato_ros.evaluation.stats import WILSON_Z, latency_summary, success_summary, wilson_interval

__all__ = ["WILSON_Z", "latency_summary", "success_summary", "wilson_interval"]
