"""Suite-wide test settings and the ROS context fixtures shared by the node tests.

Hypothesis: no per-example deadline (these machines are shared and noisy; speed is measured by
benchmarks/, never by tests). Under CI (`CI=true`) the examples are derandomized so a CI run is
reproducible; locally every run explores new examples.
"""

import os
from collections.abc import Iterator

import pytest
import rclpy  # first: importing pyrealsense2 before rclpy segfaults the process at exit
from hypothesis import HealthCheck, settings
from rclpy.context import Context

from gato_ros.ros.launcher import isolated_domain_id, ros_domain

settings.register_profile("local", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, print_blob=True
)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "local")


@pytest.fixture
def ros_context() -> Iterator[Context]:
    """An rclpy context of the test's own, on a ROS domain of this process's own (no cross-talk)."""
    context = Context()
    rclpy.init(context=context, domain_id=isolated_domain_id())
    yield context
    if context.ok():
        rclpy.shutdown(context=context)


@pytest.fixture
def ros_default_context() -> Iterator[None]:
    """rclpy's default context, initialised on a ROS domain of this process's own."""
    with ros_domain(isolated_domain_id()):
        rclpy.init()
        yield
        rclpy.shutdown()
