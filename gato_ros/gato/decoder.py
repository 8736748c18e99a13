"""The action decoder that closes the control loop: observation in, 5-D action out, at control rate.

Each control step appends only the new tokens to a pre-allocated static KV cache that lives across steps
(the previous step's last action token and the new observation with its separator, in one forward), then
samples the action one dimension at a time with one single-token forward per dimension. Sampling is
restricted to the value-id range, so the head computes 1024 logits instead of 33k.

Context trimming: when the next step would not fit in the window, the oldest whole time steps are dropped
and the kept ones are re-encoded into the cache behind the (unchanged) prompt prefix. The model has no
global position encoding, so the cache after a trim is exactly what a full forward of the trimmed
sequence computes: cached and uncached decoding agree at every step. Trimming down to
`trim_keep_fraction` of the window (not just one step) amortises the re-encode over several steps.

On CUDA the single-token forward is captured once as a CUDA graph (fixed shapes: it attends over the
whole cache through a mask and writes at a device-side position), so each action dimension costs one
graph launch. The observation prefill goes through the same fixed-shape path, one graph per observation
layout (its token count and where its image patches sit: at most `MAX_PREFILL_LAYOUTS`), its inputs
copied in from pinned host buffers; so a control step is one prefill graph, `action_dim - 1` token graphs
and a single host synchronisation (reading the action ids). Call `warmup()` before the control loop: it
captures the graphs and lets kernel selection happen outside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gato_ros.gato.model import GatoModel
from gato_ros.gato.serialization import TokenSequence
from gato_ros.gato.tokenizer import ObservationTokenizer, detokenize_continuous

if TYPE_CHECKING:
    from omegaconf import DictConfig


def model_inputs(sequence: TokenSequence, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(tokens, image_mask, patches, patch_pos, obs_pos) of one sequence, batch axis of 1, on `device`."""

    def tensor(array: np.ndarray) -> torch.Tensor:
        # the tokenizer shares per-layout arrays as read-only views; torch wants writable memory
        return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)

    return (
        tensor(sequence.tokens).unsqueeze(0),
        tensor(sequence.image_mask).unsqueeze(0),
        tensor(sequence.patches),
        tensor(sequence.patch_pos).unsqueeze(0),
        tensor(sequence.obs_pos).unsqueeze(0),
    )


# Observation layouts whose prefill gets its own CUDA graph; a decoder sees two (an episode's first step,
# and every later one with the previous action token in front). Beyond, the prefill runs eagerly.
MAX_PREFILL_LAYOUTS = 4


@dataclass
class PrefillSlot:
    """The fixed-shape inputs of one observation layout's prefill: device buffers the (captured) forward
    reads, pinned host buffers they are filled from, and the image indices, computed once per layout."""

    tokens: torch.Tensor  # [1, T] long
    obs_pos: torch.Tensor  # [1, T] long (fixed by the layout)
    patches: torch.Tensor  # [P, C, p, p] float32
    where: torch.Tensor | None  # [P] image positions in the sequence (None: no images)
    rows: torch.Tensor | None  # [P] patch row indices
    cols: torch.Tensor | None  # [P] patch column indices
    host_tokens: torch.Tensor  # [1, T] long, pinned on CUDA
    host_patches: torch.Tensor  # [P, C, p, p] float32, pinned on CUDA
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = field(default=None, repr=False)  # the graph's output buffer


def static_prefill_enabled(setting: Any, device: torch.device, kv_cache: bool, cuda_graphs: bool) -> bool:
    """`policy.decoder.static_prefill`: auto = on CUDA with graphs; true/false force it (CPU tests)."""
    if not kv_cache:
        return False
    if isinstance(setting, str) and setting.lower() == "auto":
        return device.type == "cuda" and cuda_graphs
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"policy.decoder.static_prefill must be auto, true or false, not {setting!r}")


class NonFiniteLogitsError(RuntimeError):
    """The model produced NaN or infinite logits: no action may be decoded from them."""


@dataclass
class ActionResult:
    """One control step's decision: the physical action, its token ids and where the time went."""

    action: np.ndarray  # (action_dim,) float64, within the configured bounds
    token_ids: np.ndarray  # (action_dim,) int64 value ids
    tokenize_s: float
    decode_s: float
    total_s: float
    context_tokens: int  # tokens the model attended over for the last action dimension
    trimmed: bool  # the context was trimmed (and re-encoded) in this step
    logits: np.ndarray | None = None  # (action_dim, num_bins) value-range logits, when record_logits


class ActionDecoder:
    """Autoregressive action decoding with a KV cache reused across control steps.

    `cfg` is the full composed config; the decoder reads `cfg.policy.decoder` (temperature, greedy,
    value_mean, value_median, median_dims, kv_cache, trim_keep_fraction, max_prompt_tokens, seed,
    cuda_graphs, static_prefill).
    """

    def __init__(self, model: GatoModel, tokenizer: ObservationTokenizer, cfg: DictConfig) -> None:
        dcfg = cfg.policy.decoder
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.temperature = float(dcfg.temperature)
        self.greedy = bool(dcfg.greedy)
        self.value_mean = bool(dcfg.get("value_mean", False))
        self.value_median = bool(dcfg.get("value_median", False))
        median_dims = [int(dim) for dim in dcfg.get("median_dims", None) or []]
        if self.value_mean and (self.value_median or median_dims):
            raise ValueError("policy.decoder: value_mean excludes value_median and median_dims")
        self.use_kv_cache = bool(dcfg.kv_cache)
        self.trim_keep_fraction = float(dcfg.trim_keep_fraction)
        if not self.greedy and self.temperature <= 0:
            raise ValueError("policy.decoder.temperature must be > 0 when sampling (greedy: false)")
        if not 0.0 < self.trim_keep_fraction <= 1.0:
            raise ValueError("policy.decoder.trim_keep_fraction must lie in (0, 1]")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"model vocab {model.config.vocab_size} != tokenizer vocab {tokenizer.vocab_size}"
            )
        self.context_length = model.config.context_length
        self.action_dim = tokenizer.action_dim
        if any(not 0 <= dim < self.action_dim for dim in median_dims):
            raise ValueError(
                f"policy.decoder.median_dims {median_dims}: action dimensions are 0..{self.action_dim - 1}"
            )
        # The action dimensions decoded by their median (all of them with value_median).
        self.median_dims = frozenset(range(self.action_dim) if self.value_median else median_dims)
        self.action_obs_index = model.config.action_obs_index
        self.value_range = tokenizer.layout.value_id_range
        self.patch_shape = (model.config.image_channels, model.config.patch_size, model.config.patch_size)
        # A cap on prompts, not a reservation: never more than half the window, so that the same runtime
        # config serves checkpoints of any context length and the episode's own history always fits.
        self.max_prompt_tokens = min(int(dcfg.max_prompt_tokens), self.context_length // 2)
        weight = model.head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(dcfg.seed))
        self.kv_cache = model.new_kv_cache(batch=1) if self.use_kv_cache else None
        # pre-allocated inputs of the single-token (action) forwards
        self._one_token = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._one_image_mask = torch.zeros((1, 1), dtype=torch.bool, device=self.device)
        self._no_patches = torch.zeros((0, *self.patch_shape), dtype=self.dtype, device=self.device)
        self._one_patch_pos = torch.zeros((1, 1, 4), dtype=torch.long, device=self.device)
        self._action_obs_pos = torch.full((1, 1), self.action_obs_index, dtype=torch.long, device=self.device)
        self._ids = torch.zeros(self.action_dim, dtype=torch.long, device=self.device)
        # Each value bin's number ([-1, 1] before the bounds are applied), for `value_mean` decoding.
        bins = np.arange(*self.value_range)
        values = detokenize_continuous(bins, tokenizer.action_companding, tokenizer.layout)
        self._bin_values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        # Whether every logit of the step was finite, accumulated on the device (no sync per dimension).
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._position = torch.zeros(1, dtype=torch.long, device=self.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self.use_cuda_graphs = self.use_kv_cache and bool(dcfg.cuda_graphs) and self.device.type == "cuda"
        self.static_prefill = static_prefill_enabled(
            dcfg.get("static_prefill", "auto"), self.device, self.use_kv_cache, bool(dcfg.cuda_graphs)
        )
        self._prefill_slots: dict[tuple[int, bytes, bytes, bytes], PrefillSlot] = {}
        if self.use_cuda_graphs:
            self._capture_single_token_graph()
        self.record_logits = False  # keep each step's value-range logits in its result (tests, analysis)
        self._logits: list[torch.Tensor] = []
        self.prompt: TokenSequence | None = None
        self.reset()

    # ---- episode boundaries -----------------------------------------------------------------------
    def reset(self, prompt: TokenSequence | None = None) -> None:
        """Start a new episode: forget the history; optionally prime with a prompt demonstration, which
        stays pinned at the front of the context. Build it as training does, with
        `EpisodeSerializer.prompt_sequence(demo, goal=True)` (behind `text_prefix(task)` when the
        tokenizer prefixes task text)."""
        if prompt is not None and len(prompt) > self.max_prompt_tokens:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds policy.decoder.max_prompt_tokens")
        self.prompt = prompt if prompt is not None and len(prompt) else None
        self.steps: list[TokenSequence] = []  # whole past steps: observation, separator, action tokens
        self.cached = 0  # tokens whose keys/values are in the cache
        self.pending_action: int | None = None  # last action token of the previous step, not yet cached
        self._step_length: int | None = None  # tokens of the last step (observation + action)
        self._trimmed_ahead = False  # prepare_next trimmed since the last step
        if self.prompt is not None and self.use_kv_cache:
            with torch.inference_mode():
                self._encode(self.prompt)

    def warmup(self, observation: Mapping[str, Any], prompt: TokenSequence | None = None) -> float:
        """Run a dummy episode through its first context trim and one step beyond, then `reset(prompt)`:
        kernel selection, cuDNN plans and allocations for every shape of the control loop happen here
        rather than in the first real steps (which they would otherwise stall by up to a second on a
        GPU). Call before the control loop starts; returns the seconds it took."""
        start = time.perf_counter()
        self.reset(prompt)
        budget = self.context_length - self.prompt_length
        limit = budget // max(1, self.tokenizer.step_length(observation) + self.action_dim) + 3
        trims = 0
        for _ in range(limit):
            trims += self.step(observation).trimmed
            if trims and not self.last_result.trimmed:
                break
        self.reset(prompt)
        return time.perf_counter() - start

    @property
    def prompt_length(self) -> int:
        return len(self.prompt) if self.prompt is not None else 0

    def history(self) -> TokenSequence:
        """The whole sequence the model conditions on now (prompt + kept steps): for tests and debugging."""
        parts = ([self.prompt] if self.prompt is not None else []) + self.steps
        return TokenSequence.concat(parts) if parts else TokenSequence.empty(self.patch_shape)

    # ---- the control step -------------------------------------------------------------------------
    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Observation dict -> action (action_dim,) in physical units; details in `last_result`."""
        return self.step(obs).action

    def step(self, obs: Mapping[str, Any]) -> ActionResult:
        t_start = time.perf_counter()
        observation = TokenSequence.from_step(self.tokenizer.tokenize_step(obs))
        t_tokenized = time.perf_counter()
        step_length = len(observation) + self.action_dim
        budget = self.context_length - self.prompt_length
        if step_length > budget:
            raise ValueError(f"a step of {step_length} tokens does not fit the context after the prompt")
        trimmed_now = self._trim_for(step_length, budget)
        trimmed = trimmed_now or self._trimmed_ahead  # done now, or ahead by prepare_next
        self._trimmed_ahead = False
        self._step_length = step_length
        self._logits.clear()
        self._finite.fill_(True)
        with torch.inference_mode():
            if self.use_kv_cache:
                ids, context = self._decode_cached(observation, trimmed_now)
            else:
                ids, context = self._decode_full(observation)
        token_ids = ids.cpu().numpy()
        if not bool(self._finite):  # checked after the copy above has synchronised anyway
            if self.kv_cache is not None:  # masked-out NaN keys/values would still poison later steps
                self.kv_cache.zero_()
            self.reset()
            raise NonFiniteLogitsError("the model's logits are not finite: no action decoded (decoder reset)")
        t_decoded = time.perf_counter()
        actions = TokenSequence.from_actions(token_ids, self.action_obs_index, self.patch_shape)
        self.steps.append(TokenSequence.concat([observation, actions]))
        action = self.tokenizer.detokenize_action(token_ids)
        t_end = time.perf_counter()
        self.last_result = ActionResult(
            action=action,
            token_ids=token_ids,
            tokenize_s=t_tokenized - t_start,
            decode_s=t_decoded - t_tokenized,
            total_s=t_end - t_start,
            context_tokens=context,
            trimmed=trimmed,
            logits=torch.stack(self._logits).cpu().numpy() if self.record_logits else None,
        )
        return self.last_result

    def prepare_next(self) -> bool:
        """Do now the context trim the next step would need, and re-encode the kept steps into the cache,
        so that the next `step` pays only for its own observation. Call it after the action went out, in
        the idle part of the control period: a trim then never lands on the critical path. The decoded
        actions are the same as without it (the same steps are kept, the same tokens cached); the next
        step reports ``trimmed``. Returns whether it trimmed."""
        if not self.steps or self._step_length is None:
            return False
        if not self._trim_for(self._step_length, self.context_length - self.prompt_length):
            return False
        if self.use_kv_cache:
            with torch.inference_mode():
                self._reencode_kept_steps()
        self._trimmed_ahead = True
        return True

    # ---- internals --------------------------------------------------------------------------------
    def _trim_for(self, step_length: int, budget: int) -> bool:
        """Drop the oldest whole steps if the next one does not fit; True when steps were dropped."""
        used = sum(len(s) for s in self.steps)
        if used + step_length <= budget:
            return False
        keep_budget = max(int(self.trim_keep_fraction * budget), step_length) - step_length
        kept = 0
        first = len(self.steps)
        while first > 0 and kept + len(self.steps[first - 1]) <= keep_budget:
            first -= 1
            kept += len(self.steps[first])
        self.steps = self.steps[first:]
        return True

    def _value_logits(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.model.logits(h_last, self.value_range).float().reshape(-1)

    def _choose(self, logits: torch.Tensor, dim: int) -> torch.Tensor:
        """Value-range logits of the last position for action dimension ``dim`` -> one id (tensor, stays
        on the device)."""
        if self.record_logits:
            self._logits.append(logits)
        self._finite &= torch.isfinite(logits).all()
        if self.value_mean:  # the distribution's mean, as the nearest bin (the token the context gets)
            mean = torch.softmax(logits, dim=-1) @ self._bin_values
            index = torch.argmin((self._bin_values - mean).abs())
        elif dim in self.median_dims:  # the first bin where the cumulative mass reaches one half
            cumulative = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
            index = torch.clamp(
                torch.searchsorted(cumulative, cumulative.new_tensor([0.5])), max=len(logits) - 1
            )[0]
        elif self.greedy:
            index = torch.argmax(logits)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            index = torch.multinomial(probs, 1, generator=self.generator).reshape(())
        return index + self.value_range[0]

    def _encode(self, sequence: TokenSequence) -> torch.Tensor:
        """Append a sequence to the cache; returns the last position's hidden state."""
        inputs = model_inputs(sequence, self.device)
        x = self.model.embed(*inputs)
        h = self.model.hidden_cached(x, self.kv_cache, self.cached)
        self.cached += len(sequence)
        return h[:, -1]

    def _single_token_logits(self) -> torch.Tensor:
        """The fixed-shape forward of the token in `_one_token` at `_position`: value-range logits."""
        x = self.model.embed(
            self._one_token, self._one_image_mask, self._no_patches, self._one_patch_pos, self._action_obs_pos
        )
        return self._value_logits(self.model.hidden_static(x, self.kv_cache, self._position)[:, -1])

    def _capture_single_token_graph(self) -> None:
        """Record the single-token forward once as a CUDA graph: each action dimension then costs one
        graph launch instead of hundreds of kernel launches. Its warm-up runs write garbage keys/values at
        position 0, which every episode overwrites before reading."""
        self._graph, self._graph_logits = self._capture_graph(self._single_token_logits)

    def _capture_graph(
        self, forward: Callable[[], torch.Tensor]
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """`forward` recorded as a CUDA graph, after warm-up runs on a side stream (allocations and kernel
        selection outside the graph); returns the graph and its output buffer."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            output = forward()
        return graph, output

    def _encode_action_token(self, token: torch.Tensor) -> torch.Tensor:
        """Append one action token at position `cached`; returns the value-range logits after it."""
        self._one_token.copy_(token.reshape(1, 1))
        self._position.fill_(self.cached)
        if self._graph is not None:
            self._graph.replay()
            logits = self._graph_logits.clone()
        else:
            logits = self._single_token_logits()
        self.cached += 1
        return logits

    # ---- the observation prefill ------------------------------------------------------------------
    def _prefill(self, new: TokenSequence) -> torch.Tensor:
        """Append the step's new tokens (pending action + observation) to the cache; returns the value-range
        logits after them. Through the fixed-shape path (replaying its CUDA graph) where enabled and the
        layout has a slot, else the variable-shape forward; both compute the same thing."""
        slot = self._prefill_slot(new) if self.static_prefill else None
        if slot is None:
            return self._value_logits(self._encode(new))
        slot.host_tokens.numpy()[0] = new.tokens
        slot.tokens.copy_(slot.host_tokens, non_blocking=True)
        if slot.where is not None:
            slot.host_patches.numpy()[...] = new.patches
            slot.patches.copy_(slot.host_patches, non_blocking=True)
        self._position.fill_(self.cached)
        if self.use_cuda_graphs:
            if slot.graph is None:
                self._capture_prefill_graph(slot)
            slot.graph.replay()
            logits = slot.logits.clone()
        else:
            logits = self._static_prefill_logits(slot)
        self.cached += len(new)
        return logits

    def _prefill_slot(self, new: TokenSequence) -> PrefillSlot | None:
        """The slot of `new`'s layout (its length, image mask, patch and observation positions), made on
        first use; None once `MAX_PREFILL_LAYOUTS` layouts have one."""
        key = (len(new), new.image_mask.tobytes(), new.patch_pos.tobytes(), new.obs_pos.tobytes())
        slot = self._prefill_slots.get(key)
        if slot is not None or len(self._prefill_slots) >= MAX_PREFILL_LAYOUTS:
            return slot
        tokens, image_mask, patches, patch_pos, obs_pos = model_inputs(new, self.device)
        where = rows = cols = None
        if patches.shape[0]:
            where, rows, cols = self.model.image_indices(image_mask, patch_pos)
        pin = self.device.type == "cuda"
        slot = PrefillSlot(
            tokens=tokens,
            obs_pos=obs_pos,
            patches=patches,  # float32, as `embed` takes them (cast to the model's dtype inside)
            where=where,
            rows=rows,
            cols=cols,
            host_tokens=torch.zeros(tuple(tokens.shape), dtype=torch.long, pin_memory=pin),
            host_patches=torch.zeros(tuple(patches.shape), dtype=torch.float32, pin_memory=pin),
        )
        self._prefill_slots[key] = slot
        return slot

    def _static_prefill_logits(self, slot: PrefillSlot) -> torch.Tensor:
        """The fixed-shape prefill of the tokens in `slot` at `_position`: value-range logits after them."""
        model = self.model
        x = model.embed_indexed(slot.tokens, slot.obs_pos, slot.patches, slot.where, slot.rows, slot.cols)
        return self._value_logits(model.hidden_static(x, self.kv_cache, self._position)[:, -1])

    def _capture_prefill_graph(self, slot: PrefillSlot) -> None:
        """Record `slot`'s prefill as a CUDA graph. The warm-up runs before it compute this very step's
        prefill (its inputs are in place), so the keys/values they write are the ones the replay writes."""
        slot.graph, slot.logits = self._capture_graph(lambda: self._static_prefill_logits(slot))

    def _reencode_kept_steps(self) -> None:
        """After a trim: the kept steps (their last action token included) behind the prompt prefix, whose
        cache is still valid."""
        self.cached = self.prompt_length
        self.pending_action = None
        if self.steps:
            self._encode(TokenSequence.concat(self.steps))

    def _decode_cached(self, observation: TokenSequence, trimmed: bool) -> tuple[torch.Tensor, int]:
        if trimmed:
            self._reencode_kept_steps()
        new = observation
        if self.pending_action is not None:
            pending = TokenSequence.from_actions(
                np.array([self.pending_action]), self.action_obs_index, self.patch_shape
            )
            new = TokenSequence.concat([pending, observation])
        logits = self._prefill(new)
        for dim in range(self.action_dim):
            self._ids[dim] = self._choose(logits, dim)
            if dim + 1 < self.action_dim:
                logits = self._encode_action_token(self._ids[dim])
        ids = self._ids.clone()
        self.pending_action = int(ids[-1])  # cached with the next observation, in one forward
        return ids, self.cached

    def _decode_full(self, observation: TokenSequence) -> tuple[torch.Tensor, int]:
        """The reference path: a full forward of the whole context for every action dimension."""
        base = TokenSequence.concat([self.history(), observation])
        chosen: list[int] = []
        for dim in range(self.action_dim):
            actions = TokenSequence.from_actions(
                np.array(chosen, dtype=np.int64), self.action_obs_index, self.patch_shape
            )
            sequence = TokenSequence.concat([base, actions]) if chosen else base
            h = self.model.hidden(self.model.embed(*model_inputs(sequence, self.device)))
            self._ids[dim] = self._choose(self._value_logits(h[:, -1]), dim)
            chosen.append(int(self._ids[dim]))
        return self._ids.clone(), len(base) + self.action_dim - 1
