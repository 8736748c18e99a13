"""The MuJoCo twin as a ROS 2 node: to the rest of the stack it looks exactly like the real cell.

It publishes what the cell's drivers publish (JOINT_STATES, each policy camera's Image + CameraInfo) and
consumes what the cell's controllers consume (JOINT_VELOCITY_COMMAND + GRIPPER_COMMAND, or
JOINT_TRAJECTORY_COMMAND, per ``safety.command_interface``, which the command node obeys too), applied
through `StackingTwin.step_joint_velocity`. It also owns the simulated clock (CLOCK; the other nodes run with
``use_sim_time``) and the episodes (EPISODE_STATUS as JSON, RESET_EPISODE service, automatic next episode).
With each observation it publishes the privileged object poses (OBJECT_POSES, for state-based policies)
while someone subscribes to them.

Timing. Each tick advances one control period. ``ros.twin.realtime_factor`` r > 0 ticks every
period / r wall seconds (1.0 = real time); r = 0 is lock-step: the next tick follows as soon as the stack
has answered the last observation (an ACTION, unless the twin is its own action source, and a joint
command), or after ``lockstep_wait_s`` (a dead node cannot freeze the clock); a command the command node
owes (for an ACTION it heard, or its watchdog's hold once a tick went without one) is waited for up to
``lockstep_owed_command_wait_s``, so its hold is stamped on time however starved it is. Evaluation
runs as fast as the stack, with the same one-tick command delay as in real time. Within a tick the twin
applies the newest command, steps, then publishes the observation (stamped with the new sim time) *before* the
clock, so a node woken by the clock already has that observation. A new episode (RESET_EPISODE, or
``ros.twin.auto_reset`` after the last one ended) starts at the next tick, in place of a physics step, so the
stack's answer to the old episode's last observation is never taken for the answer to the new one's first.

Like a ros2_control forward-command controller the twin holds the last command, and zeroes the joint
velocity once no command has arrived for ``command_timeout_s`` of sim time. Before the first episode it
waits (clock running, physics paused, arm still) until the stack is up: a joint command and, unless the
twin is its own action source, an ACTION have been heard, or ``wait_for_stack_s`` has passed.

With ``ros.twin.action_source=expert`` the twin publishes the scripted expert's ACTION for each new
observation (the expert needs the privileged object poses, which exist only here); with ``random`` it
publishes a uniformly random ACTION within ``control.action_low/high`` instead (a baseline), drawn from a
``numpy.random.default_rng(episode seed)``, one draw per new observation (held ticks repeat it), so a seed
reproduces its episode's actions. The command node turns either into joint commands as it would a
policy's.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from gato_ros.ros import contract
from gato_ros.ros.messages import (
    camera_info_msg,
    camera_intrinsics,
    float_array_msg,
    image_msg,
    joint_state_msg,
    load_calibration,
    pose_array_msg,
    time_msg,
)
from gato_ros.ros.runtime import GatoNode, run_node
from gato_ros.twin.env import StackingTwin, TwinStep
from gato_ros.twin.observation_keys import GRIPPER_VELOCITY_KEY

LOCKSTEP = 0.0
# ros.twin.action_source: who publishes ACTION. "policy" is the policy node; the others are the twin itself.
POLICY_SOURCE = "policy"
TWIN_SOURCES = ("expert", "random")


def trajectory_velocity(
    msg: JointTrajectory, joint_names: list[str], joint_positions: np.ndarray, period: float
) -> np.ndarray | None:
    """Joint velocities of a one-point trajectory (in `joint_names` order): its velocities if given, else
    the ones that reach its positions at its time_from_start (at least one control period). A trajectory
    without points is the command node's hold ("stop where you are", as for a ros2_control joint
    trajectory controller): zero velocity. None if it does not name every arm joint once or holds
    non-finite values."""
    if not msg.points:
        return np.zeros(len(joint_names))
    names = list(msg.joint_names)
    if sorted(names) != sorted(joint_names) or len(set(names)) != len(names):
        return None
    order = [names.index(n) for n in joint_names]
    point = msg.points[0]
    if len(point.velocities) == len(names):
        qdot = np.asarray(point.velocities, dtype=float)[order]
    elif len(point.positions) == len(names):
        horizon = point.time_from_start.sec + 1e-9 * point.time_from_start.nanosec
        target = np.asarray(point.positions, dtype=float)[order]
        qdot = (target - joint_positions) / max(horizon, period)
    else:
        return None
    return qdot if np.all(np.isfinite(qdot)) else None


class TwinNode(GatoNode):
    """Steps `StackingTwin` from ROS joint commands and publishes the cell's sensors and sim clock."""

    SETTINGS = ("control", "twin", "ros.twin", "cameras")

    def __init__(self, cfg: DictConfig, twin: StackingTwin | None = None, **kwargs: Any) -> None:
        super().__init__("twin", cfg, use_sim_time=False, **kwargs)  # it *is* the sim clock
        tcfg = cfg.ros.twin
        # the node renders a camera only when its image topic has subscribers (see publish_observation)
        self.twin = twin if twin is not None else StackingTwin(cfg, render=False)
        self.lazy_images = bool(tcfg.lazy_images)
        self.period = self.twin.control_period
        self.realtime_factor = float(tcfg.realtime_factor)
        if self.realtime_factor < 0:
            raise ValueError("ros.twin.realtime_factor must be >= 0 (0 = lock-step)")
        self.command_timeout_ticks = int(np.floor(float(tcfg.command_timeout_s) / self.period + 1e-9))
        self.auto_reset = bool(tcfg.auto_reset)
        self.seed_stride = int(tcfg.seed_stride)
        self.action_source = str(tcfg.action_source)
        if self.action_source not in (POLICY_SOURCE, *TWIN_SOURCES):
            choices = " | ".join((POLICY_SOURCE, *TWIN_SOURCES))
            raise ValueError(f"ros.twin.action_source must be {choices}, not {self.action_source}")
        self.twin_acts = self.action_source in TWIN_SOURCES  # the twin publishes ACTION itself
        self.action_low = np.asarray(cfg.control.action_low, dtype=float)
        self.action_high = np.asarray(cfg.control.action_high, dtype=float)
        self.joint_names = [str(n) for n in cfg.robot.joint_names]
        self.num_joints = len(self.joint_names)
        self.gripper_joint = str(cfg.robot.gripper.joint_name)
        self.gripper_range = np.asarray(cfg.robot.gripper.driver_range, dtype=float)
        self.gripper_command_max = float(cfg.robot.gripper.command_range[1])
        self.cameras = [str(c) for c in cfg.cameras.policy_cameras]
        calibration = load_calibration(cfg)
        width, height = int(cfg.cameras.width), int(cfg.cameras.height)
        self.intrinsics = {c: camera_intrinsics(calibration, c, width, height) for c in self.cameras}

        self.joint_pub = self.publisher(contract.JOINT_STATES)
        self.clock_pub = self.publisher(contract.CLOCK)
        self.status_pub = self.publisher(contract.EPISODE_STATUS)
        self.image_pubs = {c: self.publisher(contract.camera_image(c)) for c in self.cameras}
        self.info_pubs = {c: self.publisher(contract.camera_info(c)) for c in self.cameras}
        self.poses_pub = self.publisher(contract.OBJECT_POSES)
        self.action_pub = self.publisher(contract.ACTION) if self.twin_acts else None
        self.expert = self._make_expert() if self.action_source == "expert" else None
        # random source: the episode's generator and its draw for the newest observation
        self.random_rng: np.random.Generator | None = None
        self.random_action: np.ndarray | None = None

        interface = str(cfg.safety.command_interface)
        if interface == "velocity":
            self.subscription(contract.JOINT_VELOCITY_COMMAND, self.on_velocity_command)
        elif interface == "trajectory":
            self.subscription(contract.JOINT_TRAJECTORY_COMMAND, self.on_trajectory_command)
        else:
            raise ValueError(f"safety.command_interface must be velocity or trajectory, not {interface}")
        self.subscription(contract.GRIPPER_COMMAND, self.on_gripper_command)
        self.subscription(contract.ACTION, self.on_action)
        self.service(contract.RESET_EPISODE, self.on_reset)

        # command state: the newest command and the tick it arrived in
        self.qdot_command = np.zeros(self.num_joints)
        self.gripper_command = -self.gripper_command_max  # open
        self.last_command_tick: int | None = None
        self.heard_action = self.twin_acts
        self.command_since_tick = self.action_since_tick = False
        # lock-step: what the last two ticks' waits heard, (ACTION, command) each, newest last, and when
        # (wall) the current wait began
        self.last_waits: list[tuple[bool, bool]] = [(False, False), (False, False)]
        self.lockstep_owed_wait_s = float(tcfg.lockstep_owed_command_wait_s)
        self.wait_started = time.monotonic()

        # clock and episodes: `tick` counts control periods since the node started; /clock never resets
        self.tick_count = 0
        self.episode = -1
        self.resets_pending = 0  # episodes to start at the next tick (RESET_EPISODE requests, auto_reset)
        self.episode_done = False
        # lock-step ticks of this episode that came on the timeout, not on the stack's answer: the answer
        # then comes late and can release a later tick, with its command a tick late (in the status)
        self.lockstep_timeouts = 0
        self.last_step: TwinStep | None = None
        self.held_observation: dict[str, np.ndarray] | None = None  # the still world while holding
        self.waiting_for_stack = float(tcfg.wait_for_stack_s) > 0
        self.wait_deadline = time.monotonic() + float(tcfg.wait_for_stack_s)
        self.pace_report_s = float(tcfg.pace_report_s)
        self.pace_tolerance = float(tcfg.pace_tolerance)
        self.log_period_s = float(tcfg.log_period_s)
        self._pace_start: float | None = None
        self._pace_ticks = 0

        self.start_episode()
        if self.realtime_factor == LOCKSTEP:
            self.timer = self.create_timer(float(tcfg.lockstep_wait_s), self._on_lockstep_timer)
        else:
            self.timer = self.create_timer(self.period / self.realtime_factor, self.tick)
        mode = "lock-step" if self.realtime_factor == LOCKSTEP else f"{self.realtime_factor:g}x real time"
        actor = {"policy": "the policy", "expert": "the scripted expert", "random": "uniform random draws"}
        self.get_logger().info(
            f"twin at {1.0 / self.period:g} Hz, {mode}, commands via {interface}, actions from "
            f"{actor[self.action_source]}"
        )

    def _make_expert(self) -> Any:
        from gato_ros.twin.expert import ScriptedExpert

        return ScriptedExpert(self.cfg)

    # -- time ----------------------------------------------------------------------------------------
    @property
    def clock_s(self) -> float:
        """Sim seconds since the node started (starts at one period: ROS reads 0 as "no time yet")."""
        return (self.tick_count + 1) * self.period

    # -- commands ------------------------------------------------------------------------------------
    def on_velocity_command(self, msg: Float64MultiArray) -> None:
        qdot = np.asarray(msg.data, dtype=float)
        if qdot.shape != (self.num_joints,) or not np.all(np.isfinite(qdot)):
            self.get_logger().error(
                f"ignoring a joint velocity command of {qdot.size} values "
                f"(expected {self.num_joints} finite ones)",
                throttle_duration_sec=self.log_period_s,
            )
            return
        self._accept_command(qdot)

    def on_trajectory_command(self, msg: JointTrajectory) -> None:
        qdot = trajectory_velocity(msg, self.joint_names, self.twin.joint_positions(), self.period)
        if qdot is None:
            self.get_logger().error(
                "ignoring a joint trajectory without one finite point for every arm joint",
                throttle_duration_sec=self.log_period_s,
            )
            return
        self._accept_command(qdot)

    def _accept_command(self, qdot: np.ndarray) -> None:
        self.qdot_command = qdot
        self.last_command_tick = self.tick_count
        self.command_since_tick = True
        self._lockstep_tick()

    def _command_owed(self) -> bool:
        """Lock-step: the command node owes a command this tick. It acts on each action as it arrives, so
        an ACTION heard in this wait is owed its command; and its watchdog timer ticks 1.5 periods after
        the last action it heard and every period after that, so once a whole wait passed without an
        action, every following wait gets a command (a hold) from a live command node (one that heard an
        action before, or already holds). Advancing without it would let a starved command node see the
        clock jump past its deadline."""
        if self.twin_acts or self.waiting_for_stack:
            return False
        if self.action_since_tick:
            return True
        (action_before, _command_before), (action_last, command_last) = self.last_waits
        return not action_last and (command_last or action_before)

    def _lockstep_tick(self) -> None:
        """Lock-step: tick once the stack has answered the last observation (an ACTION from the policy,
        and a joint command; the command alone when the command node owes one, see `_command_owed`)."""
        answered = self.command_since_tick and (self.twin_acts or self._command_owed())
        if self.realtime_factor == LOCKSTEP and answered:
            self.tick()
            self.timer.reset()

    def _on_lockstep_timer(self) -> None:
        """Lock-step timeout: tick anyway after `lockstep_wait_s`, so a dead node cannot freeze the clock
        (the command node then holds, as in real time). A command the command node owes is waited for
        up to `lockstep_owed_command_wait_s`: advancing the clock past a starved command node would
        stamp its watchdog hold late (a late hold of the twin's making, not the node's)."""
        waiting_for_owed = self._command_owed() and not self.command_since_tick
        if waiting_for_owed and time.monotonic() - self.wait_started < self.lockstep_owed_wait_s:
            return
        if not (self.waiting_for_stack or self.episode_done or self.resets_pending):
            self.lockstep_timeouts += 1
        self.tick()

    def on_gripper_command(self, msg: Float64MultiArray) -> None:
        if len(msg.data) == 1 and np.isfinite(msg.data[0]):
            self.gripper_command = float(msg.data[0])

    def on_action(self, _msg: Float64MultiArray) -> None:
        self.heard_action = True
        if not self.twin_acts:
            self.action_since_tick = True
            self._lockstep_tick()

    def current_command(self) -> tuple[np.ndarray, float]:
        """The command in force this tick: the newest one, or zero velocity once it is too old."""
        if (
            self.last_command_tick is None
            or self.tick_count - self.last_command_tick > self.command_timeout_ticks
        ):
            return np.zeros(self.num_joints), self.gripper_command
        return self.qdot_command, self.gripper_command

    # -- episodes ------------------------------------------------------------------------------------
    def episode_seed(self, episode: int) -> int:
        return int(self.cfg.seed) + episode * self.seed_stride

    def start_episode(self) -> None:
        """Reset the twin to the next seeded episode; a reset takes one control period of the clock, so
        no two different states ever share a stamp. After the first episode it runs at a tick (see
        `tick`), never straight from a request."""
        if self.episode >= 0:
            self.tick_count += 1
        self.episode += 1
        seed = self.episode_seed(self.episode)
        self.twin.reset(seed=seed)
        if self.expert is not None:
            self.expert.reset()
        if self.action_source == "random":
            self.random_rng = np.random.default_rng(seed)
        self.episode_done = False
        self.lockstep_timeouts = 0
        self.last_step = None
        self.held_observation = None
        # The status first: it names the episode's objects, which a shape-reading policy needs for the
        # first observation (policy_node.on_episode_status).
        self.publish_status()
        self.publish_observation(self.twin.observation())
        self.publish_source_action(new_observation=True)

    def on_reset(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """The next seeded episode starts at the next tick (in lock-step: once the stack has answered the
        observation in flight), see `tick`."""
        self.resets_pending += 1
        episode = self.episode + self.resets_pending
        response.success = True
        response.message = f"episode {episode} (seed {self.episode_seed(episode)}) starts at the next tick"
        return response

    def status(self) -> dict[str, Any]:
        step = self.last_step
        triplet = self.cfg.twin.triplet if str(self.cfg.twin.objects) == "triplet" else None
        return {
            "episode": self.episode,
            "seed": self.episode_seed(self.episode),
            "step": self.twin.step_count,
            "sim_time": self.twin.time,
            "clock": self.clock_s,
            "success": bool(step.success) if step else False,
            "done": self.episode_done,
            "time_limit": bool(step.info.get("time_limit", False)) if step else False,
            "physics_unstable": bool(step.info.get("physics_unstable", False)) if step else False,
            "stacked_since": step.info.get("stacked_since") if step else None,
            "lockstep_timeouts": self.lockstep_timeouts,
            "triplet": triplet,
            "objects": list(self.twin.object_ids or ()),
        }

    def publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.status())))

    # -- the tick ------------------------------------------------------------------------------------
    def tick(self) -> None:
        self._check_pace()
        self.last_waits = [self.last_waits[-1], (self.action_since_tick, self.command_since_tick)]
        self.command_since_tick = self.action_since_tick = False
        self.wait_started = time.monotonic()
        if self.resets_pending:
            # A reset takes the place of a physics step, at a tick: the stack's answer to the old episode's
            # last observation is what released this tick, so it is never taken for the answer to the new
            # episode's first one. (Started on the request itself, the reset let that late answer release
            # the new episode's first tick with the old command: in lock-step every later command then
            # came one tick late, one tick more per episode, against none in the in-process check.)
            pending, self.resets_pending = self.resets_pending, 0
            for _ in range(pending):
                self.start_episode()
            return
        if self.waiting_for_stack:
            ready = self.last_command_tick is not None and self.heard_action
            if ready or time.monotonic() > self.wait_deadline:
                self.waiting_for_stack = False
                if not ready:
                    self.get_logger().warning("the stack did not come up in time; starting anyway")
        if self.waiting_for_stack or self.episode_done:  # hold the world still, let the clock run
            if self.held_observation is None:
                self.held_observation = self.twin.observation()
            self.tick_count += 1
            self.publish_observation(self.held_observation)
            self.publish_status()
            self.publish_source_action(new_observation=False)
            return
        self.held_observation = None
        qdot, gripper = self.current_command()
        step = self.twin.step_joint_velocity(qdot, gripper)
        self.tick_count += 1
        self.last_step = step
        self.episode_done = bool(step.done)
        self.publish_observation(step.observation)
        self.publish_status()
        if self.episode_done:
            self.finish_episode(step)
        else:
            self.publish_source_action(new_observation=True)

    def finish_episode(self, step: TwinStep) -> None:
        result = self.status()
        if step.success:
            outcome = "success"
        elif result["physics_unstable"]:
            outcome = "physics unstable"
        else:
            outcome = "time limit"
        self.get_logger().info(
            f"episode {self.episode} (seed {result['seed']}): {outcome} after {self.twin.time:.2f} s sim, "
            f"{self.twin.step_count} steps"
        )
        if self.auto_reset:
            self.resets_pending += 1  # at the next tick, once the stack has answered this last observation

    def publish_source_action(self, new_observation: bool) -> None:
        """The twin as its own action source: the expert's action for the current state, or a uniform
        draw within the action bounds. A random draw is made only for a new observation (a held tick
        repeats it), so the generator advances once per physics step and a seed reproduces its episode
        however long the stack took to come up."""
        if self.action_pub is None or self.episode_done:
            return
        if self.expert is not None:
            action = self.expert.act(self.twin)
        elif self.random_rng is not None:
            if new_observation or self.random_action is None:
                self.random_action = self.random_rng.uniform(self.action_low, self.action_high)
            action = self.random_action
        else:
            return
        self.action_pub.publish(float_array_msg(action))

    def publish_observation(self, obs: dict[str, np.ndarray]) -> None:
        """Joint states, object poses and images at the new sim time, then the clock. Rendering is most
        of a tick's cost, so with ``ros.twin.lazy_images`` a camera nobody subscribes to (e.g. the expert
        demo without a viewer) is not rendered; the object poses go out only while subscribed (they are
        privileged, for state-based policies; a subscriber count is cheaper than a message per tick)."""
        stamp = time_msg(self.clock_s)
        q = self.twin.joint_positions()
        low, high = self.gripper_range
        gripper_units = float(obs["gripper/joints/angle"][0])
        gripper_rad = low + (high - low) * gripper_units / self.gripper_command_max
        gripper_rad_s = (high - low) * float(obs[GRIPPER_VELOCITY_KEY][0]) / self.gripper_command_max
        self.joint_pub.publish(
            joint_state_msg(
                [*self.joint_names, self.gripper_joint],
                [*q, gripper_rad],
                [*self.twin.joint_velocities(), gripper_rad_s],
                stamp,
            )
        )
        if self.poses_pub.get_subscription_count() > 0:  # the state of `obs` is the twin's current one
            self.poses_pub.publish(pose_array_msg(self.twin.object_poses(), stamp, contract.WORLD_FRAME))
        for camera in self.cameras:
            frame = contract.camera_optical_frame(camera)
            publisher = self.image_pubs[camera]
            if not self.lazy_images or publisher.get_subscription_count() > 0:
                key = f"{camera}/pixels"
                if key not in obs:  # rendered once per state (a held observation keeps its images)
                    obs[key] = self.twin.render(camera)
                publisher.publish(image_msg(obs[key], stamp, frame, "rgb8"))
            info: CameraInfo = camera_info_msg(self.intrinsics[camera], stamp, frame)
            self.info_pubs[camera].publish(info)
        self.clock_pub.publish(Clock(clock=stamp))

    def _check_pace(self) -> None:
        """Warn (every `late_tick_warn_s`) when the twin runs below its real-time factor."""
        now = time.monotonic()
        if self._pace_start is None:
            self._pace_start, self._pace_ticks = now, self.tick_count
            return
        wall = now - self._pace_start
        if wall < self.pace_report_s:
            return
        achieved = (self.tick_count - self._pace_ticks) * self.period / wall
        if self.realtime_factor > 0 and achieved < self.pace_tolerance * self.realtime_factor:
            self.get_logger().warning(
                f"twin runs at {achieved:.2f}x real time, below the configured {self.realtime_factor:g}x"
            )
        self._pace_start, self._pace_ticks = now, self.tick_count

    def close(self) -> None:
        self.twin.close()


def main(argv: list[str] | None = None) -> int:
    return run_node(TwinNode, argv, priority="twin")


if __name__ == "__main__":
    sys.exit(main())
