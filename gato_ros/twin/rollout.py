"""Run one seeded episode of a policy in the twin; shared by the demo, benchmarks and data collection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from gato_ros.safety.limits import NUM_JOINTS, CommandLimiter, SafetyLimits
from gato_ros.twin.env import StackingTwin, TwinStep

Policy = Callable[[StackingTwin, dict[str, np.ndarray]], np.ndarray]
Observer = Callable[[dict[str, np.ndarray], np.ndarray, TwinStep], None]
Stepper = Callable[[np.ndarray], TwinStep]


class CommandLimitedStep:
    """`twin.step` the way the command node drives the arm: each action through the twin's Cartesian
    controller, then the safety `CommandLimiter` (joint speed, acceleration, position and workspace limits)
    at one control period per tick, then the joints. Lock-step, so nothing is late: no watchdog or ramp.

    The plain `twin.step` applies the controller alone, so a policy's in-process success could rest on
    commands the deployed limits would clamp. A fresh instance per episode: the limiter rates each command
    against the previous one.
    """

    def __init__(self, twin: StackingTwin, cfg: DictConfig) -> None:
        self.twin = twin
        kinematics = twin.kinematics
        self.limiter = CommandLimiter(
            SafetyLimits.from_config(cfg), lambda q: kinematics.tool_state(q).position
        )
        self.period = 1.0 / float(cfg.control.rate_hz)
        self.previous = np.zeros(NUM_JOINTS)
        self.gripper = -twin.controller.gripper_command_max  # open, as every episode starts; kept on a hold

    def __call__(self, action: np.ndarray) -> TwinStep:
        controller = self.twin.controller
        action = controller.sanitize_action(action)
        q = self.twin.joint_positions()
        command = self.limiter.limit(
            q,
            self.previous,
            self.period,
            controller.joint_velocity(q, action),
            controller.gripper_command(action),
        )
        self.previous = command.joint_velocity
        if command.gripper is not None:
            self.gripper = command.gripper
        return self.twin.step_joint_velocity(command.joint_velocity, self.gripper)


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    object_ids: tuple[str, str, str]
    success: bool
    steps: int
    seconds: float  # simulated
    physics_unstable: bool
    time_to_success: float | None = None  # sim s at which the successful stack first stood


def run_episode(
    twin: StackingTwin,
    policy: Policy,
    seed: int,
    observer: Observer | None = None,
    stepper: Callable[[StackingTwin], Stepper] | None = None,
) -> EpisodeResult:
    """Reset with `seed`, then step `policy(twin, observation)` until the episode is done (per
    `twin.episode.mode`: its last step, or an early success; a divergence ends it too).

    `observer(observation, action, step)` sees every transition (the observation the action was chosen on).
    `stepper(twin)`, called after the reset, gives the episode's action -> step function (default
    `twin.step`; `CommandLimitedStep` puts the command node's limits in between).
    """
    observation = twin.reset(seed=seed)
    advance = twin.step if stepper is None else stepper(twin)
    step = None
    for _ in range(twin.max_steps):
        action = np.asarray(policy(twin, observation), dtype=np.float32)
        step = advance(action)
        if observer is not None:
            observer(observation, action, step)
        observation = step.observation
        if step.done:
            break
    assert step is not None and twin.object_ids is not None
    return EpisodeResult(
        seed=seed,
        object_ids=twin.object_ids,
        success=step.success,
        steps=twin.step_count,
        seconds=twin.time,
        physics_unstable=bool(step.info["physics_unstable"]),
        time_to_success=step.info["stacked_since"] if step.success else None,
    )
