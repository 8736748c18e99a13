"""The Gato transformer: a small, honest decoder-only model in the spirit of nanoGPT.

Inputs follow the "Gato token layout" of docs/ARCHITECTURE.md. Every discrete token (text, discretised
values, separator) goes through one embedding table; image patches go through a single ResNet-v2 block.
There is no global (sequence) position encoding, as in the paper: a token knows where it is only through
the learned within-image patch position (row + column) and the learned local observation position, and
through the causal mask. That is what makes a KV cache trimmed to whole time steps exact (see decoder.py).

The output head is tied to the token embedding by default (`model.tie_embeddings`): the 33k-row table is
most of a small model, and tying halves it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

if TYPE_CHECKING:  # the model itself needs only torch (benchmarks/gpu_check.py runs without hydra)
    from omegaconf import DictConfig


@dataclass(frozen=True)
class GatoModelConfig:
    """Architecture hyper-parameters; one hydra `model/*.yaml` file plus the tokenizer's vocabulary size."""

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    d_head: int
    context_length: int
    max_obs_tokens: int
    patch_size: int
    patch_channels: int
    patch_stem_stride: int
    patch_groups: int
    patch_pos_vocab: int
    image_channels: int = 3
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    # How the value-bin rows of the token table start: "normal" like every row (the paper), or
    # "sinusoidal": each bin's row a sinusoidal code of its value, so neighbouring bins start out similar.
    # A lookup table must otherwise learn the order of 1024 bins from data, which small runs cannot afford.
    value_embedding_init: str = "normal"
    value_id_start: int = 0  # first value-bin id (the tokenizer's text_vocab_size); set by build_model
    value_id_count: int = 0  # number of value bins (the tokenizer's num_bins); set by build_model

    @classmethod
    def from_cfg(cls, model_cfg: DictConfig | dict[str, Any], vocab_size: int) -> GatoModelConfig:
        """Take the architecture keys of a `model` config node (extra keys such as docs are ignored)."""
        values = _plain_mapping(model_cfg)
        names = {f.name for f in fields(cls)} - {"vocab_size"}
        return cls(vocab_size=int(vocab_size), **{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def attn_width(self) -> int:
        return self.n_head * self.d_head

    @property
    def patch_grid(self) -> int:
        """Side of the feature map inside the patch encoder after its strided stem."""
        return self.patch_size // self.patch_stem_stride

    @property
    def action_obs_index(self) -> int:
        """The one local-position index that all action tokens share (the last row of the table)."""
        return self.max_obs_tokens


def _plain_mapping(node: Any) -> dict[str, Any]:
    """A resolved plain dict from an OmegaConf node or any mapping (without importing omegaconf)."""
    if type(node).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)
    return dict(node)


def parameter_count_formula(cfg: GatoModelConfig) -> dict[str, int]:
    """Parameter count from the architecture alone (no tensors): what `expected_params` documents.

    `embedding` counts the lookup tables (tokens, patch rows/columns, local observation positions, and an
    untied output head); `non_embedding` is everything else, including the patch encoder.
    """
    d, b = cfg.d_model, int(cfg.bias)
    c, s, g2 = cfg.patch_channels, cfg.patch_stem_stride, cfg.patch_grid**2
    attn = d * 3 * cfg.attn_width + b * 3 * cfg.attn_width + cfg.attn_width * d + b * d
    mlp = d * cfg.d_ff + b * cfg.d_ff + cfg.d_ff * d + b * d
    layer = attn + mlp + 2 * 2 * d  # two LayerNorms
    patch_encoder = (
        (cfg.image_channels * c * s * s + c)  # strided stem conv
        + 2 * (c * c * 9 + c)  # the residual block's two 3x3 convs
        + 3 * 2 * c  # three GroupNorms
        + (c * g2 * d + d)  # flatten -> model width
    )
    embedding = (
        cfg.vocab_size * d
        + 2 * cfg.patch_pos_vocab * d
        + (cfg.max_obs_tokens + 1) * d
        + (0 if cfg.tie_embeddings else cfg.vocab_size * d)
    )
    non_embedding = cfg.n_layer * layer + 2 * d + patch_encoder
    return {"total": embedding + non_embedding, "non_embedding": non_embedding, "embedding": embedding}


class PatchEncoder(nn.Module):
    """Pixels of one 16x16 patch -> a model-width vector, through one pre-activation ResNet-v2 block."""

    def __init__(self, cfg: GatoModelConfig) -> None:
        super().__init__()
        c, s = cfg.patch_channels, cfg.patch_stem_stride
        if cfg.patch_size % s or c % cfg.patch_groups:
            raise ValueError("patch_size must divide by patch_stem_stride and patch_channels by patch_groups")
        self.stem = nn.Conv2d(cfg.image_channels, c, kernel_size=s, stride=s)
        self.norm1 = nn.GroupNorm(cfg.patch_groups, c)
        self.conv1 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(cfg.patch_groups, c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.out_norm = nn.GroupNorm(cfg.patch_groups, c)
        self.out = nn.Linear(c * cfg.patch_grid**2, cfg.d_model)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        h = self.stem(patches)
        h = h + self.conv2(F.gelu(self.norm2(self.conv1(F.gelu(self.norm1(h))))))
        return self.out(F.gelu(self.out_norm(h)).flatten(1))


# One layer's (keys, values) cache, each [B, n_head, context, d_head].
LayerKVCache = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GatoModelConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.attn_width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.attn_width, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d] -> stacked q, k, v, each [B, n_head, T, d_head]."""
        B, T, _ = x.shape
        return self.qkv(x).view(B, T, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """Per-head outputs [B, n_head, T, d_head] -> the projected [B, T, d]."""
        B, _, T, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, kv_cache: LayerKVCache | None = None, start: int = 0) -> torch.Tensor:
        """Full causal attention, or (with `kv_cache`) attention of x at positions [start, start+T) over
        the cache, after writing x's keys/values into it."""
        q, k, v = self._heads(x)
        if kv_cache is None:
            drop = self.dropout if self.training else 0.0
            return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop))
        k_cache, v_cache = kv_cache
        end = start + x.shape[1]
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = v
        keys, values = k_cache[:, :, :end], v_cache[:, :, :end]
        if end - start == 1:  # the newest token sees everything before it: no mask needed
            return self._merge(F.scaled_dot_product_attention(q, keys, values))
        rows = torch.arange(start, end, device=x.device).unsqueeze(1)
        mask = torch.arange(end, device=x.device).unsqueeze(0) <= rows
        return self._merge(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))

    def forward_static(
        self, x: torch.Tensor, kv_cache: LayerKVCache, positions: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """T tokens at the device-side `positions` ([T] long) attending over the whole cache through the
        `visible` mask ([T, context] bool): fixed shapes and no host sync, so it can be captured in a CUDA
        graph and replayed at every position."""
        q, k, v = self._heads(x)
        k_cache, v_cache = kv_cache
        k_cache.index_copy_(2, positions, k)
        v_cache.index_copy_(2, positions, v)
        return self._merge(F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, cfg: GatoModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv_cache: LayerKVCache | None = None, start: int = 0) -> torch.Tensor:
        return self._mlp_residual(x + self.drop(self.attn(self.ln1(x), kv_cache, start)))

    def forward_static(
        self, x: torch.Tensor, kv_cache: LayerKVCache, positions: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """The decode-only path (see `CausalSelfAttention.forward_static`); inference only, so no dropout."""
        return self._mlp_residual(x + self.attn.forward_static(self.ln1(x), kv_cache, positions, visible))

    def _mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        # Dropout is the identity outside training, so the static (inference) path shares this unchanged.
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))


def sinusoidal_value_code(count: int, width: int, std: float) -> torch.Tensor:
    """[count, width] rows for bins with centres v in (-1, 1): sin and cos of v at geometrically spaced
    frequencies (from one half-period over the whole range to about one per bin), scaled to `std`."""
    centres = -1.0 + (2.0 * torch.arange(count, dtype=torch.float64) + 1.0) / count
    half = width // 2
    frequencies = math.pi / 2 * (count / 2.0) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    angles = centres[:, None] * frequencies[None, :]
    code = torch.zeros(count, width, dtype=torch.float64)
    code[:, 0 : 2 * half : 2] = torch.sin(angles)
    code[:, 1 : 2 * half : 2] = torch.cos(angles)
    return (code * std * math.sqrt(2.0)).float()


class GatoModel(nn.Module):
    """Decoder-only Gato. `forward` maps a serialized batch to next-token logits over the vocabulary."""

    def __init__(self, cfg: GatoModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.token_embedding = nn.Embedding(cfg.vocab_size, d)
        self.patch_encoder = PatchEncoder(cfg)
        self.patch_row_embedding = nn.Embedding(cfg.patch_pos_vocab, d)
        self.patch_col_embedding = nn.Embedding(cfg.patch_pos_vocab, d)
        self.obs_pos_embedding = nn.Embedding(cfg.max_obs_tokens + 1, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.token_embedding.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2L)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.fc_out):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        cfg = self.config
        if cfg.value_embedding_init == "sinusoidal" and cfg.value_id_count > 0:
            start, count = cfg.value_id_start, cfg.value_id_count
            with torch.no_grad():
                table = self.token_embedding.weight
                code = sinusoidal_value_code(count, cfg.d_model, std)
                table[start : start + count] = code.to(device=table.device, dtype=table.dtype)
        elif cfg.value_embedding_init not in ("normal", "sinusoidal"):
            raise ValueError(
                f"model.value_embedding_init must be normal or sinusoidal, not {cfg.value_embedding_init}"
            )

    # ---- embedding -------------------------------------------------------------------------------
    def patch_position_index(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Quantised interval [lo, hi) -> one index: uniform sample in training, rounded mean at eval."""
        hi = torch.maximum(hi, lo + 1)
        if self.training:
            index = lo + (torch.rand(lo.shape, device=lo.device) * (hi - lo)).long()
        else:
            index = torch.div(lo + hi, 2, rounding_mode="floor")  # mean of lo..hi-1, rounded half up
        return index.clamp(max=self.config.patch_pos_vocab - 1)

    def embed(
        self,
        tokens: torch.Tensor,
        image_mask: torch.Tensor,
        patches: torch.Tensor,
        patch_pos: torch.Tensor,
        obs_pos: torch.Tensor,
    ) -> torch.Tensor:
        """[B, T] serialized inputs -> [B, T, d] input embeddings (before the first block)."""
        if patches.shape[0]:
            where, rows, cols = self.image_indices(image_mask, patch_pos)
        else:
            where = rows = cols = None
        return self.drop(self.embed_indexed(tokens, obs_pos, patches, where, rows, cols))

    def image_indices(
        self, image_mask: torch.Tensor, patch_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where the image tokens sit in the flattened [B * T] sequence, and their patches' row and column
        indices. Data-dependent shapes (a host sync): the fixed-shape decoder computes them once per
        observation layout."""
        pos = patch_pos[image_mask]
        rows = self.patch_position_index(pos[:, 0], pos[:, 1])
        cols = self.patch_position_index(pos[:, 2], pos[:, 3])
        return image_mask.reshape(-1).nonzero().squeeze(1), rows, cols

    def embed_indexed(
        self,
        tokens: torch.Tensor,
        obs_pos: torch.Tensor,
        patches: torch.Tensor,
        where: torch.Tensor | None,
        rows: torch.Tensor | None,
        cols: torch.Tensor | None,
    ) -> torch.Tensor:
        """`embed` with the image indices given (None: no images) and without dropout: fixed shapes and no
        host sync, so the observation prefill can be captured in a CUDA graph."""
        B, T = tokens.shape
        local = self.obs_pos_embedding(obs_pos)
        x = self.token_embedding(tokens) + local
        if where is not None:
            patch_x = self.patch_encoder(patches.to(x.dtype))
            patch_x = patch_x + self.patch_row_embedding(rows) + self.patch_col_embedding(cols)
            # image positions carry token id 0: replace that embedding (keep the local position term)
            base = local.reshape(B * T, -1).index_select(0, where)
            x = x.reshape(B * T, -1).index_copy(0, where, patch_x.to(x.dtype) + base).reshape(B, T, -1)
        return x

    # ---- trunk and head --------------------------------------------------------------------------
    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings -> final-normed hidden states over the whole (causal) sequence."""
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def hidden_cached(self, x: torch.Tensor, kv_cache: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings of positions [start, start+T) -> their hidden states, reading/writing `kv_cache`
        ([n_layer, 2, B, n_head, context, d_head])."""
        for i, block in enumerate(self.blocks):
            x = block(x, (kv_cache[i, 0], kv_cache[i, 1]), start)
        return self.ln_f(x)

    def hidden_static(self, x: torch.Tensor, kv_cache: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, T, d] of positions [p, p + T), p the device-side `position` ([1] long) -> their
        hidden states, writing their keys/values into `kv_cache`; each attends over the whole cache through
        a causal mask. Fixed shapes, no host sync: CUDA-graph capturable, replayable at any position."""
        context = kv_cache.shape[-2]
        positions = position + torch.arange(x.shape[1], device=position.device)  # [T]
        visible = torch.arange(context, device=position.device).unsqueeze(0) <= positions.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            x = block.forward_static(x, (kv_cache[i, 0], kv_cache[i, 1]), positions, visible)
        return self.ln_f(x)

    def logits(self, h: torch.Tensor, id_range: tuple[int, int] | None = None) -> torch.Tensor:
        """Output head; `id_range` restricts it to a slice of the vocabulary (e.g. the action values)."""
        if id_range is None:
            return self.head(h)
        return F.linear(h, self.head.weight[id_range[0] : id_range[1]])

    def forward(
        self,
        tokens: torch.Tensor,
        image_mask: torch.Tensor,
        patches: torch.Tensor,
        patch_pos: torch.Tensor,
        obs_pos: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, float]:
        """Serialized batch -> logits [B, T, vocab]; logits at t predict the token at t + 1.

        With `loss_mask`, returns (the NLL over the target tokens summed with the mask's weights, the
        weights' sum: the target count when all are 1) instead, computing the head only where a target is
        predicted (training goes through here so that DDP's hooks fire).
        """
        h = self.hidden(self.embed(tokens, image_mask, patches, patch_pos, obs_pos))
        if loss_mask is None:
            return self.head(h)
        weights = loss_mask[:, 1:]
        predicts = weights > 0
        logits = self.head(h[:, :-1][predicts])
        nll = F.cross_entropy(logits.float(), tokens[:, 1:][predicts], reduction="none")
        target_weights = weights[predicts].float()
        return (nll * target_weights).sum(), float(target_weights.sum())

    def new_kv_cache(self, batch: int = 1, device=None, dtype=None) -> torch.Tensor:
        """A pre-allocated static KV cache for the whole context window."""
        cfg = self.config
        ref = self.head.weight
        shape = (cfg.n_layer, 2, batch, cfg.n_head, cfg.context_length, cfg.d_head)
        return torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)

    # ---- bookkeeping -----------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Counted from the built tensors (shared head/embedding counted once)."""
        total = sum(p.numel() for p in self.parameters())
        tables = [
            self.token_embedding,
            self.patch_row_embedding,
            self.patch_col_embedding,
            self.obs_pos_embedding,
        ]
        embedding = sum(m.weight.numel() for m in tables)
        if not self.config.tie_embeddings:
            embedding += self.head.weight.numel()
        return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


def build_model(
    cfg: DictConfig, vocab_size: int | None = None, device: str | torch.device | None = None
) -> GatoModel:
    """Build the model of a composed config; the vocabulary size comes from the tokenizer."""
    if vocab_size is None:
        from gato_ros.gato.tokenizer import ObservationTokenizer

        vocab_size = ObservationTokenizer(cfg).vocab_size
    model_cfg = dataclasses.replace(
        GatoModelConfig.from_cfg(cfg.model, vocab_size),
        value_id_start=int(cfg.tokenizer.text_vocab_size),
        value_id_count=int(cfg.tokenizer.num_bins),
    )
    if device is None:
        return GatoModel(model_cfg)
    with torch.device(device):
        return GatoModel(model_cfg)
