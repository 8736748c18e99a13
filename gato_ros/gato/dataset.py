"""Training batches from episode directories: a weighted mixture of datasets, prompt conditioning,
padding to the sequence length, seeded.

Each sequence of a batch independently (a) draws a dataset with probability proportional to its mixture
weight (``training.data.mixture``, the paper's Table 1 sample weights), (b) draws an episode with
probability proportional to its length (so every recorded step is equally likely), (c) serializes a
window of whole steps with ``EpisodeSerializer.training_sequence`` (prompted with a demonstration of the
same task for a configured share). The random stream of a batch is a pure function of
``(seed, rank, step, micro)``, so a resumed or re-run training sees the same batches.

Camera frames are decoded only for the steps of a window (`gato_ros.gato.data.EncodedFrames`), fitted to
the policy's image size (``cameras.width x height``) and augmented (``training.data.augmentation``, one draw
per sequence and camera; see `gato_ros.gato.images`).

Batches follow docs/ARCHITECTURE.md: right-padded with ``padding_id`` and loss 0; ``patches`` of all
sequences concatenated in row-major (b, t) order; ``patch_pos`` the quantised intervals (the model samples
within them in training and takes the mean at evaluation).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gato_ros.gato.batch import TokenBatch
from gato_ros.gato.data import Episode, EpisodeDataset, dataset_directory, load_episode
from gato_ros.gato.images import PIXELS_SUFFIX, ImageAugmentation, PolicyFrames, policy_image_size
from gato_ros.gato.serialization import Demonstration, EpisodeSerializer, TokenSequence


@dataclass
class GatoBatch(TokenBatch):
    """A padded training batch: the token layout plus each row's unpadded length."""

    lengths: torch.Tensor  # LongTensor[B]: unpadded length of each row

    @property
    def valid_mask(self) -> torch.Tensor:
        """BoolTensor[B, T]: True on real tokens, False on padding."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return positions[None, :] < self.lengths[:, None]


def make_batch(sequences: Sequence[TokenSequence], sequence_length: int, padding_id: int) -> GatoBatch:
    """Right-pad sequences to ``sequence_length`` (padding: ``padding_id``, loss 0, positions 0)."""
    if not sequences:
        raise ValueError("make_batch needs at least one sequence")
    B, T = len(sequences), int(sequence_length)
    tokens = np.full((B, T), padding_id, dtype=np.int64)
    image_mask = np.zeros((B, T), dtype=bool)
    patch_pos = np.zeros((B, T, 4), dtype=np.int64)
    obs_pos = np.zeros((B, T), dtype=np.int64)
    loss_mask = np.zeros((B, T), dtype=np.float32)
    lengths = np.zeros(B, dtype=np.int64)
    for b, seq in enumerate(sequences):
        n = len(seq)
        if n > T:
            raise ValueError(f"sequence {b} has {n} tokens, more than the sequence length {T}")
        tokens[b, :n] = seq.tokens
        image_mask[b, :n] = seq.image_mask
        patch_pos[b, :n] = seq.patch_pos
        obs_pos[b, :n] = seq.obs_pos
        loss_mask[b, :n] = seq.loss_mask
        lengths[b] = n
    patches = np.concatenate([seq.patches for seq in sequences], axis=0)
    if patches.shape[0] != int(image_mask.sum()):
        raise ValueError("patch count does not match the image positions")
    return GatoBatch(
        tokens=torch.from_numpy(tokens),
        image_mask=torch.from_numpy(image_mask),
        patches=torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)),
        patch_pos=torch.from_numpy(patch_pos),
        obs_pos=torch.from_numpy(obs_pos),
        loss_mask=torch.from_numpy(loss_mask),
        lengths=torch.from_numpy(lengths),
    )


@dataclass(frozen=True)
class DatasetSource:
    """One dataset of the mixture: an episode directory and its sample weight."""

    name: str
    path: Path
    weight: float
    successful_only: bool = False
    max_episodes: int | None = None  # the first N usable episodes only (data-size sweeps)
    intervention_weight: float = 1.0  # operator-labelled steps count this many times in episode sampling


def mixture_sources(cfg: Any) -> list[DatasetSource]:
    """The sources of ``training.data.mixture`` with positive weight (paths relative to ``data.root``)."""
    sources = []
    for name, entry in cfg.training.data.mixture.items():
        weight = float(entry.weight)
        if weight < 0:
            raise ValueError(f"mixture weight of {name} is negative")
        if weight == 0:
            continue
        sources.append(
            DatasetSource(
                name=str(name),
                path=dataset_directory(cfg, str(name)),
                weight=weight,
                successful_only=bool(entry.get("successful_only", False)),
                max_episodes=_max_episodes(cfg.training.data.get("max_episodes")),
                intervention_weight=_intervention_weight(name, entry.get("intervention_weight", 1.0)),
            )
        )
    return sources


def _intervention_weight(name: str, value: Any) -> float:
    weight = float(value)
    if not weight > 0:
        raise ValueError(f"training.data.mixture.{name}.intervention_weight must be > 0, got {value}")
    return weight


def operator_steps(metadata: dict[str, Any]) -> int:
    """Steps of a recorded episode labelled by the operator (`gato-ros record`'s steps_by_source)."""
    by_source = metadata.get("steps_by_source") or {}
    return int(by_source.get("teleop", 0)) if isinstance(by_source, dict) else 0


def _max_episodes(value: Any) -> int | None:
    if value is None:
        return None
    if int(value) < 1:
        raise ValueError(f"training.data.max_episodes must be >= 1 or null, got {value}")
    return int(value)


def mixture_size(cfg: Any) -> tuple[int, int]:
    """(episodes, steps) the sampler draws from: usable episodes of every source with positive weight."""
    episodes = steps = 0
    for source in mixture_sources(cfg):
        dataset = source_dataset(source)
        episodes += len(dataset)
        steps += dataset.total_steps
    return episodes, steps


def source_dataset(source: DatasetSource) -> EpisodeDataset:
    dataset = EpisodeDataset(source.path, successful_only=source.successful_only)
    if source.max_episodes is not None:
        dataset.paths = dataset.paths[: source.max_episodes]
        dataset.metadata = dataset.metadata[: source.max_episodes]
    return dataset


class _EpisodeCache:
    """LRU cache of opened episodes: memory-mapped when the files are uncompressed (the default), so a
    window reads only its own steps; compressed files are decoded whole, which is what the cache saves."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(int(capacity), 1)
        self._items: OrderedDict[Path, Episode] = OrderedDict()

    def get(self, path: Path) -> Episode:
        episode = self._items.get(path)
        if episode is not None:
            self._items.move_to_end(path)
            return episode
        episode = load_episode(path, mmap=True)
        self._items[path] = episode
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return episode


class _IndexedSource:
    """A mixture source with its episode index, length weights and per-task prompt candidates."""

    def __init__(self, source: DatasetSource, prompt_successful_only: bool) -> None:
        self.source = source
        self.dataset = source_dataset(source)
        if len(self.dataset) == 0:
            raise ValueError(f"dataset {source.name} at {source.path} holds no usable episodes")
        steps = np.array([self.dataset.num_steps(i) for i in range(len(self.dataset))], dtype=np.float64)
        # Episodes are drawn in proportion to their steps, an operator's corrections counting
        # `intervention_weight` times (a window then lands anywhere in the drawn episode).
        corrections = np.array([operator_steps(m) for m in self.dataset.metadata], dtype=np.float64)
        steps = steps + (source.intervention_weight - 1.0) * np.minimum(corrections, steps)
        self.episode_p = steps / steps.sum()
        # prompt candidates: episodes of the same task, successful ones when there are any
        by_task: dict[str, list[int]] = defaultdict(list)
        by_task_ok: dict[str, list[int]] = defaultdict(list)
        for i, meta in enumerate(self.dataset.metadata):
            task = str(meta.get("task", ""))
            by_task[task].append(i)
            if meta.get("success", False):
                by_task_ok[task].append(i)
        self.prompt_candidates = {
            task: (by_task_ok[task] if prompt_successful_only and by_task_ok[task] else members)
            for task, members in by_task.items()
        }

    def task(self, i: int) -> str:
        return str(self.dataset.metadata[i].get("task", ""))


class SequenceSampler:
    """Draws training sequences and batches from a weighted mixture of episode directories.

    ``cfg`` is the full composed config. ``sources`` default to ``training.data.mixture``; ``seed`` to
    ``training.seed``. ``sequence_length`` (``training.sequence_length``) is the padded batch width and
    the context the windows must fit.
    """

    def __init__(
        self,
        cfg: Any,
        sources: Sequence[DatasetSource] | None = None,
        seed: int | None = None,
        serializer: EpisodeSerializer | None = None,
    ) -> None:
        self.serializer = serializer if serializer is not None else EpisodeSerializer(cfg)
        self.sequence_length = self.serializer.context_length
        self.padding_id = self.serializer.tokenizer.padding_id
        self.seed = int(cfg.training.seed if seed is None else seed)
        sources = list(sources) if sources is not None else mixture_sources(cfg)
        if not sources:
            raise ValueError("the data mixture has no source with positive weight")
        prompt_ok = self.serializer.prompt.successful_only
        self.sources = [_IndexedSource(s, prompt_ok) for s in sources]
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.source_p = weights / weights.sum()
        self._cache = _EpisodeCache(int(cfg.training.data.cache_episodes))
        self.image_size = policy_image_size(cfg)
        self.augmentation = ImageAugmentation.from_config(cfg.training.data.get("augmentation"))

    def demonstration(self, episode: Episode, rng: np.random.Generator) -> Demonstration:
        """The episode as the policy sees it in training: camera frames fitted to its image size and
        augmented (one draw per camera from ``rng``; none drawn when augmentation is off)."""
        width, height = self.image_size
        observations: dict[str, Any] = {}
        for key in sorted(episode.observations):
            value = episode.observations[key]
            if key.endswith(PIXELS_SUFFIX):
                draw = self.augmentation.draw(rng) if self.augmentation.enabled else None
                if draw is not None or tuple(value.shape[1:3]) != (height, width):
                    value = PolicyFrames(value, width, height, self.augmentation, draw)
            observations[key] = value
        return Demonstration(observations=observations, actions=episode.action, task=episode.task)

    def rng_for(self, step: int, micro: int = 0, rank: int = 0) -> np.random.Generator:
        """The batch's random stream: a pure function of (seed, rank, step, micro)."""
        return np.random.default_rng([self.seed, rank, step, micro])

    def sample_sequence(self, rng: np.random.Generator) -> TokenSequence:
        source = self.sources[int(rng.choice(len(self.sources), p=self.source_p))]
        index = int(rng.choice(len(source.dataset), p=source.episode_p))
        demo = self.demonstration(self._cache.get(source.dataset.paths[index]), rng)
        prompt_mode = self.serializer.draw_prompt_mode(rng)
        prompt_demo = None
        if prompt_mode is not None:
            candidates = source.prompt_candidates[source.task(index)]
            pool = [i for i in candidates if i != index] or candidates  # another episode if possible
            prompt_index = pool[int(rng.integers(len(pool)))]
            prompt_demo = self.demonstration(self._cache.get(source.dataset.paths[prompt_index]), rng)
        return self.serializer.training_sequence(demo, rng, prompt_demo, prompt_mode)

    def sample_batch(self, batch_size: int, rng: np.random.Generator) -> GatoBatch:
        """``batch_size`` sequences, each from its own child stream of ``rng``."""
        sequences = [self.sample_sequence(child) for child in rng.spawn(batch_size)]
        return make_batch(sequences, self.sequence_length, self.padding_id)

    def batch(self, step: int, micro: int = 0, rank: int = 0, batch_size: int = 1) -> GatoBatch:
        return self.sample_batch(batch_size, self.rng_for(step, micro, rank))


def make_batch_source(cfg: Any, rank: int = 0, world_size: int = 1) -> Callable[[int, int], GatoBatch]:
    """The trainer's batch source: ``(step, micro) -> GatoBatch`` of ``training.batch_size`` sequences,
    deterministic per (seed, rank, step, micro); each rank draws its own stream."""
    if not 0 <= rank < max(world_size, 1):
        raise ValueError(f"rank {rank} outside world size {world_size}")
    sampler = SequenceSampler(cfg)
    batch_size = int(cfg.training.batch_size)

    def source(step: int, micro: int = 0) -> GatoBatch:
        return sampler.batch(step, micro, rank, batch_size)

    return source
