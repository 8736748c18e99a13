"""Camera frames on their way to the tokenizer: one resize rule for training and deployment, and the
training-time augmentation of the sampler. ROS-free (numpy + OpenCV).

The policy's image size is the ``cameras.width x height`` of the config it was trained with
(`policy_image_size`). Recorded frames of another size are fitted to it by the training sampler, and live
frames by whoever runs the checkpoint (the policy node, DAgger collection, the in-training success check),
with the same `fit_image`: a centre crop to the aspect ratio, then an area-filtered resize. So a dataset
recorded at 128 x 128 trains a 64 x 64 policy (16 patches per camera instead of 64: a quarter of the image
tokens per step) without being recorded again.

Augmentation (`ImageAugmentation`, ``training.data.augmentation``) follows what image behaviour cloning
relies on: a random shift (pad by n pixels replicating the edge, crop back; DrQ, Kostrikov et al. 2020)
and colour jitter (brightness, contrast, saturation, hue). One draw per training sequence and camera, the
same for every step of the window (a camera does not jump between consecutive frames), from the
sequence's own random stream, so a batch is a pure function of (seed, rank, step) as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

PIXELS_SUFFIX = "/pixels"
# Rec. 601 luma and the YIQ transform (a hue rotation is a rotation of the I-Q plane).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def policy_image_size(cfg: Any) -> tuple[int, int]:
    """(width, height) the policy of ``cfg`` (a checkpoint's config, or the one being trained) sees."""
    return int(cfg.cameras.width), int(cfg.cameras.height)


def fit_image(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize (area filter) to height x width."""
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    target = width / height
    if w / h > target:
        crop = round(h * target)
        x0 = (w - crop) // 2
        pixels = pixels[:, x0 : x0 + crop]
    elif w / h < target:
        crop = round(w / target)
        y0 = (h - crop) // 2
        pixels = pixels[y0 : y0 + crop]
    return cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=cv2.INTER_AREA)


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """`fit_image` over a leading time axis ``(n, H, W, 3)``."""
    if frames.shape[1:3] == (height, width):
        return frames
    out = np.empty((len(frames), height, width, frames.shape[-1]), dtype=frames.dtype)
    for i, frame in enumerate(frames):
        out[i] = fit_image(frame, width, height)
    return out


def fit_observation(observation: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    """The observation with every camera frame (``*/pixels``) fitted to the policy's image size."""
    return {
        key: fit_image(np.asarray(value), width, height) if key.endswith(PIXELS_SUFFIX) else value
        for key, value in observation.items()
    }


@dataclass(frozen=True)
class AugmentationDraw:
    """One draw of the augmentation: what happens to every frame of one camera in one sequence."""

    shift: tuple[int, int]  # crop offset (rows, cols) into the frame padded by shift_pixels
    brightness: float
    contrast: float
    saturation: float
    hue_radians: float


@dataclass(frozen=True)
class ImageAugmentation:
    """Random shift + colour jitter of uint8 RGB frames; every magnitude 0 is the identity."""

    shift_pixels: int = 0  # pad by n (edge replicated), crop back at a random offset: shifts of +-n pixels
    brightness: float = 0.0  # scale by U(1 - b, 1 + b)
    contrast: float = 0.0  # stretch about the frame's mean grey by U(1 - c, 1 + c)
    saturation: float = 0.0  # blend with the grey image by U(1 - s, 1 + s)
    hue: float = 0.0  # rotate hue by U(-h, h) half turns (0.5: any hue)
    probability: float = 1.0  # share of sequences augmented at all

    def __post_init__(self) -> None:
        if int(self.shift_pixels) < 0:
            raise ValueError(f"augmentation.shift_pixels must be >= 0, got {self.shift_pixels}")
        for name in ("brightness", "contrast", "saturation"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation.{name} must be in [0, 1], got {value}")
        if not 0.0 <= float(self.hue) <= 0.5:
            raise ValueError(f"augmentation.hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 <= float(self.probability) <= 1.0:
            raise ValueError(f"augmentation.probability must be in [0, 1], got {self.probability}")

    @classmethod
    def from_config(cls, node: Any) -> ImageAugmentation:
        """From ``training.data.augmentation`` (absent or null: no augmentation)."""
        if node is None:
            return cls()
        return cls(
            shift_pixels=int(node.get("shift_pixels", 0)),
            brightness=float(node.get("brightness", 0.0)),
            contrast=float(node.get("contrast", 0.0)),
            saturation=float(node.get("saturation", 0.0)),
            hue=float(node.get("hue", 0.0)),
            probability=float(node.get("probability", 1.0)),
        )

    @property
    def enabled(self) -> bool:
        magnitudes = (self.shift_pixels, self.brightness, self.contrast, self.saturation, self.hue)
        return self.probability > 0.0 and any(float(m) > 0.0 for m in magnitudes)

    def draw(self, rng: np.random.Generator) -> AugmentationDraw | None:
        """One draw (None: this sequence is not augmented). Always consumes the same number of random
        numbers, so turning one magnitude up does not reshuffle the others."""
        u = rng.random(7)
        if not self.enabled or u[0] >= self.probability:
            return None
        n = int(self.shift_pixels)
        return AugmentationDraw(
            shift=(int(u[1] * (2 * n + 1)), int(u[2] * (2 * n + 1))),
            brightness=1.0 + self.brightness * (2.0 * u[3] - 1.0),
            contrast=1.0 + self.contrast * (2.0 * u[4] - 1.0),
            saturation=1.0 + self.saturation * (2.0 * u[5] - 1.0),
            hue_radians=math.pi * self.hue * (2.0 * u[6] - 1.0),
        )

    def apply(self, frames: np.ndarray, draw: AugmentationDraw | None) -> np.ndarray:
        """``(n, H, W, 3)`` uint8 -> the same shape, augmented by ``draw`` (None: unchanged)."""
        if draw is None or len(frames) == 0:
            return frames
        out = frames
        n = int(self.shift_pixels)
        if n > 0:
            h, w = frames.shape[1:3]
            padded = np.pad(frames, ((0, 0), (n, n), (n, n), (0, 0)), mode="edge")
            dy, dx = draw.shift
            out = padded[:, dy : dy + h, dx : dx + w]
        if (draw.brightness, draw.contrast, draw.saturation, draw.hue_radians) == (1.0, 1.0, 1.0, 0.0):
            return np.ascontiguousarray(out)
        colour = _colour_matrix(draw.saturation, draw.hue_radians) * np.float32(draw.brightness)
        x = out.astype(np.float32) @ colour.T
        if draw.contrast != 1.0:
            mean = (x @ _LUMA).mean(axis=(1, 2), keepdims=True)[..., None]
            x = (x - mean) * np.float32(draw.contrast) + mean
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _colour_matrix(saturation: float, hue_radians: float) -> np.ndarray:
    """3x3 RGB matrix: a hue rotation in YIQ, then a blend with the grey image by ``saturation``."""
    cos, sin = math.cos(hue_radians), math.sin(hue_radians)
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    hue = _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ
    grey = np.outer(np.ones(3), _LUMA.astype(np.float64))
    saturate = saturation * np.eye(3) + (1.0 - saturation) * grey
    return (saturate @ hue).astype(np.float32)


class PolicyFrames:
    """A camera's recorded frames as the policy sees them in training: fitted to the policy's image size
    and augmented by one draw, decoded only for the steps a window asks for (``frames[lo:hi]``)."""

    def __init__(
        self,
        frames: Any,
        width: int,
        height: int,
        augmentation: ImageAugmentation | None = None,
        draw: AugmentationDraw | None = None,
    ) -> None:
        self.frames = frames
        self.width, self.height = int(width), int(height)
        self.augmentation = augmentation
        self.draw = draw

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.frames), self.height, self.width, int(self.frames.shape[-1]))

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: Any) -> np.ndarray:
        single = isinstance(index, int | np.integer)
        wanted = slice(int(index), int(index) + 1 or None) if single else index
        frames = np.asarray(self.frames[wanted])
        frames = fit_frames(frames, self.width, self.height)
        if self.augmentation is not None:
            frames = self.augmentation.apply(frames, self.draw)
        return frames[0] if single else frames
