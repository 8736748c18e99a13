"""The serialized batch of docs/ARCHITECTURE.md ("Gato token layout"): what the model and the loss consume.

Its own module (torch only) so that the trainer, the dataset mixture and benchmarks/gpu_check.py (which runs
without hydra) share one definition of the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Self

import torch


@dataclass
class TokenBatch:
    """A batch B x T in the Gato token layout (torch tensors)."""

    tokens: torch.Tensor  # LongTensor[B, T]; 0 at image positions
    image_mask: torch.Tensor  # BoolTensor[B, T]
    patches: torch.Tensor  # FloatTensor[N, 3, p, p], N = image_mask.sum(), row-major (b, t) order
    patch_pos: torch.Tensor  # LongTensor[B, T, 4]
    obs_pos: torch.Tensor  # LongTensor[B, T]
    loss_mask: torch.Tensor  # FloatTensor[B, T]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        """Every tensor field moved to `device` (subclasses' extra fields included)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        return replace(self, **moved)

    def pin_memory(self) -> Self:
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


BATCH_FIELDS = tuple(f.name for f in fields(TokenBatch))
