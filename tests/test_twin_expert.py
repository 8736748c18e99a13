"""The scripted expert stacks red on blue in seeded episodes (it generates the training data)."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.twin import ScriptedExpert, StackingTwin, Stage
from gato_ros.twin.expert import stack_anchor_offset


@pytest.mark.parametrize(("triplet", "seed"), [("1", 0), ("4", 3)])
def test_expert_stacks_in_a_seeded_episode(triplet: str, seed: int) -> None:
    # early_stop: the episode ends once the released stack has held (benchmark mode would run on to 20 s).
    cfg = load_config([f"twin.triplet={triplet}", "twin.render=false", "twin.episode.mode=early_stop"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=seed)
        expert.reset()
        stages = []
        for _ in range(twin.max_steps):
            action = expert.act(twin)
            assert action.shape == (5,)
            assert np.all(action >= np.asarray(cfg.control.action_low))
            assert np.all(action <= np.asarray(cfg.control.action_high))
            step = twin.step(action)
            if not stages or stages[-1] is not expert.stage:
                stages.append(expert.stage)
            if step.done:
                break
        assert step.success, f"stages: {[s.value for s in stages]}"
        assert not step.info["physics_unstable"]
        assert step.info["time"] < float(cfg.control.episode_seconds)
        assert Stage.CLOSE in stages and Stage.LOWER in stages


def test_expert_acts_from_privileged_observations() -> None:
    """Without the twin (observation dict only) it still heads for red and opens the gripper."""
    cfg = load_config(["twin.render=false"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        obs = twin.reset(seed=4)
        red = obs["objects/pose"][:3]
        pinch = obs["sawyer/pinch/pose"][:3]
        action = expert.act(obs)
    assert action[4] < 0.0
    horizontal = action[:2]
    if np.linalg.norm(red[:2] - pinch[:2]) > 0.01:
        assert np.dot(horizontal, red[:2] - pinch[:2]) > 0.0


def run_to(twin: StackingTwin, expert: ScriptedExpert, stage: Stage, max_steps: int) -> int:
    """Step the expert's own episode until it enters `stage`; returns the steps taken."""
    for step in range(max_steps):
        twin.step(expert.act(twin))
        if expert.stage is stage:
            return step + 1
    raise AssertionError(f"the expert never reached {stage.value}")


def test_a_fresh_expert_carries_on_with_red_already_in_the_fingers() -> None:
    """Feedback: a state the expert did not reach itself (here: red held above the floor, as a DAgger
    learner might leave it) gets the action that continues from it: keep the fingers closed and carry,
    not a new approach that opens them and drops red. From there it stacks."""
    cfg = load_config(["twin.triplet=1", "twin.render=false", "twin.episode.mode=early_stop"])
    expert, fresh = ScriptedExpert(cfg), ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        expert.reset()
        run_to(twin, expert, Stage.CARRY, twin.max_steps)
        fresh.reset()
        stages, gripper = [], []  # the fresh expert's gripper commands until it releases red
        step = None
        while twin.step_count < twin.max_steps:
            action = fresh.act(twin)
            stages.append(fresh.stage)
            if Stage.RELEASE not in stages:
                gripper.append(action[4])
            step = twin.step(action)
            if step.done:
                break
        assert step is not None and step.success, [s.value for s in stages]
    assert stages[0] is Stage.LIFT
    assert gripper and all(g > 0.0 for g in gripper)  # closed on red until it was placed


def test_a_fresh_expert_retreats_from_a_stack_it_did_not_build() -> None:
    """Feedback: red standing on blue with the fingers open means retreat and hold, not grasp red off the
    stack (which a fresh, plan-following expert did)."""
    cfg = load_config(["twin.triplet=1", "twin.render=false"])
    expert, fresh = ScriptedExpert(cfg), ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        expert.reset()
        run_to(twin, expert, Stage.DONE, twin.max_steps)
        assert twin.is_stacked()
        fresh.reset()
        actions = []
        for _ in range(40):
            actions.append(fresh.act(twin))
            twin.step(actions[-1])
        assert fresh.stage is Stage.DONE and twin.is_stacked()
    assert all(a[4] < 0.0 for a in actions)  # the fingers stay open


def test_the_stack_anchor_puts_reds_centre_of_mass_deep_inside_a_narrow_top() -> None:
    """Blue's top is 2 cm wide; red is sheared, its centre of mass 1 cm beside its bottom face's centre.
    The midpoint rule alone left the centre of mass 5 mm off the top's middle line (5 mm from its edge);
    the anchor puts it on that line, as far from every edge as the top allows."""
    corners = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)], dtype=float)
    blue_bottom = np.column_stack([0.6 + 0.03 * corners[:, 0], 0.02 * corners[:, 1], np.zeros(4)])
    blue_top = np.column_stack([0.6 + 0.01 * corners[:, 0], 0.02 * corners[:, 1], np.full(4, 0.05)])
    blue = np.concatenate([blue_bottom, blue_top])
    red_bottom = np.column_stack([0.02 * corners, np.full(4, 0.2)])
    red_top = np.column_stack([0.02 * corners[:, 0] + 0.02, 0.02 * corners[:, 1], np.full(4, 0.24)])
    red = np.concatenate([red_bottom, red_top])
    centre_of_mass = np.array([0.01, 0.0])
    offset = stack_anchor_offset(red, centre_of_mass, blue, band=0.004)
    placed = centre_of_mass + offset
    assert abs(placed[0] - 0.6) <= 0.0015 and abs(placed[1]) <= 0.0015, placed
