"""Episodes -> flat token sequences in the layout of docs/ARCHITECTURE.md ("Gato token layout").

A sequence is ``[task text] [prompt steps] [episode steps]``; every part but the first is whole time
steps, each ``observation tokens, separator, action tokens`` (156 tokens for the RGB-stacking cell):

- ``loss_mask`` is 1 exactly on the targets of the paper's loss (eq. 2): the episode's action tokens and,
  when ``tokenizer.text_is_target``, its text tokens. Observation tokens, separators, every prompt token
  and padding are 0. (The trainer pairs logits at t-1 with token t, so a target at position 0 is never
  scored.)
- ``obs_pos`` is the token's index inside its time step's observation (the separator has the last one);
  all action tokens share ``action_obs_index = model.max_obs_tokens``. The task text prefix is numbered
  like an observation of its own.
- Windows start on a time-step boundary and hold only whole steps; they fit ``training.sequence_length``.
  The window's first step is drawn so that every step of an episode is covered by equally many windows
  (windows overhanging either end are clipped to the episode), instead of under-sampling the last steps,
  which hold the stacking itself.
- Auxiliary targets (``training.data.auxiliary``, off by default; not in the paper): a window may end with
  its last step's privileged values (the object poses) as extra targets of a smaller loss weight, so that
  an image policy learns where the objects are; they come after the last action and never reach a policy.
- Prompt conditioning (paper, section 3): a fraction of sequences are prefixed with a demonstration of
  the same task, half taken from a demonstration's end (goal conditioning), half from a uniformly drawn
  window; its tokens are context only (loss 0). The prompt budget defaults to the deployment decoder's
  ``policy.decoder.max_prompt_tokens`` so training and deployment see prompts of the same size.

``TokenSequence`` is also the run-time building block: ``TokenSequence.from_step`` / ``from_actions`` /
``concat`` append a step's observation tokens and the sampled action ids to a growing context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gato_ros.gato.tokenizer import PINCH_POSE_KEY, ObservationTokenizer, StepTokens


@dataclass
class TokenSequence:
    """One row of the token layout (1-D, length L); ``patches`` hold the image positions' pixels in order."""

    tokens: np.ndarray  # (L,) int64, 0 at image positions
    image_mask: np.ndarray  # (L,) bool
    patches: np.ndarray  # (N, 3, p, p) float32, N = image_mask.sum()
    patch_pos: np.ndarray  # (L, 4) int64, zeros off images
    obs_pos: np.ndarray  # (L,) int64
    loss_mask: np.ndarray  # (L,) float32, 1 on targets

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return tuple(self.patches.shape[1:])

    @classmethod
    def empty(cls, patch_shape: tuple[int, ...]) -> TokenSequence:
        return cls.from_actions(np.zeros(0, dtype=np.int64), 0, patch_shape, is_target=False)

    @classmethod
    def from_step(cls, step: StepTokens) -> TokenSequence:
        """One step's observation tokens and separator (never targets)."""
        n = len(step)
        return cls(
            tokens=np.asarray(step.tokens, dtype=np.int64),
            image_mask=np.asarray(step.image_mask, dtype=bool),
            patches=np.asarray(step.patches, dtype=np.float32),
            patch_pos=np.asarray(step.patch_pos, dtype=np.int64),
            obs_pos=np.asarray(step.obs_pos, dtype=np.int64),
            loss_mask=np.zeros(n, dtype=np.float32),
        )

    @classmethod
    def from_actions(
        cls, ids: np.ndarray, obs_index: int, patch_shape: tuple[int, ...], is_target: bool = True
    ) -> TokenSequence:
        """Action (or any value) ids sharing one local position ``obs_index``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        return cls(
            tokens=ids,
            image_mask=np.zeros(n, dtype=bool),
            patches=np.zeros((0, *patch_shape), dtype=np.float32),
            patch_pos=np.zeros((n, 4), dtype=np.int64),
            obs_pos=np.full(n, obs_index, dtype=np.int64),
            loss_mask=np.full(n, 1.0 if is_target else 0.0, dtype=np.float32),
        )

    @classmethod
    def from_text(
        cls, ids: np.ndarray, patch_shape: tuple[int, ...], max_obs_tokens: int, is_target: bool
    ) -> TokenSequence:
        """Text ids numbered like an observation (local positions 0..n-1)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        if n > max_obs_tokens:
            raise ValueError(f"text of {n} tokens exceeds model.max_obs_tokens={max_obs_tokens}")
        seq = cls.from_actions(ids, 0, patch_shape, is_target)
        seq.obs_pos = np.arange(n, dtype=np.int64)
        return seq

    @classmethod
    def concat(cls, parts: Sequence[TokenSequence]) -> TokenSequence:
        if not parts:
            raise ValueError("concat needs at least one part (use TokenSequence.empty)")
        return cls(
            tokens=np.concatenate([p.tokens for p in parts]),
            image_mask=np.concatenate([p.image_mask for p in parts]),
            patches=np.concatenate([p.patches for p in parts]),
            patch_pos=np.concatenate([p.patch_pos for p in parts]),
            obs_pos=np.concatenate([p.obs_pos for p in parts]),
            loss_mask=np.concatenate([p.loss_mask for p in parts]),
        )

    def without_targets(self) -> TokenSequence:
        """The same tokens as pure context (prompts): loss mask all zero."""
        return TokenSequence(
            self.tokens,
            self.image_mask,
            self.patches,
            self.patch_pos,
            self.obs_pos,
            np.zeros_like(self.loss_mask),
        )


def serialize_steps(
    steps: StepTokens, action_ids: np.ndarray, action_obs_index: int, actions_are_targets: bool = True
) -> TokenSequence:
    """T stacked steps (``ObservationTokenizer.tokenize_steps``) and their action ids (T, A) -> one
    sequence ``obs_0 | a_0 obs_1 | a_1 ...`` without a Python loop over steps."""
    action_ids = np.asarray(action_ids, dtype=np.int64)
    if action_ids.ndim != 2 or action_ids.shape[0] != steps.tokens.shape[0]:
        raise ValueError(f"action ids {action_ids.shape} do not match {steps.tokens.shape[0]} steps")
    T, L = steps.tokens.shape
    A = action_ids.shape[1]
    patch_shape = steps.patches.shape[2:]
    target = 1.0 if actions_are_targets else 0.0
    return TokenSequence(
        tokens=np.concatenate([steps.tokens, action_ids], axis=1).reshape(-1),
        image_mask=np.concatenate([steps.image_mask, np.zeros((T, A), dtype=bool)], axis=1).reshape(-1),
        patches=np.ascontiguousarray(steps.patches, dtype=np.float32).reshape(-1, *patch_shape),
        patch_pos=np.concatenate([steps.patch_pos, np.zeros((T, A, 4), dtype=np.int64)], axis=1).reshape(
            -1, 4
        ),
        obs_pos=np.concatenate(
            [steps.obs_pos, np.full((T, A), action_obs_index, dtype=np.int64)], axis=1
        ).reshape(-1),
        loss_mask=np.concatenate(
            [np.zeros((T, L), dtype=np.float32), np.full((T, A), target, dtype=np.float32)], axis=1
        ).reshape(-1),
    )


@dataclass(frozen=True)
class PromptSettings:
    """Prompt conditioning of training sequences (``training.data.prompt``)."""

    probability: float  # share of sequences that get a prompt (paper: 0.25)
    goal_fraction: float  # of those, share taken from a demonstration's end (paper: 0.5)
    max_tokens: int  # prompt budget in tokens (whole steps)
    successful_only: bool  # prompts come from successful demonstrations when there are any

    @classmethod
    def from_config(cls, node: Any) -> PromptSettings:
        settings = cls(
            probability=float(node.probability),
            goal_fraction=float(node.goal_fraction),
            max_tokens=int(node.max_tokens),
            successful_only=bool(node.successful_only),
        )
        if not (0.0 <= settings.probability <= 1.0 and 0.0 <= settings.goal_fraction <= 1.0):
            raise ValueError("prompt probability and goal_fraction must lie in [0, 1]")
        return settings


@dataclass(frozen=True)
class AuxiliaryTargets:
    """Training-only targets (``training.data.auxiliary``): after a window's last action, that step's
    privileged values (e.g. the object poses, which an image policy never reads) as value tokens with loss
    weight ``weight`` each. They sit after the last action, so nothing the policy decodes ever follows them;
    their gradient teaches the image tokens where the objects are. Local positions: the top ``len`` rows of
    the observation-position table, which no observation of this model reaches (checked)."""

    keys: tuple[str, ...] = ()
    frame: str = "pinch"  # world | pinch (object positions as offsets from the pinch point)
    weight: float = 0.2

    @classmethod
    def from_config(cls, node: Any) -> AuxiliaryTargets:
        if node is None:
            return cls()
        settings = cls(
            keys=tuple(str(k) for k in (node.get("keys") or ())),
            frame=str(node.get("frame", cls.frame)),
            weight=float(node.get("weight", cls.weight)),
        )
        if settings.frame not in ("world", "pinch"):
            raise ValueError(f"training.data.auxiliary.frame must be world or pinch, not {settings.frame}")
        if not (math.isfinite(settings.weight) and settings.weight > 0.0):
            raise ValueError(f"training.data.auxiliary.weight must be > 0, got {settings.weight}")
        return settings

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


@dataclass(frozen=True)
class Demonstration:
    """What serialization needs of an episode: observation arrays (T, ...), actions (T, A), task text."""

    observations: Mapping[str, np.ndarray]
    actions: np.ndarray
    task: str = ""

    def __len__(self) -> int:
        return int(np.shape(self.actions)[0])

    @classmethod
    def from_episode(cls, episode: Any) -> Demonstration:
        """From a recorded ``gato_ros.gato.data.Episode`` (e.g. to build a deployment prompt)."""
        return cls(observations=episode.observations, actions=episode.action, task=episode.task)


class EpisodeSerializer:
    """Builds training sequences and deployment prompts from episodes, as configured.

    ``cfg`` is the full composed config: ``tokenizer`` (layout, task text prefix), ``model.max_obs_tokens``
    (shared action position), ``training.sequence_length`` (window size) and ``training.data.prompt``.
    """

    def __init__(
        self,
        cfg: Any,
        tokenizer: ObservationTokenizer | None = None,
        text_tokenizer: Any | None = None,
        context_length: int | None = None,
        prompt: PromptSettings | None = None,
        auxiliary: AuxiliaryTargets | None = None,
    ) -> None:
        self.tokenizer = tokenizer if tokenizer is not None else ObservationTokenizer(cfg, text_tokenizer)
        self.max_obs_tokens = int(cfg.model.max_obs_tokens)
        self.context_length = int(
            context_length if context_length is not None else cfg.training.sequence_length
        )
        self.task_text_prefix = bool(cfg.tokenizer.task_text_prefix)
        self.text_is_target = bool(cfg.tokenizer.text_is_target)
        if self.task_text_prefix and text_tokenizer is None:
            from gato_ros.gato.text import TextTokenizer

            text_tokenizer = TextTokenizer.from_config(cfg)
        self.text_tokenizer = text_tokenizer
        self.prompt = prompt if prompt is not None else PromptSettings.from_config(cfg.training.data.prompt)
        if auxiliary is None:
            auxiliary = AuxiliaryTargets.from_config(cfg.training.data.get("auxiliary"))
        self.auxiliary = auxiliary
        p = self.tokenizer.layout.patch_size
        self.patch_shape = (3, p, p)

    @property
    def action_obs_index(self) -> int:
        """The local position all action tokens share (= ``model.max_obs_tokens``)."""
        return self.max_obs_tokens

    # -- building blocks -----------------------------------------------------------------------------

    def step_length(self, demo: Demonstration) -> int:
        """Tokens per time step: observation + separator + action (156 for RGB stacking)."""
        first = {k: v[0] for k, v in demo.observations.items()}  # one frame: no full decode
        return self.tokenizer.step_length(first) + int(np.shape(demo.actions)[1])

    def text_prefix(self, task: str) -> TokenSequence:
        """The task text prefix (empty unless ``tokenizer.task_text_prefix`` and a task text)."""
        if not self.task_text_prefix or not task:
            return TokenSequence.empty(self.patch_shape)
        assert self.text_tokenizer is not None
        ids = self.text_tokenizer.encode(task)
        return TokenSequence.from_text(ids, self.patch_shape, self.max_obs_tokens, self.text_is_target)

    def serialize_steps(self, demo: Demonstration, lo: int, hi: int, targets: bool = True) -> TokenSequence:
        """Steps [lo, hi) of an episode: observation, separator, actions per step."""
        if not 0 <= lo < hi <= len(demo):
            raise ValueError(f"step range [{lo}, {hi}) outside an episode of {len(demo)} steps")
        steps = self.tokenizer.tokenize_steps({k: v[lo:hi] for k, v in demo.observations.items()})
        if steps.tokens.shape[1] > self.max_obs_tokens:
            raise ValueError(
                f"a step has {steps.tokens.shape[1]} observation tokens, more than "
                f"model.max_obs_tokens={self.max_obs_tokens}"
            )
        action_ids = self.tokenizer.tokenize_action(np.asarray(demo.actions[lo:hi]))
        return serialize_steps(steps, action_ids, self.action_obs_index, targets)

    def serialize(
        self, demo: Demonstration, lo: int = 0, hi: int | None = None, targets: bool = True
    ) -> TokenSequence:
        """Text prefix (if configured) + steps [lo, hi); no context-length check (see ``fit_steps``)."""
        body = self.serialize_steps(demo, lo, len(demo) if hi is None else hi, targets)
        prefix = self.text_prefix(demo.task)
        if not targets:
            prefix = prefix.without_targets()
        return TokenSequence.concat([prefix, body]) if len(prefix) else body

    def auxiliary_length(self, demo: Demonstration) -> int:
        """Auxiliary target tokens per window (0 unless ``training.data.auxiliary.keys``), from shapes."""
        missing = [key for key in self.auxiliary.keys if key not in demo.observations]
        if missing:
            raise KeyError(
                f"the episode lacks keys {missing} (auxiliary targets); it has {sorted(demo.observations)}"
            )
        return sum(int(np.prod(np.shape(demo.observations[key])[1:])) for key in self.auxiliary.keys)

    def auxiliary_targets(self, demo: Demonstration, step: int, observation_tokens: int) -> TokenSequence:
        """Step ``step``'s auxiliary target tokens, after a step of ``observation_tokens`` observation tokens
        (whose local positions they must not share)."""
        aux = self.auxiliary
        needed = (*aux.keys, PINCH_POSE_KEY) if aux.frame == "pinch" else aux.keys
        # only these keys: indexing a camera key would decode (and augment) a frame for nothing
        observation = {key: demo.observations[key][step] for key in needed if key in demo.observations}
        ids = self.tokenizer.tokenize_values(observation, aux.keys, aux.frame)
        first = self.max_obs_tokens - len(ids)
        if observation_tokens > first:
            raise ValueError(
                f"{len(ids)} auxiliary targets after a {observation_tokens}-token observation need "
                f"model.max_obs_tokens >= {observation_tokens + len(ids)}, not {self.max_obs_tokens}"
            )
        sequence = TokenSequence.from_actions(ids, 0, self.patch_shape)
        sequence.obs_pos = np.arange(first, self.max_obs_tokens, dtype=np.int64)
        sequence.loss_mask = np.full(len(ids), aux.weight, dtype=np.float32)
        return sequence

    # -- windows -------------------------------------------------------------------------------------

    @staticmethod
    def fit_steps(budget_tokens: int, step_length: int) -> int:
        """Whole steps that fit in ``budget_tokens``."""
        return max(budget_tokens, 0) // step_length

    @staticmethod
    def sample_window(num_steps: int, window_steps: int, rng: np.random.Generator) -> tuple[int, int]:
        """A window of up to ``window_steps`` whole steps; every step is covered by equally many of the
        ``num_steps + window_steps - 1`` possible windows (the ones overhanging an end are clipped)."""
        if num_steps <= 0 or window_steps <= 0:
            raise ValueError("need a non-empty episode and a window of at least one step")
        start = int(rng.integers(-(window_steps - 1), num_steps))
        return max(start, 0), min(start + window_steps, num_steps)

    @staticmethod
    def prompt_window(
        num_steps: int, window_steps: int, goal: bool, rng: np.random.Generator
    ) -> tuple[int, int]:
        """Goal prompts are the demonstration's last steps; others a uniformly drawn full window."""
        window_steps = min(window_steps, num_steps)
        if goal:
            return num_steps - window_steps, num_steps
        start = int(rng.integers(0, num_steps - window_steps + 1))
        return start, start + window_steps

    def prompt_sequence(
        self, demo: Demonstration, goal: bool, rng: np.random.Generator | None = None
    ) -> TokenSequence:
        """A prompt (context only) of at most ``prompt.max_tokens`` whole steps of ``demo``; this is also
        what a deployment prompt is made of (``goal=True``: the demonstration's end)."""
        window = self.fit_steps(self.prompt.max_tokens, self.step_length(demo))
        if window == 0:
            return TokenSequence.empty(self.patch_shape)
        lo, hi = self.prompt_window(len(demo), window, goal, rng or np.random.default_rng(0))
        return self.serialize_steps(demo, lo, hi, targets=False)

    def draw_prompt_mode(self, rng: np.random.Generator) -> str | None:
        """None (no prompt, ``1 - prompt.probability``), ``"goal"`` or ``"uniform"``."""
        if rng.random() >= self.prompt.probability:
            return None
        return "goal" if rng.random() < self.prompt.goal_fraction else "uniform"

    def training_sequence(
        self,
        demo: Demonstration,
        rng: np.random.Generator,
        prompt_demo: Demonstration | None = None,
        prompt_mode: str | None = None,
    ) -> TokenSequence:
        """One training sequence ``[text] [prompt] [window]`` that fits ``context_length``.

        The prompt (``prompt_mode`` "goal" or "uniform", from ``draw_prompt_mode``) is taken from
        ``prompt_demo``, a demonstration of the same task; without either there is no prompt.
        """
        if prompt_mode not in (None, "goal", "uniform"):
            raise ValueError(f"unknown prompt mode {prompt_mode!r}")
        step_len = self.step_length(demo)
        prefix = self.text_prefix(demo.task)
        auxiliary_length = self.auxiliary_length(demo)
        budget = self.context_length - len(prefix) - auxiliary_length
        parts = [prefix] if len(prefix) else []
        if prompt_demo is not None and prompt_mode is not None:
            # leave room for at least one step of the episode itself
            prompt_budget = min(self.prompt.max_tokens, budget - step_len)
            prompt_steps = self.fit_steps(prompt_budget, self.step_length(prompt_demo))
            if prompt_steps > 0:
                lo, hi = self.prompt_window(len(prompt_demo), prompt_steps, prompt_mode == "goal", rng)
                prompt = self.serialize_steps(prompt_demo, lo, hi, targets=False)
                parts.append(prompt)
                budget -= len(prompt)
        window = self.fit_steps(budget, step_len)
        if window == 0:
            raise ValueError(
                f"a {step_len}-token step does not fit a context of {self.context_length} tokens "
                f"after a {len(prefix)}-token text prefix and {auxiliary_length} auxiliary targets"
            )
        lo, hi = self.sample_window(len(demo), window, rng)
        parts.append(self.serialize_steps(demo, lo, hi, targets=True))
        if auxiliary_length:
            observation_tokens = step_len - int(np.shape(demo.actions)[1])
            parts.append(self.auxiliary_targets(demo, hi - 1, observation_tokens))
        sequence = TokenSequence.concat(parts)
        if len(sequence) > self.context_length:
            raise AssertionError("serialized sequence overflows the context")
        return sequence
