"""The scripted expert stacks red on blue in seeded episodes (it generates the training data)."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.twin import ScriptedExpert, StackingTwin, Stage


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
