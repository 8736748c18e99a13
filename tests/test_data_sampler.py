"""Training batches: padding and layout of GatoBatch, mixture weights, prompt conditioning, determinism,
and the trainer's batch source over the configured mixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeWriter, dataset_directory
from gato_ros.gato.dataset import (
    DatasetSource,
    SequenceSampler,
    make_batch,
    make_batch_source,
    mixture_sources,
)
from gato_ros.gato.serialization import TokenSequence

SMALL = [
    "tokenizer.observation.image_keys=[cam/pixels]",
    "tokenizer.observation.tensor_keys=[arm/q]",
    "tokenizer.observation.companded_keys=[arm/q]",
    "training.sequence_length=64",
    "training.batch_size=4",
    "training.data.prompt.max_tokens=30",
    "cameras.width=32",  # the policy's image size: the recorded 16 x 32 frames, 2 patches
    "cameras.height=16",
]
STEP = 10  # 2 patches + 2 values + separator + 5 actions
GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0


def write_dataset(
    directory: Path, episodes: int, steps: int, gripper: float, seed: int, succeed=True
) -> None:
    """Episodes whose gripper action marks the dataset they come from."""
    rng = np.random.default_rng(seed)
    with EpisodeWriter(directory, 20.0, "test", background=False) as writer:
        for e in range(episodes):
            writer.begin_episode(task="stack red on blue", seed=e)
            for t in range(steps):
                obs = {
                    "cam/pixels": rng.integers(0, 256, (16, 32, 3), dtype=np.uint8),
                    "arm/q": rng.uniform(-2, 2, 2).astype(np.float32),
                }
                action = np.array([0.01 * (t % 7), 0, 0, 0, gripper], dtype=np.float32)
                writer.add_step(obs, action, success=succeed and t == steps - 1, timestamp=0.05 * t)
            writer.end_episode()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dataset(root / "sim", episodes=4, steps=12, gripper=GRIPPER_OPEN, seed=0)
    write_dataset(root / "real", episodes=2, steps=9, gripper=GRIPPER_CLOSED, seed=1)
    return root


def mixture_cfg(root: Path, sim_weight: float, real_weight: float, *extra: str):
    return load_config(
        [
            *SMALL,
            f"training.data.root={root}",
            "training.data.mixture.rgb_stacking_sim.path=sim",
            f"training.data.mixture.rgb_stacking_sim.weight={sim_weight}",
            "training.data.mixture.rgb_stacking_real.path=real",
            f"training.data.mixture.rgb_stacking_real.weight={real_weight}",
            *extra,
        ]
    )


def test_make_batch_pads_and_orders_patches() -> None:
    a = TokenSequence.from_actions(np.array([32000, 32001, 32002]), 7, (3, 16, 16))
    b_patches = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    b = TokenSequence(
        tokens=np.array([0, 0, 33024, 32005]),
        image_mask=np.array([True, True, False, False]),
        patches=b_patches,
        patch_pos=np.array([[0, 16, 0, 16], [0, 16, 16, 32], [0, 0, 0, 0], [0, 0, 0, 0]]),
        obs_pos=np.array([0, 1, 2, 7]),
        loss_mask=np.array([0, 0, 0, 1], dtype=np.float32),
    )
    batch = make_batch([a, b], sequence_length=6, padding_id=33025)
    assert batch.tokens.tolist() == [
        [32000, 32001, 32002, 33025, 33025, 33025],
        [0, 0, 33024, 32005, 33025, 33025],
    ]
    assert batch.loss_mask.tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    assert batch.obs_pos.tolist() == [[7, 7, 7, 0, 0, 0], [0, 1, 2, 7, 0, 0]]
    assert batch.image_mask.tolist() == [[False] * 6, [True, True, False, False, False, False]]
    assert batch.lengths.tolist() == [3, 4]
    assert batch.valid_mask.tolist() == [[True] * 3 + [False] * 3, [True] * 4 + [False] * 2]
    assert torch.equal(batch.patches, torch.from_numpy(b_patches))
    assert batch.patch_pos[1, 1].tolist() == [0, 16, 16, 32]
    assert batch.tokens.dtype == torch.int64 and batch.loss_mask.dtype == torch.float32
    assert batch.image_mask.dtype == torch.bool and batch.patch_pos.shape == (2, 6, 4)
    with pytest.raises(ValueError):
        make_batch([a, b], sequence_length=3, padding_id=33025)


def test_batches_are_well_formed_and_deterministic(data_root: Path) -> None:
    cfg = mixture_cfg(data_root, 1.0, 1.0)
    sampler = SequenceSampler(cfg)
    batch = sampler.batch(step=5, micro=0, batch_size=8)
    assert batch.tokens.shape == (8, 64)
    assert int(batch.image_mask.sum()) == batch.patches.shape[0]
    assert batch.patches.shape[1:] == (3, 16, 16)
    for row in range(8):
        n = int(batch.lengths[row])
        assert n % STEP == 0 and 0 < n <= 60  # whole steps, fitting 64 tokens
        assert torch.all(batch.tokens[row, n:] == 33025) and torch.all(batch.loss_mask[row, n:] == 0)
        targets = batch.tokens[row][batch.loss_mask[row] > 0]
        assert torch.all((targets >= 32000) & (targets < 33024))
    again = SequenceSampler(cfg).batch(step=5, micro=0, batch_size=8)
    for name in ("tokens", "image_mask", "patches", "patch_pos", "obs_pos", "loss_mask"):
        assert torch.equal(getattr(batch, name), getattr(again, name)), name
    other = sampler.batch(step=6, micro=0, batch_size=8)
    assert not torch.equal(batch.tokens, other.tokens)
    rank1 = sampler.batch(step=5, micro=0, rank=1, batch_size=8)
    assert not torch.equal(batch.tokens, rank1.tokens)


def dataset_of_rows(batch, tokenizer) -> list[str]:
    """Which dataset each row came from: the gripper action dimension marks it."""
    closed = int(tokenizer.tokenize_action(np.array([0, 0, 0, 0, GRIPPER_CLOSED]))[4])
    labels = []
    for row in range(batch.tokens.shape[0]):
        actions = batch.tokens[row][batch.loss_mask[row] > 0].reshape(-1, 5)
        labels.append("real" if int(actions[0, 4]) == closed else "sim")
    return labels


def test_mixture_follows_the_weights(data_root: Path) -> None:
    sampler = SequenceSampler(mixture_cfg(data_root, 0.8, 0.2, "training.data.prompt.probability=0"))
    labels = []
    for step in range(12):
        labels += dataset_of_rows(sampler.batch(step, batch_size=25), sampler.serializer.tokenizer)
    share = labels.count("sim") / len(labels)
    assert share == pytest.approx(0.8, abs=0.06)  # 300 draws: 3 standard deviations is 0.07
    only_real = SequenceSampler(mixture_cfg(data_root, 0.0, 1.0))
    assert set(dataset_of_rows(only_real.batch(0, batch_size=10), only_real.serializer.tokenizer)) == {"real"}
    sources = mixture_sources(mixture_cfg(data_root, 0.0, 1.0))
    assert [(s.name, s.path) for s in sources] == [("rgb_stacking_real", data_root / "real")]
    assert dataset_directory(mixture_cfg(data_root, 1, 1), "rgb_stacking_sim") == data_root / "sim"


def test_prompted_sequences_mask_their_prompt(data_root: Path) -> None:
    sampler = SequenceSampler(mixture_cfg(data_root, 1.0, 0.0, "training.data.prompt.probability=1"))
    batch = sampler.batch(0, batch_size=6)
    for row in range(6):
        mask = batch.loss_mask[row][: int(batch.lengths[row])]
        # a 3-step (30-token) prompt without targets, then whole steps with 5 targets each
        assert mask[:30].sum() == 0
        episode_steps = (int(batch.lengths[row]) - 30) // STEP
        assert episode_steps >= 1 and mask[30:].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * episode_steps


def test_batch_source_for_the_trainer(data_root: Path) -> None:
    cfg = mixture_cfg(data_root, 1.0, 1.0)
    source = make_batch_source(cfg, rank=0, world_size=2)
    batch = source(3, 1)
    assert batch.tokens.shape == (4, 64)
    assert torch.equal(batch.tokens, make_batch_source(cfg, rank=0, world_size=2)(3, 1).tokens)
    assert not torch.equal(batch.tokens, make_batch_source(cfg, rank=1, world_size=2)(3, 1).tokens)


def test_missing_or_empty_sources_fail_loudly(tmp_path: Path, data_root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SequenceSampler(mixture_cfg(tmp_path, 1.0, 0.0))
    write_dataset(tmp_path / "failed", episodes=1, steps=3, gripper=0.0, seed=2, succeed=False)
    cfg = mixture_cfg(data_root, 1.0, 0.0)
    with pytest.raises(ValueError):  # only failed episodes, filtered out
        SequenceSampler(
            cfg, sources=[DatasetSource("failed", tmp_path / "failed", 1.0, successful_only=True)]
        )


def image_windows(cfg, batch_step: int = 0) -> np.ndarray:
    """The patches of one batch, as (sequences x patches, 3, 16, 16)."""
    sampler = SequenceSampler(cfg)
    return sampler.batch(batch_step, batch_size=4).patches.numpy()


def test_frames_are_fitted_to_the_policy_image_size(data_root: Path) -> None:
    """Recorded 16 x 32 frames train a 16 x 16 policy (one patch per camera) without re-recording."""
    cfg = mixture_cfg(data_root, 1.0, 0.0, "training.data.prompt.probability=0.0")
    half = mixture_cfg(
        data_root, 1.0, 0.0, "training.data.prompt.probability=0.0", "cameras.width=16", "cameras.height=16"
    )
    full, small = SequenceSampler(cfg), SequenceSampler(half)
    seq_full = full.sample_sequence(np.random.default_rng(3))
    seq_small = small.sample_sequence(np.random.default_rng(3))
    assert int(seq_full.image_mask.sum()) == 2 * (len(seq_full) // STEP)
    steps_small = len(seq_small) // (STEP - 1)
    assert int(seq_small.image_mask.sum()) == steps_small and len(seq_small) == steps_small * (STEP - 1)


AUGMENT = [
    "training.data.prompt.probability=0.0",
    "training.data.augmentation.shift_pixels=4",
    "training.data.augmentation.brightness=0.3",
    "training.data.augmentation.contrast=0.3",
    "training.data.augmentation.saturation=0.3",
    "training.data.augmentation.hue=0.05",
]


def test_augmentation_is_reproducible_by_seed_and_changes_the_frames(data_root: Path) -> None:
    augmented = mixture_cfg(data_root, 1.0, 0.0, *AUGMENT)
    first, again = image_windows(augmented), image_windows(augmented)
    np.testing.assert_array_equal(first, again)  # same seed, same step: the same batch
    other_seed = mixture_cfg(data_root, 1.0, 0.0, *AUGMENT, "training.seed=7")
    assert not np.array_equal(image_windows(other_seed), first)
    assert not np.array_equal(image_windows(augmented, batch_step=1), first)
    # the frames a window sees are the recorded ones, augmented; without augmentation, untouched
    sampler = SequenceSampler(augmented)
    episode = sampler._cache.get(sampler.sources[0].dataset.paths[0])
    recorded = np.asarray(episode.observations["cam/pixels"][2:5])
    seen = sampler.demonstration(episode, np.random.default_rng(0)).observations["cam/pixels"][2:5]
    assert seen.shape == recorded.shape and not np.array_equal(seen, recorded)
    plain = SequenceSampler(mixture_cfg(data_root, 1.0, 0.0, "training.data.augmentation=null"))
    untouched = plain.demonstration(episode, np.random.default_rng(0)).observations["cam/pixels"][2:5]
    np.testing.assert_array_equal(untouched, recorded)


def test_operator_corrections_are_drawn_intervention_weight_times_as_often(tmp_path: Path) -> None:
    """A recorded take's operator steps (steps_by_source.teleop) count intervention_weight times when
    episodes are drawn; other episodes by their steps, as before."""
    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path / "recorded", 20.0, "twin/intervention", background=False) as writer:
        for teleop_steps in (10, 0):
            writer.begin_episode(task="stack red on blue")
            for t in range(10):
                obs = {"cam/pixels": rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)}
                obs["arm/q"] = np.zeros(2, np.float32)
                writer.add_step(obs, np.zeros(5, np.float32), timestamp=0.05 * t)
            writer.end_episode(
                success=True, steps_by_source={"policy": 10 - teleop_steps, "teleop": teleop_steps}
            )
    cfg = load_config([*SMALL, f"training.data.root={tmp_path}"])
    weighted = DatasetSource("recorded", tmp_path / "recorded", 1.0, intervention_weight=3.0)
    plain = DatasetSource("recorded", tmp_path / "recorded", 1.0)
    np.testing.assert_allclose(SequenceSampler(cfg, [weighted]).sources[0].episode_p, [0.75, 0.25])
    np.testing.assert_allclose(SequenceSampler(cfg, [plain]).sources[0].episode_p, [0.5, 0.5])
    bad = load_config([*SMALL, "+training.data.mixture.rgb_stacking_sim.intervention_weight=0"])
    with pytest.raises(ValueError, match="intervention_weight must be > 0"):
        mixture_sources(bad)
