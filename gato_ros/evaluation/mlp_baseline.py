"""A plain MLP behaviour-cloning baseline on the episodes and observations a Gato policy trains on.

Why: when a Gato policy stacks poorly, the cause is either the data (the observation does not determine the
expert's action, too few or too narrow episodes) or the tokenized model and its training (too few steps,
discretisation, decoding). An MLP regressing the action from the same continuous observation, trained in a
minute, separates the two: if it stacks far more often than the Gato policy on the same seeds, the data
allows more than the model has learnt. It is a diagnosis, never a policy to ship (no tokenizer, no ROS).

The observation is the Gato policy's: the tokenizer's non-image keys, in its order, with the privileged
object poses in its frame (``tokenizer.observation.privileged_frame``), flattened and standardised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from gato_ros.gato.data import Episode, EpisodeDataset, dataset_directory
from gato_ros.gato.tokenizer import ObservationTokenizer

if TYPE_CHECKING:
    import torch

STD_FLOOR = 1e-6  # constant features (e.g. a fixed quaternion component) standardise to 0, not NaN


@dataclass(frozen=True)
class MlpSettings:
    width: int = 512
    layers: int = 3
    steps: int = 6000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


class ObservationFeatures:
    """Observation dict (one step, or T steps with a leading axis) -> the flat feature vector(s)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.tokenizer = ObservationTokenizer(cfg)
        self.keys = [k for k in self.tokenizer.observation_keys if not k.endswith("/pixels")]
        if len(self.keys) != len(self.tokenizer.observation_keys):
            raise ValueError("the MLP baseline reads state observations only; this config tokenizes images")

    def __call__(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        framed = self.tokenizer.privileged_in_frame({k: np.asarray(observation[k]) for k in self.keys})
        parts = [np.asarray(framed[k], dtype=np.float32) for k in self.keys]
        batch_shape = parts[0].shape[:-1] if parts[0].ndim > 1 else ()
        return np.concatenate([p.reshape(*batch_shape, -1) for p in parts], axis=-1)


def training_episodes(cfg: DictConfig) -> Iterable[Episode]:
    """The episodes of every data-mixture source with a positive weight (weights otherwise ignored)."""
    for name, source in cfg.training.data.mixture.items():
        if float(source.weight) <= 0:
            continue
        successful_only = bool(source.get("successful_only", True))
        yield from EpisodeDataset(dataset_directory(cfg, str(name)), successful_only)


def dataset_arrays(cfg: DictConfig, features: ObservationFeatures) -> tuple[np.ndarray, np.ndarray]:
    inputs, actions = [], []
    for episode in training_episodes(cfg):
        inputs.append(features({k: np.asarray(episode.observations[k]) for k in features.keys}))
        actions.append(np.asarray(episode.action, dtype=np.float32))
    if not inputs:
        raise ValueError("no episodes in the data mixture (training.data.*)")
    return np.concatenate(inputs), np.concatenate(actions)


class MlpPolicy:
    """A trained MLP with its standardisation; ``act(observation)`` returns the action (unclipped: the
    twin clips to its bounds, as it does a decoded action)."""

    def __init__(
        self, features: ObservationFeatures, net: torch.nn.Module, stats: tuple[np.ndarray, ...]
    ) -> None:
        self.features, self.net = features, net
        self.in_mean, self.in_std, self.out_mean, self.out_std = stats

    def act(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        import torch

        x = (self.features(observation) - self.in_mean) / self.in_std
        with torch.no_grad():
            y = self.net(torch.from_numpy(x.astype(np.float32))[None])[0].numpy()
        return y * self.out_std + self.out_mean


def train_mlp(
    cfg: DictConfig, settings: MlpSettings, log_every: int = 1000
) -> tuple[MlpPolicy, list[tuple[int, float]]]:
    """Fit an MLP (GELU, AdamW, cosine schedule, MSE on standardised actions) to the mixture's episodes.
    Returns the policy and (step, loss) pairs every `log_every` steps."""
    import torch

    torch.manual_seed(settings.seed)
    features = ObservationFeatures(cfg)
    inputs, actions = dataset_arrays(cfg, features)
    in_mean, in_std = inputs.mean(0), inputs.std(0) + STD_FLOOR
    out_mean, out_std = actions.mean(0), actions.std(0) + STD_FLOOR
    x = torch.from_numpy(((inputs - in_mean) / in_std).astype(np.float32))
    y = torch.from_numpy(((actions - out_mean) / out_std).astype(np.float32))
    layers: list[torch.nn.Module] = []
    width_in = x.shape[1]
    for _ in range(settings.layers):
        layers += [torch.nn.Linear(width_in, settings.width), torch.nn.GELU()]
        width_in = settings.width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width_in, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    for step in range(1, settings.steps + 1):
        index = torch.randint(0, len(x), (settings.batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == settings.steps:
            losses.append((step, float(loss.detach())))
    net.eval()
    return MlpPolicy(features, net, (in_mean, in_std, out_mean, out_std)), losses
