"""Gato tokenization (Reed et al. 2022, section 2.1 and appendix B): every modality becomes integer ids in
one vocabulary, except image patches, which are embedded from their pixels.

Token id layout (``TokenLayout``; the numbers come from ``config/tokenizer/gato.yaml``):

====================  =====================  ===================================================
ids                    what                   how
====================  =====================  ===================================================
[0, 32000)             text                   SentencePiece (``gato_ros.gato.text``)
[32000, 33024)         discrete / continuous  discrete ints in [0, 1024) and binned continuous
                                              values, shifted by ``text_vocab_size``
33024                  separator ``|``         ends every time step's observation
33025                  padding                 right-padding of training batches, never a target
====================  =====================  ===================================================

so ``vocab_size`` is 33026 (the model sizes its embedding and output layer from it). The padding id is a
dedicated id rather than a reuse of text id 0 so that padding can never be mistaken for text when a
batch is inspected or a mask is derived from ``tokens != padding_id``.

Continuous values: mu-law companding ``F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1)`` (mu 100, M 256)
when the value is not already in [-1, 1], clipping to [-1, 1], then 1024 uniform bins
``floor((F + 1) / 2 * 1024)`` capped at 1023. Decoding maps a bin to its centre and inverts the mu-law.

Images: non-overlapping 16 x 16 patches in raster order, pixels mapped to [-1, 1] and divided by
sqrt(16) = 4, channel-first ``(N, 3, 16, 16)``. Each patch carries its quantised normalised pixel interval
``(row_lo, row_hi, col_lo, col_hi)`` in a vocabulary of 128 (``hi`` exclusive); the model samples a
position inside the interval in training and uses its mean at evaluation.

One time step's observation (``ObservationTokenizer``): keys in lexicographic order inside each group,
text keys first, then image keys, then tensor keys; then the separator. For the RGB-stacking cell
(see ``docs/ARCHITECTURE.md``) that is::

    basket_front_left/pixels   64 patches   (obs_pos   0 ..  63)
    basket_front_right/pixels  64 patches   (obs_pos  64 .. 127)
    gripper/joints/angle        1 token     (obs_pos 128)        mu-law companded
    sawyer/joints/angle         7 tokens    (obs_pos 129 .. 135) mu-law companded
    sawyer/pinch/pose           7 tokens    (obs_pos 136 .. 142) mu-law companded
    sawyer/tcp/pose             7 tokens    (obs_pos 143 .. 149) mu-law companded
    separator                   1 token     (obs_pos 150)
    action                      5 tokens    (one shared obs_pos, ``model.max_obs_tokens``), no companding

151 observation tokens + 5 action tokens = 156 tokens per control step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TokenLayout:
    """The vocabulary layout and binning constants. Defaults are the paper's; the running stack builds
    it from ``cfg.tokenizer`` with ``from_config`` (a test keeps the YAML and these defaults equal)."""

    text_vocab_size: int = 32000
    num_bins: int = 1024
    mu: float = 100.0
    M: float = 256.0
    patch_size: int = 16
    patch_position_vocab: int = 128
    use_padding_id: bool = True

    @classmethod
    def from_config(cls, tokenizer_cfg: Any) -> TokenLayout:
        return cls(
            text_vocab_size=int(tokenizer_cfg.text_vocab_size),
            num_bins=int(tokenizer_cfg.num_bins),
            mu=float(tokenizer_cfg.mu),
            M=float(tokenizer_cfg.M),
            patch_size=int(tokenizer_cfg.patch_size),
            patch_position_vocab=int(tokenizer_cfg.patch_position_vocab),
            use_padding_id=bool(tokenizer_cfg.use_padding_id),
        )

    @property
    def value_offset(self) -> int:
        """First id of discrete/continuous values (= text vocabulary size)."""
        return self.text_vocab_size

    @property
    def separator_id(self) -> int:
        return self.text_vocab_size + self.num_bins

    @property
    def padding_id(self) -> int:
        """Id used to right-pad batches; equals ``separator_id + 1`` (or the separator when disabled)."""
        return self.separator_id + 1 if self.use_padding_id else self.separator_id

    @property
    def vocab_size(self) -> int:
        """Embedding / output size: text + value bins + separator (+ padding)."""
        return self.separator_id + (2 if self.use_padding_id else 1)

    @property
    def value_id_range(self) -> tuple[int, int]:
        """Half-open range of value ids; the action decoder samples only inside it."""
        return self.value_offset, self.value_offset + self.num_bins


PAPER_LAYOUT = TokenLayout()


# ----------------------------------------------------------------------------------------------------
# Continuous and discrete values


def mu_law_encode(x: np.ndarray, mu: float = PAPER_LAYOUT.mu, M: float = PAPER_LAYOUT.M) -> np.ndarray:
    """F(x) = sgn(x) log(|x| mu + 1) / log(M mu + 1); maps [-M, M] onto [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(np.abs(x) * mu) / math.log1p(M * mu)


def mu_law_decode(y: np.ndarray, mu: float = PAPER_LAYOUT.mu, M: float = PAPER_LAYOUT.M) -> np.ndarray:
    """Inverse of ``mu_law_encode``."""
    y = np.asarray(y, dtype=np.float64)
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(M * mu)) / mu


def _require_finite(x: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or infinite values; refusing to tokenize them")


def tokenize_continuous(x: np.ndarray, companding: bool, layout: TokenLayout = PAPER_LAYOUT) -> np.ndarray:
    """Continuous values (any shape) -> int64 ids in [32000, 33024), same shape.

    ``companding`` applies the mu-law first (for values not already in [-1, 1]); either way the result
    is clipped to [-1, 1] before binning. NaN/inf raise, since a silently binned NaN would feed a
    policy garbage.
    """
    x = np.asarray(x, dtype=np.float64)
    _require_finite(x, "continuous input")
    if companding:
        x = mu_law_encode(x, layout.mu, layout.M)
    x = np.clip(x, -1.0, 1.0)
    bins = np.floor((x + 1.0) * (0.5 * layout.num_bins)).astype(np.int64)
    np.minimum(bins, layout.num_bins - 1, out=bins)
    return bins + layout.value_offset


def _value_bins(ids: np.ndarray, layout: TokenLayout) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"token ids must be integers, got {ids.dtype}")
    bins = ids.astype(np.int64) - layout.value_offset
    if np.any(bins < 0) or np.any(bins >= layout.num_bins):
        lo, hi = layout.value_id_range
        raise ValueError(f"value ids must lie in [{lo}, {hi}); got {ids.min()}..{ids.max()}")
    return bins


def detokenize_continuous(
    ids: np.ndarray, companding: bool, layout: TokenLayout = PAPER_LAYOUT
) -> np.ndarray:
    """Value ids -> float64 values at the bin centres (inverse mu-law when ``companding``).

    Ids outside the value range raise: a text or separator id where a value belongs is a decoder bug.
    """
    bins = _value_bins(ids, layout)
    y = (2.0 * bins + 1.0) / layout.num_bins - 1.0
    return mu_law_decode(y, layout.mu, layout.M) if companding else y


def tokenize_discrete(x: np.ndarray, layout: TokenLayout = PAPER_LAYOUT) -> np.ndarray:
    """Discrete values (integers in [0, num_bins)) -> ids shifted into the value range."""
    x = np.asarray(x)
    integral = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.bool_)
    if not integral and (not np.all(np.isfinite(x)) or np.any(x != np.round(x))):
        raise ValueError("discrete input must hold integers")
    values = x.astype(np.int64)
    if np.any(values < 0) or np.any(values >= layout.num_bins):
        raise ValueError(f"discrete values must lie in [0, {layout.num_bins})")
    return values + layout.value_offset


def detokenize_discrete(ids: np.ndarray, layout: TokenLayout = PAPER_LAYOUT) -> np.ndarray:
    return _value_bins(ids, layout)


# ----------------------------------------------------------------------------------------------------
# Images


def image_to_patches(
    img: np.ndarray, patch_size: int = PAPER_LAYOUT.patch_size, out: np.ndarray | None = None
) -> np.ndarray:
    """uint8 image(s) ``(..., H, W, 3)`` -> float32 patches ``(..., N, 3, p, p)`` in raster order.

    Pixels are mapped to [-1, 1] and divided by sqrt(patch_size) (the paper's /4 for 16 x 16 patches).
    H and W must be multiples of the patch size: resizing is the camera pipeline's job, not ours.
    ``out`` (float32, the result's shape) receives the patches without an extra copy.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {img.dtype}")
    *lead, h, w, c = img.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not a multiple of the {patch_size}-pixel patch size")
    rows, cols = h // patch_size, w // patch_size
    grid = img.reshape(*lead, rows, patch_size, cols, patch_size, c)
    nd = len(lead)
    # (..., rows, p, cols, p, c) -> (..., rows, cols, c, p, p)
    order = (*range(nd), nd, nd + 2, nd + 4, nd + 1, nd + 3)
    shape = (*lead, rows * cols, c, patch_size, patch_size)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    grid_out = out.reshape(*lead, rows, cols, c, patch_size, patch_size)  # splitting an axis: a view
    if not np.shares_memory(grid_out, out):
        raise ValueError("out must allow a view split into patch rows and columns")
    # one fused pass: gather into raster order, convert and scale; then shift in place
    np.multiply(grid.transpose(order), np.float32(2.0 / 255.0 / math.sqrt(patch_size)), out=grid_out)
    grid_out -= np.float32(1.0 / math.sqrt(patch_size))
    return out


def patch_positions(
    h: int,
    w: int,
    patch_size: int = PAPER_LAYOUT.patch_size,
    position_vocab: int = PAPER_LAYOUT.patch_position_vocab,
) -> np.ndarray:
    """Quantised normalised pixel intervals ``(row_lo, row_hi, col_lo, col_hi)`` of each patch, ``(N, 4)``.

    Intervals are half-open ``[lo, hi)`` in ``[0, position_vocab]`` (the paper's example: rows
    [32, 48) of an 80-pixel image -> [0.4, 0.6) -> [51, 77)); never empty.
    """
    if h % patch_size or w % patch_size:
        raise ValueError(f"image {h}x{w} is not a multiple of the {patch_size}-pixel patch size")

    def intervals(extent: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.arange(0, extent + 1, patch_size, dtype=np.float64) / extent * position_vocab
        lo = np.round(edges[:-1]).astype(np.int64)
        hi = np.maximum(np.round(edges[1:]).astype(np.int64), lo + 1)
        return lo, hi

    row_lo, row_hi = intervals(h)
    col_lo, col_hi = intervals(w)
    rows, cols = len(row_lo), len(col_lo)
    out = np.empty((rows, cols, 4), dtype=np.int64)
    out[..., 0] = row_lo[:, None]
    out[..., 1] = row_hi[:, None]
    out[..., 2] = col_lo[None, :]
    out[..., 3] = col_hi[None, :]
    return out.reshape(rows * cols, 4)


# ----------------------------------------------------------------------------------------------------
# One control step


@dataclass
class StepTokens:
    """One control step's observation tokens followed by the separator (length L), or, from
    ``ObservationTokenizer.tokenize_steps``, T such steps stacked along a leading axis.

    ``tokens`` int64 (L,): ids, 0 at image positions. ``image_mask`` bool (L,). ``patches`` float32
    (N, 3, p, p): the patches of the True entries of ``image_mask`` in order. ``patch_pos`` int64 (L, 4):
    quantised patch intervals, zeros elsewhere. ``obs_pos`` int64 (L,): index within the observation
    (the separator gets the last one, L - 1).
    """

    tokens: np.ndarray
    image_mask: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    obs_pos: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[-1])


@dataclass(frozen=True)
class _KeyPlan:
    """How one observation key is tokenized; computed once from the config."""

    key: str
    kind: str  # "text" | "image" | "continuous" | "discrete"
    companding: bool = False


@dataclass
class _StepLayout:
    """Per-step constant arrays (masks and positions) for one set of observation shapes."""

    shapes: dict[str, tuple[int, ...]]
    length: int
    image_mask: np.ndarray
    patch_pos: np.ndarray
    obs_pos: np.ndarray
    segments: list[tuple[_KeyPlan, int, int]] = field(default_factory=list)
    # adjacent tensor keys tokenized the same way, done in one call: (kind, companding, lo, hi, keys)
    value_groups: list[tuple[str, bool, int, int, tuple[str, ...]]] = field(default_factory=list)
    # image keys and their patch ranges: (key, first patch, end patch)
    image_groups: list[tuple[str, int, int]] = field(default_factory=list)
    num_patches: int = 0


def _config_list(node: Any, key: str) -> list[str]:
    value = node.get(key) if hasattr(node, "get") else None
    return [str(v) for v in value] if value else []


OBJECT_POSES_KEY = "objects/pose"  # (3 x 7,) red, green, blue: x, y, z, qw, qx, qy, qz (privileged)
PINCH_POSE_KEY = "sawyer/pinch/pose"  # (7,) the gripper's pinch point: x, y, z, qw, qx, qy, qz


OBJECT_SHAPES_KEY = "objects/shape"  # (3 x 10,) per object, gato_ros/twin/shape.py (privileged)
SHAPE_FEATURES_PER_OBJECT = 10
SHAPE_DIRECTION_INDEX = 2  # cos 2a, sin 2a of the grasp's closing direction a (pi-periodic) in each row
PRIVILEGED_FRAMES = ("world", "pinch", "pinch_yaw")


def pinch_yaw(pinch_pose: np.ndarray) -> np.ndarray:
    """Wrist yaw (..., ) from pinch poses (..., 7: x, y, z, qw, qx, qy, qz): the heading of the tool x axis in
    the world xy plane, as `gato_ros.control.kinematics.tool_yaw` reads it from the rotation matrix."""
    pose = np.asarray(pinch_pose, dtype=np.float64)
    w, x, y, z = pose[..., 3], pose[..., 4], pose[..., 5], pose[..., 6]
    return np.arctan2(2.0 * (x * y + w * z), 1.0 - 2.0 * (y * y + z * z))


def grasp_wrist_yaw(cos_2a: np.ndarray, sin_2a: np.ndarray) -> np.ndarray:
    """The wrist yaw in [-pi/2, pi/2] whose fingers close along direction a (given as cos 2a, sin 2a): the
    fingers close along the tool y axis, at yaw - pi/2, and are symmetric (pi-periodic). Within the wrist's
    +-pi/2 this is the one yaw that closes along a (the expert's `reachable_grasp_yaw`, up to its margin)."""
    return 0.5 * np.arctan2(-np.asarray(sin_2a, dtype=np.float64), -np.asarray(cos_2a, dtype=np.float64))


def in_privileged_frame(obs: Mapping[str, Any], frame: str) -> Mapping[str, Any]:
    """``obs`` with its object state in ``frame``: ``world`` as given; ``pinch`` with the object positions
    as offsets from the gripper's pinch point (world axes; orientations unchanged); ``pinch_yaw`` as pinch,
    and each object's grasp direction in ``objects/shape`` (cos 2a, sin 2a) replaced by the turn to it and
    its wrist yaw: (t - y, t), t = `grasp_wrist_yaw`, y = the wrist's yaw (`pinch_yaw`), radians.

    Why: the wrist turns within +-pi/2, so the turn to a direction is not its pi-periodic short way round
    (a student reading cos 2(a - y), sin 2(a - y) turned into the limit); t - y is the expert's yaw error,
    one token near zero, in its finest mu-law bins, when the wrist is aligned."""
    if frame not in PRIVILEGED_FRAMES:
        raise ValueError(f"the privileged frame must be one of {PRIVILEGED_FRAMES}, not {frame}")
    if frame == "world":
        return obs
    framed = dict(obs)
    if OBJECT_POSES_KEY in obs:
        poses = np.asarray(obs[OBJECT_POSES_KEY], dtype=np.float32)
        pinch = np.asarray(obs[PINCH_POSE_KEY], dtype=np.float32)[..., None, :3]
        relative = poses.reshape(*poses.shape[:-1], -1, 7).copy()
        relative[..., :3] -= pinch
        framed[OBJECT_POSES_KEY] = relative.reshape(poses.shape)
    if frame == "pinch_yaw" and OBJECT_SHAPES_KEY in obs:
        shapes = np.asarray(obs[OBJECT_SHAPES_KEY], dtype=np.float32)
        rows = shapes.reshape(*shapes.shape[:-1], -1, SHAPE_FEATURES_PER_OBJECT).copy()
        wrist = pinch_yaw(np.asarray(obs[PINCH_POSE_KEY]))[..., None]
        target = grasp_wrist_yaw(rows[..., SHAPE_DIRECTION_INDEX], rows[..., SHAPE_DIRECTION_INDEX + 1])
        rows[..., SHAPE_DIRECTION_INDEX] = target - wrist
        rows[..., SHAPE_DIRECTION_INDEX + 1] = target
        framed[OBJECT_SHAPES_KEY] = rows.reshape(shapes.shape)
    return framed


class ObservationTokenizer:
    """Turns observation dicts and actions into Gato tokens, as configured by ``cfg.tokenizer``.

    ``cfg`` is the full composed config (actions are normalised by ``cfg.control.action_low/high``).
    Which observation keys are used, and which of them are companded, discrete or text, comes from
    ``cfg.tokenizer.observation``; the privileged ``objects/pose`` joins the tensors only when
    ``use_privileged`` is set (state-based policies). Keys of the observation that are not configured
    are ignored, missing configured keys raise.
    """

    def __init__(self, cfg: Any, text_tokenizer: Any | None = None) -> None:
        tok_cfg = cfg.tokenizer
        self.layout = TokenLayout.from_config(tok_cfg)
        obs_cfg = tok_cfg.observation
        privileged = _config_list(obs_cfg, "privileged_keys") if bool(obs_cfg.use_privileged) else []
        companded = set(_config_list(obs_cfg, "companded_keys"))
        discrete = set(_config_list(obs_cfg, "discrete_keys"))
        text_keys = sorted(_config_list(obs_cfg, "text_keys"))
        image_keys = sorted(_config_list(obs_cfg, "image_keys"))
        tensor_keys = sorted(set(_config_list(obs_cfg, "tensor_keys")) | set(privileged))
        all_keys = text_keys + image_keys + tensor_keys
        if len(set(all_keys)) != len(all_keys):
            raise ValueError(f"an observation key is configured in two groups: {all_keys}")
        plans = [_KeyPlan(k, "text") for k in text_keys] + [_KeyPlan(k, "image") for k in image_keys]
        for key in tensor_keys:
            kind = "discrete" if key in discrete else "continuous"
            plans.append(_KeyPlan(key, kind, companding=key in companded and kind == "continuous"))
        self.plans: tuple[_KeyPlan, ...] = tuple(plans)
        self.companded_keys = frozenset(companded)
        self.action_low = np.asarray(cfg.control.action_low, dtype=np.float64)
        self.action_high = np.asarray(cfg.control.action_high, dtype=np.float64)
        if self.action_low.shape != self.action_high.shape or np.any(self.action_high <= self.action_low):
            raise ValueError("control.action_low/high must have equal shapes and low < high")
        self.action_companding = bool(tok_cfg.action.companding)
        self.privileged_frame = str(obs_cfg.get("privileged_frame", "world"))
        if self.privileged_frame not in PRIVILEGED_FRAMES:
            raise ValueError(
                f"tokenizer.observation.privileged_frame must be one of {PRIVILEGED_FRAMES}, "
                f"not {self.privileged_frame}"
            )
        if text_tokenizer is None and text_keys:
            from gato_ros.gato.text import TextTokenizer  # text imports this module

            text_tokenizer = TextTokenizer.from_config(cfg)
        self._text = text_tokenizer
        self._layouts: dict[tuple, _StepLayout] = {}

    # -- properties the model, decoder and serializer size themselves from --------------------------

    @property
    def observation_keys(self) -> tuple[str, ...]:
        """Observation keys in token order."""
        return tuple(p.key for p in self.plans)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def separator_id(self) -> int:
        return self.layout.separator_id

    @property
    def padding_id(self) -> int:
        return self.layout.padding_id

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    def step_length(self, obs: Mapping[str, Any]) -> int:
        """Observation tokens + separator of one step with these shapes (151 for RGB stacking)."""
        return self._layout_for(obs, batched=False)[0].length

    # -- observations --------------------------------------------------------------------------------

    def tokenize_step(self, obs: Mapping[str, Any]) -> StepTokens:
        """One step's observation + separator, in the paper's order. Text keys must hold ``str``."""
        return self._tokenize(self.privileged_in_frame(obs), batched=False)

    def privileged_in_frame(self, obs: Mapping[str, Any]) -> Mapping[str, Any]:
        """With ``privileged_frame: pinch``, object positions become offsets from the gripper's pinch point
        (world axes; orientations unchanged): near zero, where mu-law bins are finest, and the direction to
        move is one token's sign instead of a comparison of two tokens. ``pinch_yaw`` also gives each
        object's grasp direction as the wrist's turn to it and its target yaw (`in_privileged_frame`)."""
        return in_privileged_frame(obs, self.privileged_frame)

    def tokenize_values(self, obs: Mapping[str, Any], keys: tuple[str, ...], frame: str) -> np.ndarray:
        """The values of ``keys`` in one observation, flattened in the given order, as value ids: companded
        as ``companded_keys`` says, object state in ``frame`` (`PRIVILEGED_FRAMES`). Keys need not be
        observation keys of this tokenizer: training's auxiliary targets (``training.data.auxiliary``) use
        this for privileged state that an image policy predicts but never reads."""
        framed = in_privileged_frame(obs, frame)
        parts = [
            tokenize_continuous(np.asarray(framed[key]).reshape(-1), key in self.companded_keys, self.layout)
            for key in keys
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def tokenize_steps(self, observations: Mapping[str, Any]) -> StepTokens:
        """T steps at once from arrays with a leading time axis ``(T, ...)`` (episode files hold these).

        Returns a ``StepTokens`` whose arrays carry a leading T axis. Text keys are not supported here
        (text observations vary in length); tokenize those steps one by one.
        """
        if any(p.kind == "text" for p in self.plans):
            raise ValueError("tokenize_steps does not handle text observation keys; use tokenize_step")
        return self._tokenize(self.privileged_in_frame(observations), batched=True)

    def _check_keys(self, obs: Mapping[str, Any]) -> None:
        missing = [p.key for p in self.plans if p.key not in obs]
        if missing:
            raise KeyError(f"observation lacks configured keys {missing}; it has {sorted(obs)}")

    def _text_ids(self, value: Any) -> np.ndarray:
        assert self._text is not None  # built in __init__ whenever text keys are configured
        return np.asarray(self._text.encode(str(value)), dtype=np.int64)

    def _layout_for(self, obs: Mapping[str, Any], batched: bool) -> tuple[_StepLayout, dict[str, np.ndarray]]:
        """The step layout for these shapes, and the text keys' ids (encoded once: they size the layout)."""
        self._check_keys(obs)
        shapes: dict[str, tuple[int, ...]] = {}
        text_ids: dict[str, np.ndarray] = {}
        for plan in self.plans:
            value = obs[plan.key]
            if plan.kind == "text":
                text_ids[plan.key] = self._text_ids(value)
                shapes[plan.key] = (len(text_ids[plan.key]),)
            else:
                shape = np.shape(value)
                shapes[plan.key] = tuple(shape[1:] if batched else shape)
        cache_key = tuple(shapes.values())  # plans fix the key order
        layout = self._layouts.get(cache_key)
        if layout is None:  # a layout depends only on the shapes (text: its token count)
            layout = self._layouts[cache_key] = self._build_layout(shapes)
        return layout, text_ids

    def _build_layout(self, shapes: dict[str, tuple[int, ...]]) -> _StepLayout:
        p = self.layout.patch_size
        image_mask_parts, patch_pos_parts, segments = [], [], []
        start = 0
        for plan in self.plans:
            shape = shapes[plan.key]
            if plan.kind == "image":
                if len(shape) != 3 or shape[2] != 3:
                    raise ValueError(f"{plan.key}: images must be (H, W, 3), got {shape}")
                pos = patch_positions(shape[0], shape[1], p, self.layout.patch_position_vocab)
                n = len(pos)
                image_mask_parts.append(np.ones(n, dtype=bool))
                patch_pos_parts.append(pos)
            else:
                n = int(np.prod(shape, dtype=np.int64))
                image_mask_parts.append(np.zeros(n, dtype=bool))
                patch_pos_parts.append(np.zeros((n, 4), dtype=np.int64))
            segments.append((plan, start, start + n))
            start += n
        length = start + 1  # + separator
        value_groups: list[tuple[str, bool, int, int, tuple[str, ...]]] = []
        image_groups: list[tuple[str, int, int]] = []
        patch_start = 0
        for plan, lo, hi in segments:
            if plan.kind == "image":
                image_groups.append((plan.key, patch_start, patch_start + hi - lo))
                patch_start += hi - lo
            elif plan.kind in ("continuous", "discrete"):
                last = value_groups[-1] if value_groups else None
                if last is not None and (last[0], last[1], last[3]) == (plan.kind, plan.companding, lo):
                    value_groups[-1] = (plan.kind, plan.companding, last[2], hi, (*last[4], plan.key))
                else:
                    value_groups.append((plan.kind, plan.companding, lo, hi, (plan.key,)))
        image_mask_parts.append(np.zeros(1, dtype=bool))
        patch_pos_parts.append(np.zeros((1, 4), dtype=np.int64))
        return _StepLayout(
            shapes=shapes,
            length=length,
            image_mask=np.concatenate(image_mask_parts),
            patch_pos=np.concatenate(patch_pos_parts),
            obs_pos=np.arange(length, dtype=np.int64),
            segments=segments,
            value_groups=value_groups,
            image_groups=image_groups,
            num_patches=patch_start,
        )

    def _tokenize(self, obs: Mapping[str, Any], batched: bool) -> StepTokens:
        layout, text_ids = self._layout_for(obs, batched)
        lead: tuple[int, ...] = ()
        if batched:
            lead = (int(np.shape(obs[self.plans[0].key])[0]),)
        tokens = np.zeros((*lead, layout.length), dtype=np.int64)
        tokens[..., -1] = self.layout.separator_id
        for plan, lo, hi in layout.segments:
            if plan.kind == "text":
                tokens[..., lo:hi] = text_ids[plan.key]
        for kind, companding, lo, hi, keys in layout.value_groups:
            parts = [np.asarray(obs[key]).reshape(*lead, -1) for key in keys]
            flat = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
            if kind == "discrete":
                tokens[..., lo:hi] = tokenize_discrete(flat, self.layout)
            else:
                tokens[..., lo:hi] = tokenize_continuous(flat, companding, self.layout)
        p = self.layout.patch_size
        patches = np.empty((*lead, layout.num_patches, 3, p, p), dtype=np.float32)
        for key, first, end in layout.image_groups:
            image_to_patches(obs[key], p, out=patches[..., first:end, :, :, :])
        shape_l = (*lead, layout.length)
        return StepTokens(
            tokens=tokens,
            image_mask=np.broadcast_to(layout.image_mask, shape_l),
            patches=patches,
            patch_pos=np.broadcast_to(layout.patch_pos, (*shape_l, 4)),
            obs_pos=np.broadcast_to(layout.obs_pos, shape_l),
        )

    # -- actions -------------------------------------------------------------------------------------

    def normalize_action(self, action: np.ndarray) -> np.ndarray:
        """Physical action -> [-1, 1] per dimension by the configured bounds (clipped)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape[-1] != self.action_dim:
            raise ValueError(f"action must end in dimension {self.action_dim}, got {action.shape}")
        _require_finite(action, "action")
        scaled = 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0
        return np.clip(scaled, -1.0, 1.0)

    def denormalize_action(self, scaled: np.ndarray) -> np.ndarray:
        scaled = np.clip(np.asarray(scaled, dtype=np.float64), -1.0, 1.0)
        return self.action_low + (scaled + 1.0) * 0.5 * (self.action_high - self.action_low)

    def tokenize_action(self, action: np.ndarray) -> np.ndarray:
        """Action(s) ``(..., 5)`` -> int64 ids ``(..., 5)``: normalised by the bounds, binned, no companding
        (configurable)."""
        return tokenize_continuous(self.normalize_action(action), self.action_companding, self.layout)

    def detokenize_action(self, ids: np.ndarray) -> np.ndarray:
        """Action ids ``(..., 5)`` -> physical action (bin centres, within the configured bounds)."""
        ids = np.asarray(ids)
        if ids.shape[-1] != self.action_dim:
            raise ValueError(f"action ids must end in dimension {self.action_dim}, got {ids.shape}")
        return self.denormalize_action(detokenize_continuous(ids, self.action_companding, self.layout))
