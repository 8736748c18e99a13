"""Camera frames on their way to the tokenizer: the fit to the policy's image size and the sampler's
augmentation (identity at zero, seeded, what each part does)."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.gato.images import (
    AugmentationDraw,
    ImageAugmentation,
    PolicyFrames,
    fit_frames,
    fit_image,
    fit_observation,
)


def frames(count: int = 3, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 236, (count, height, width, 3), dtype=np.uint8)


def test_fit_observation_touches_only_camera_frames() -> None:
    obs = {"cam/pixels": frames(1)[0], "arm/q": np.arange(3.0)}
    fitted = fit_observation(obs, 16, 16)
    assert fitted["cam/pixels"].shape == (16, 16, 3) and fitted["arm/q"] is obs["arm/q"]
    np.testing.assert_array_equal(fit_frames(frames(2), 16, 16)[1], fit_image(frames(2)[1], 16, 16))


def test_zero_magnitudes_are_the_identity() -> None:
    aug = ImageAugmentation()
    assert not aug.enabled and aug.draw(np.random.default_rng(0)) is None
    x = frames()
    no_op = AugmentationDraw(shift=(0, 0), brightness=1.0, contrast=1.0, saturation=1.0, hue_radians=0.0)
    np.testing.assert_array_equal(ImageAugmentation(shift_pixels=0).apply(x, no_op), x)
    # a full colour pipeline at unit factors changes nothing either (to rounding)
    coloured = ImageAugmentation(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)
    same = AugmentationDraw(shift=(0, 0), brightness=1.0, contrast=1.0, saturation=1.0, hue_radians=1e-9)
    assert np.abs(coloured.apply(x, same).astype(int) - x).max() <= 1


def test_shift_moves_every_frame_of_the_window_alike() -> None:
    aug = ImageAugmentation(shift_pixels=4)
    x = frames()
    draw = AugmentationDraw(shift=(1, 6), brightness=1.0, contrast=1.0, saturation=1.0, hue_radians=0.0)
    out = aug.apply(x, draw)
    assert out.shape == x.shape and out.dtype == np.uint8
    # padded by 4 and cropped at (1, 6): out[r, c] = x[r - 3, c + 2] away from the replicated border
    np.testing.assert_array_equal(out[:, 3:, : 48 - 2], x[:, : 32 - 3, 2:])


def test_colour_jitter_does_what_it_says() -> None:
    x = frames()
    darker = AugmentationDraw(shift=(0, 0), brightness=0.8, contrast=1.0, saturation=1.0, hue_radians=0.0)
    out = ImageAugmentation(brightness=0.3).apply(x, darker)
    assert out.mean() == pytest.approx(0.8 * x.mean(), rel=0.01)
    grey = AugmentationDraw(shift=(0, 0), brightness=1.0, contrast=1.0, saturation=0.0, hue_radians=0.0)
    out = ImageAugmentation(saturation=1.0).apply(x, grey)
    assert np.abs(out[..., 0].astype(int) - out[..., 2]).max() <= 1  # no colour left
    flat = AugmentationDraw(shift=(0, 0), brightness=1.0, contrast=0.0, saturation=1.0, hue_radians=0.0)
    out = ImageAugmentation(contrast=1.0).apply(x, flat)
    assert out.std(axis=(1, 2)).max() < 1.0  # every frame its mean grey


def test_draws_are_reproducible_and_within_their_ranges() -> None:
    aug = ImageAugmentation(shift_pixels=4, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05)
    a = [aug.draw(np.random.default_rng([5, k])) for k in range(50)]
    b = [aug.draw(np.random.default_rng([5, k])) for k in range(50)]
    assert a == b
    assert all(d is not None and min(d.shift) >= 0 and max(d.shift) <= 8 for d in a)
    assert all(0.8 <= d.brightness <= 1.2 and abs(d.hue_radians) <= 0.05 * np.pi for d in a)
    assert len({d.shift for d in a}) > 10
    never = ImageAugmentation(shift_pixels=4, probability=0.0)
    assert never.draw(np.random.default_rng(0)) is None


@pytest.mark.parametrize(
    "bad",
    [{"shift_pixels": -1}, {"brightness": 1.5}, {"hue": 0.6}, {"probability": 2.0}, {"contrast": -0.1}],
)
def test_nonsense_magnitudes_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="augmentation"):
        ImageAugmentation(**bad)


def test_policy_frames_fit_and_augment_only_the_asked_steps() -> None:
    x = frames(5)
    aug = ImageAugmentation(shift_pixels=2, brightness=0.2)
    draw = aug.draw(np.random.default_rng(1))
    view = PolicyFrames(x, 16, 16, aug, draw)
    assert view.shape == (5, 16, 16, 3) and len(view) == 5 and view.dtype == np.uint8
    expected = aug.apply(fit_frames(x[1:4], 16, 16), draw)
    np.testing.assert_array_equal(view[1:4], expected)
    np.testing.assert_array_equal(view[2], expected[1])
    np.testing.assert_array_equal(view[-1], aug.apply(fit_frames(x[4:], 16, 16), draw)[0])
