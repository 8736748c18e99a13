"""The MLP baseline (a data-vs-model diagnosis): the Gato policy's observation, in its frame, as features; a
fit that learns a function of them; and rollouts through the check's runner on the check's seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gato_ros.config import load_config
from gato_ros.evaluation.mlp_baseline import MlpSettings, ObservationFeatures, dataset_arrays, train_mlp
from gato_ros.evaluation.success_check import CheckpointRunner
from gato_ros.gato.data import EpisodeWriter

STATE = ["+experiment=state_policy"]


def state_observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "gripper/joints/angle": rng.uniform(0, 255, 1).astype(np.float32),
        "objects/pose": rng.uniform(-0.5, 0.5, 21).astype(np.float32),
        "sawyer/joints/angle": rng.uniform(-1, 1, 7).astype(np.float32),
        "sawyer/pinch/pose": rng.uniform(-0.5, 0.5, 7).astype(np.float32),
        "sawyer/tcp/pose": rng.uniform(-0.5, 0.5, 7).astype(np.float32),
    }


def test_features_are_the_policy_observation_with_objects_relative_to_the_pinch_point() -> None:
    features = ObservationFeatures(load_config(STATE))
    obs = state_observation(np.random.default_rng(0))
    vector = features(obs)
    assert vector.shape == (1 + 21 + 7 + 7 + 7,)
    red = vector[1:8]  # keys in token order: gripper, objects, joints, pinch, tcp
    np.testing.assert_allclose(red[:3], obs["objects/pose"][:3] - obs["sawyer/pinch/pose"][:3], rtol=1e-6)
    np.testing.assert_allclose(red[3:], obs["objects/pose"][3:7])
    batch = features({k: np.stack([v, v]) for k, v in obs.items()})  # T steps at once (episode arrays)
    np.testing.assert_allclose(batch, np.stack([vector, vector]))


def test_the_mlp_learns_the_action_from_the_state_and_drives_the_twin(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    overrides = [*STATE, f"training.data.root={tmp_path}", "control.episode_seconds=0.5"]
    cfg = load_config(overrides)
    features = ObservationFeatures(cfg)
    source = next(name for name, s in cfg.training.data.mixture.items() if float(s.weight) > 0)
    directory = tmp_path / str(cfg.training.data.mixture[source].path)
    with EpisodeWriter(directory, 20.0, "test", background=False) as w:
        for _ in range(4):
            w.begin_episode(task="stack red on blue")
            for t in range(50):
                obs = state_observation(rng)
                red_offset = features(obs)[1:4]  # the action is a function of red's offset: learnable
                action = np.array([*(0.1 * red_offset), 0.0, 1.0 if t > 25 else -1.0])
                w.add_step(obs, action, timestamp=0.05 * t)
            w.end_episode(success=True)
    inputs, actions = dataset_arrays(cfg, features)
    assert inputs.shape == (200, 43) and actions.shape == (200, 5)
    policy, losses = train_mlp(cfg, MlpSettings(width=64, layers=2, steps=300, lr=3e-3), log_every=100)
    assert losses[-1][1] < 0.2 * losses[0][1]
    runner = CheckpointRunner(cfg, None, "train", policy=policy.act)
    try:
        assert runner.expert is None and runner.decoder is None  # the MLP alone drives
        outcomes, errors = runner.episodes([0], "benchmark")
        assert len(outcomes) == 1 and errors == 0
        assert runner.twin.step_count == 10  # 0.5 s at 20 Hz: every step took the MLP's action
    finally:
        runner.close()
