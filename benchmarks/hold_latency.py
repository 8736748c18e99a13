"""Watchdog hold latency of the command node over repeated policy "kills", on the node's own clock.

The command node runs in-process on sim time; this script plays the cell (joint states every tick) and the
policy (an action every period at a random phase to the node's timer), advancing the clock in fifths of a
period. Each trial the policy stops ("dies"); the node's own record of the delay from the last action's
receipt to the first stale-action hold (`CommandNode.stale_hold_latencies_s`, also on /diagnostics) is
collected. Prints p50 and max in control periods for act-on-arrival (default) and timer-only ticks.

    .venv/bin/python benchmarks/hold_latency.py [--kills 20]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from gato_ros.config import load_config
from gato_ros.control import ArmKinematics
from gato_ros.ros import contract
from gato_ros.ros.command_node import CommandNode
from gato_ros.ros.launcher import isolated_domain_id
from gato_ros.ros.messages import time_msg
from gato_ros.safety import SafetyLimits

ACTION = [0.02, 0.0, 0.0, 0.0, 1.0]
SUBSTEPS = 5  # clock steps per control period


def measure(act_on_arrival: bool, kills: int, seed: int) -> list[float]:
    overrides = [
        "safety.start_enabled=true",
        "ros.use_sim_time=true",
        f"safety.act_on_arrival={act_on_arrival}",
    ]
    cfg = load_config(overrides)
    limits = SafetyLimits.from_config(cfg)
    q, _ = ArmKinematics(cfg.robot).inverse_kinematics(
        0.5 * (limits.workspace_low + limits.workspace_high), 0.0
    )
    context = Context()
    rclpy.init(args=[], context=context)
    node = CommandNode(cfg, context=context)
    cell = Node("cell", context=context, parameter_overrides=[Parameter("use_sim_time", value=True)])
    clock_pub = cell.create_publisher(Clock, contract.CLOCK.name, contract.CLOCK.qos.profile())
    joint_pub = cell.create_publisher(
        JointState, contract.JOINT_STATES.name, contract.JOINT_STATES.qos.profile()
    )
    action_pub = cell.create_publisher(Float64MultiArray, contract.ACTION.name, contract.ACTION.qos.profile())
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(cell)
    period = limits.control_period
    sim = 10.0
    rng = np.random.default_rng(seed)

    def spin(until) -> None:
        for _ in range(2000):
            if until():
                return
            executor.spin_once(timeout_sec=0.002)

    def advance(steps: int) -> None:
        nonlocal sim
        for _ in range(steps):
            sim += period / SUBSTEPS
            clock_pub.publish(Clock(clock=time_msg(sim)))
            spin(lambda now=sim: abs(node.now_s() - now) < 1e-9)
            msg = JointState(name=[*cfg.robot.joint_names, "gripper_driver"], position=[*q.tolist(), 0.0])
            msg.header.stamp = time_msg(sim)
            joint_pub.publish(msg)
            for _ in range(5):
                executor.spin_once(timeout_sec=0.002)

    try:
        for _ in range(kills):
            phase = int(rng.integers(0, SUBSTEPS))
            advance(phase)
            for _ in range(15):  # a live policy
                received = node.events["action_messages"]
                action_pub.publish(Float64MultiArray(data=ACTION))
                spin(lambda received=received: node.events["action_messages"] > received)
                advance(SUBSTEPS)
            before = len(node.stale_hold_latencies_s)
            advance(4 * SUBSTEPS)  # dead
            if len(node.stale_hold_latencies_s) == before:
                raise RuntimeError("no stale-action hold after the policy died")
    finally:
        latencies = list(node.stale_hold_latencies_s)
        executor.shutdown()
        node.destroy_node()
        cell.destroy_node()
        rclpy.shutdown(context=context)
    return [latency / period for latency in latencies]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(isolated_domain_id()))
    stale = float(load_config([]).safety.stale_after_periods)
    print(f"stale after {stale:g} periods; {args.kills} policy kills each, clock in 1/{SUBSTEPS} periods")
    for act_on_arrival in (True, False):
        periods = measure(act_on_arrival, args.kills, args.seed)
        mode = "act on arrival" if act_on_arrival else "timer only    "
        print(
            f"{mode}: hold latency p50 {np.percentile(periods, 50):.2f}, max {max(periods):.2f} periods "
            f"(n={len(periods)}, within {stale:g}: {sum(p <= stale + 1e-6 for p in periods)}/{len(periods)})"
        )


if __name__ == "__main__":
    main()
