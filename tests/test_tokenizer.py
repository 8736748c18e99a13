"""Gato tokenizer: mu-law binning error bounds, id ranges, image patches, the RGB-stacking step layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gato_ros.config import load_config
from gato_ros.gato.text import TextTokenizer
from gato_ros.gato.tokenizer import (
    PAPER_LAYOUT,
    ObservationTokenizer,
    TokenLayout,
    detokenize_continuous,
    image_to_patches,
    in_privileged_frame,
    mu_law_decode,
    mu_law_encode,
    patch_positions,
    pinch_yaw,
    tokenize_continuous,
    tokenize_discrete,
)

LAYOUT = PAPER_LAYOUT
HALF_BIN = 1.0 / LAYOUT.num_bins  # bins are 2 / num_bins wide in [-1, 1]; centres are half a bin away
LOG_TERM = math.log1p(LAYOUT.M * LAYOUT.mu)
EPS = 1e-12


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return ObservationTokenizer(cfg)


def rgb_observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "basket_front_left/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "basket_front_right/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "gripper/joints/angle": np.array([rng.uniform(0, 255)], dtype=np.float32),
        "sawyer/joints/angle": rng.uniform(-3, 3, 7).astype(np.float32),
        "sawyer/pinch/pose": rng.uniform(-1, 1, 7).astype(np.float32),
        "sawyer/tcp/pose": rng.uniform(-1, 1, 7).astype(np.float32),
        "objects/pose": rng.uniform(-1, 1, 21).astype(np.float32),
    }


# ---- layout -----------------------------------------------------------------------------------------


def test_yaml_matches_the_paper_layout(cfg) -> None:
    assert TokenLayout.from_config(cfg.tokenizer) == PAPER_LAYOUT


def test_id_ranges_never_collide(tokenizer) -> None:
    layout = tokenizer.layout
    text = TextTokenizer()
    corpus_ids = text.encode("Stack the red object on the blue one. ∆ ümlaut 123")
    assert corpus_ids.min() >= 0 and corpus_ids.max() < text.piece_count <= layout.text_vocab_size == 32000
    lo, hi = layout.value_id_range
    assert (lo, hi) == (32000, 33024)
    extremes = tokenize_continuous(np.array([-1e9, -1.0, 0.0, 1.0, 1e9]), companding=True)
    assert extremes.min() == lo and extremes.max() == hi - 1
    assert tokenize_discrete(np.array([0, 1023])).tolist() == [lo, hi - 1]
    assert tokenizer.separator_id == 33024 == hi
    assert tokenizer.padding_id == 33025
    assert tokenizer.vocab_size == 33026 > tokenizer.padding_id


def test_layout_without_padding_id() -> None:
    layout = TokenLayout(use_padding_id=False)
    assert layout.vocab_size == 33025 and layout.padding_id == layout.separator_id


# ---- mu-law and binning -----------------------------------------------------------------------------


def test_mu_law_reference_values() -> None:
    assert mu_law_encode(np.array(0.07)) == pytest.approx(0.205, abs=1e-3)
    assert mu_law_encode(np.array(1.0)) == pytest.approx(0.455, abs=1e-3)
    assert mu_law_encode(np.array(256.0)) == pytest.approx(1.0)
    x = np.linspace(-256, 256, 1001)
    np.testing.assert_allclose(mu_law_decode(mu_law_encode(x)), x, atol=1e-9)


def test_bin_edges() -> None:
    ids = tokenize_continuous(
        np.array([-1.0, -1 + 2 / 1024 - 1e-9, -1 + 2 / 1024, 0.0, 1 - 1e-9, 1.0]), False
    )
    assert (ids - 32000).tolist() == [0, 0, 1, 512, 1023, 1023]


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-1.0, 1.0)))
def test_plain_round_trip_within_half_a_bin(x: np.ndarray) -> None:
    decoded = detokenize_continuous(tokenize_continuous(x, companding=False), companding=False)
    assert np.all(np.abs(decoded - x) <= HALF_BIN + EPS)


def companded_bound(x: np.ndarray) -> np.ndarray:
    """Mean-value bound: |x - x_hat| <= max |dF^-1/dy| between y = F(x) and the bin centre * half a bin.

    F^-1(y) = sgn(y) (exp(|y| L) - 1) / mu with L = log(M mu + 1), so dF^-1/dy = (L / mu) exp(|y| L),
    which grows with |y|; the centre is at most half a bin from y, so the maximum is at |y| + half a bin:
    bound = (L / mu) exp(L (|F(x)| + 1/1024)) / 1024 = (L / 1024) (|x| + 1 / mu) exp(L / 1024).
    """
    y_max = np.abs(mu_law_encode(x)) + HALF_BIN
    return HALF_BIN * (LOG_TERM / LAYOUT.mu) * np.exp(y_max * LOG_TERM)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-256.0, 256.0)))
def test_companded_round_trip_within_the_derived_bound(x: np.ndarray) -> None:
    decoded = detokenize_continuous(tokenize_continuous(x, companding=True), companding=True)
    bound = companded_bound(x)
    assert np.all(np.abs(decoded - x) <= bound * (1 + 1e-9) + EPS)
    # the same bound in closed form: about 1 % of |x| (L / 1024 = 0.0099) plus a floor of 1e-4
    closed_form = (LOG_TERM / LAYOUT.num_bins) * (np.abs(x) + 1 / LAYOUT.mu) * math.exp(LOG_TERM * HALF_BIN)
    np.testing.assert_allclose(bound, closed_form, rtol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 32), elements=st.floats(-1e12, 1e12)),
    st.booleans(),
)
def test_any_finite_value_maps_into_the_value_range(x: np.ndarray, companding: bool) -> None:
    ids = tokenize_continuous(x, companding)
    assert ids.dtype == np.int64 and ids.shape == x.shape
    assert np.all((ids >= 32000) & (ids < 33024))
    limit = LAYOUT.M if companding else 1.0
    saturated = np.abs(x) >= limit
    assert np.all(ids[saturated & (x > 0)] == 33023) and np.all(ids[saturated & (x < 0)] == 32000)


def test_binning_is_monotonic() -> None:
    x = np.linspace(-300, 300, 20001)
    for companding in (True, False):
        assert np.all(np.diff(tokenize_continuous(x, companding)) >= 0)


def test_non_finite_and_out_of_range_inputs_raise() -> None:
    with pytest.raises(ValueError):
        tokenize_continuous(np.array([0.0, np.nan]), True)
    with pytest.raises(ValueError):
        tokenize_continuous(np.array([np.inf]), False)
    with pytest.raises(ValueError):
        detokenize_continuous(np.array([33024]), False)  # the separator is not a value
    with pytest.raises(ValueError):
        detokenize_continuous(np.array([5]), False)  # a text id is not a value
    with pytest.raises(ValueError):
        tokenize_discrete(np.array([1024]))
    with pytest.raises(ValueError):
        tokenize_discrete(np.array([1.5]))


# ---- images -----------------------------------------------------------------------------------------


def test_image_patches_shape_order_and_scale() -> None:
    h, w = 32, 48  # 2 x 3 patches
    rows, cols, chans = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    img = ((rows // 16) * 3 + (cols // 16)) * 40 + chans * 5 + (rows % 16 + cols % 16) % 4
    img = img.astype(np.uint8)
    patches = image_to_patches(img)
    assert patches.shape == (6, 3, 16, 16) and patches.dtype == np.float32
    for k in range(6):
        i, j = divmod(k, 3)  # raster order
        block = img[16 * i : 16 * i + 16, 16 * j : 16 * j + 16].astype(np.float64)
        expected = (block / 255.0 * 2.0 - 1.0) / 4.0  # [-1, 1], then / sqrt(16)
        np.testing.assert_allclose(patches[k], expected.transpose(2, 0, 1), atol=1e-6)
    black = image_to_patches(np.zeros((16, 16, 3), np.uint8))
    white = image_to_patches(np.full((16, 16, 3), 255, np.uint8))
    assert np.all(black == -0.25) and np.allclose(white, 0.25)
    batched = image_to_patches(np.stack([img, img[::-1]]))
    np.testing.assert_array_equal(batched[0], patches)
    np.testing.assert_array_equal(batched[1], image_to_patches(np.ascontiguousarray(img[::-1])))
    with pytest.raises(ValueError):
        image_to_patches(np.zeros((20, 16, 3), np.uint8))
    with pytest.raises(TypeError):
        image_to_patches(np.zeros((16, 16, 3), np.float32))


def test_patch_positions() -> None:
    pos = patch_positions(128, 128)
    assert pos.shape == (64, 4)
    assert pos[0].tolist() == [0, 16, 0, 16]
    assert pos[9].tolist() == [16, 32, 16, 32]  # row 1, column 1
    assert pos[63].tolist() == [112, 128, 112, 128]
    # the paper's example: an 80 x 64 image, the patch at row 2 column 3 -> rows [51, 77), columns [96, 128)
    example = patch_positions(80, 64)
    assert example.shape == (20, 4)
    assert example[2 * 4 + 3].tolist() == [51, 77, 96, 128]
    assert np.all(example[:, 1] > example[:, 0]) and example.max() <= 128


# ---- one RGB-stacking step --------------------------------------------------------------------------


def test_rgb_stacking_step_layout(tokenizer) -> None:
    obs = rgb_observation(np.random.default_rng(0))
    step = tokenizer.tokenize_step(obs)
    assert len(step) == 151  # 128 patches + 22 proprio + separator; + 5 actions = 156 per step
    assert step.tokens.dtype == np.int64 and step.tokens.shape == (151,)
    assert step.image_mask[:128].all() and not step.image_mask[128:].any()
    assert np.all(step.tokens[:128] == 0)
    np.testing.assert_array_equal(step.obs_pos, np.arange(151))
    expected_values = np.concatenate(
        [
            tokenize_continuous(obs[k], companding=True)
            for k in ("gripper/joints/angle", "sawyer/joints/angle", "sawyer/pinch/pose", "sawyer/tcp/pose")
        ]
    )
    np.testing.assert_array_equal(step.tokens[128:150], expected_values)
    assert step.tokens[150] == tokenizer.separator_id
    patches = np.concatenate(
        [
            image_to_patches(obs["basket_front_left/pixels"]),
            image_to_patches(obs["basket_front_right/pixels"]),
        ]
    )
    np.testing.assert_array_equal(step.patches, patches)
    np.testing.assert_array_equal(step.patch_pos[:64], patch_positions(128, 128))
    np.testing.assert_array_equal(step.patch_pos[64:128], patch_positions(128, 128))
    assert not step.patch_pos[128:].any()
    assert tokenizer.observation_keys[:2] == ("basket_front_left/pixels", "basket_front_right/pixels")


def test_privileged_object_pose_by_config() -> None:
    cfg = load_config(["tokenizer.observation.use_privileged=true"])
    tok = ObservationTokenizer(cfg)
    obs = rgb_observation(np.random.default_rng(1))
    step = tok.tokenize_step(obs)
    assert len(step) == 151 + 21
    # lexicographic among tensors: gripper/..., objects/pose, sawyer/...
    np.testing.assert_array_equal(step.tokens[129:150], tokenize_continuous(obs["objects/pose"], True))


def test_privileged_poses_relative_to_the_pinch_point() -> None:
    cfg = load_config(
        ["tokenizer.observation.use_privileged=true", "tokenizer.observation.privileged_frame=pinch"]
    )
    tok = ObservationTokenizer(cfg)
    rng = np.random.default_rng(4)
    obs = rgb_observation(rng)
    relative = obs["objects/pose"].reshape(3, 7).copy()
    relative[:, :3] -= obs["sawyer/pinch/pose"][:3]
    step = tok.tokenize_step(obs)
    np.testing.assert_array_equal(step.tokens[129:150], tokenize_continuous(relative.reshape(-1), True))
    steps = [rgb_observation(rng) for _ in range(3)]
    batched = tok.tokenize_steps({k: np.stack([o[k] for o in steps]) for k in steps[0]})
    for t, single in enumerate(steps):  # the episode path and the control-loop path agree
        np.testing.assert_array_equal(batched.tokens[t], tok.tokenize_step(single).tokens)
    with pytest.raises(ValueError, match="privileged_frame"):
        ObservationTokenizer(load_config(["tokenizer.observation.privileged_frame=base"]))


def test_grasp_directions_as_the_wrist_turn_to_them() -> None:
    """`pinch_yaw`: positions as in `pinch`, and each object's grasp direction a (cos 2a, sin 2a in
    `objects/shape`) becomes (t - y, t): t the wrist yaw in [-pi/2, pi/2] whose fingers (the tool y axis)
    close along a, y the wrist's yaw as `control.kinematics.tool_yaw` reads it. The turn is the expert's
    (`reachable_grasp_yaw`), the long way round where the short one crosses the wrist's limit; every other
    shape feature is unchanged and the token count is pinch's."""
    from gato_ros.control.kinematics import down_rotation, rotation_to_quat_wxyz, tool_yaw
    from gato_ros.twin.expert import reachable_grasp_yaw

    cfg = load_config(["+experiment=state_shape_policy", "tokenizer.observation.privileged_frame=pinch_yaw"])
    tok = ObservationTokenizer(cfg)
    pinch_cfg = load_config(
        ["+experiment=state_shape_policy", "tokenizer.observation.privileged_frame=pinch"]
    )
    rng = np.random.default_rng(7)
    observations = []
    # (wrist yaw, closing direction): the second turns -1.70 rad, not the short +1.44 through the limit
    for wrist, closing in ((0.3, 1.2), (0.57, 0.44), (-1.4, 0.1), (1.3, -1.5), (0.0, 0.3)):
        rotation = down_rotation(wrist)
        assert tool_yaw(rotation) == pytest.approx(wrist)
        obs = rgb_observation(rng)
        obs["sawyer/pinch/pose"][3:] = -rotation_to_quat_wxyz(rotation)  # either sign of q: the same yaw
        assert pinch_yaw(obs["sawyer/pinch/pose"]) == pytest.approx(wrist, abs=1e-6)
        shapes = rng.uniform(-0.05, 0.05, (3, 10)).astype(np.float32)
        shapes[:, 2:4] = [np.cos(2 * closing), np.sin(2 * closing)]
        obs["objects/shape"] = shapes.reshape(-1)
        observations.append(obs)
        framed = in_privileged_frame(obs, "pinch_yaw")
        turned = framed["objects/shape"].reshape(3, 10)
        target = turned[0, 3]
        fingers = down_rotation(target)[:2, 1]  # the closing axis at the target yaw
        assert abs(target) <= np.pi / 2
        assert abs(fingers[0] * np.sin(closing) - fingers[1] * np.cos(closing)) < 1e-5  # parallel to a
        assert target == pytest.approx(reachable_grasp_yaw(closing + np.pi / 2, wrist, np.pi / 2), abs=1e-5)
        np.testing.assert_allclose(turned[:, 2:4], [[target - wrist, target]] * 3, atol=1e-6)
        np.testing.assert_array_equal(np.delete(turned, [2, 3], axis=1), np.delete(shapes, [2, 3], axis=1))
        np.testing.assert_array_equal(
            framed["objects/pose"], in_privileged_frame(obs, "pinch")["objects/pose"]
        )
        assert len(tok.tokenize_step(obs)) == len(ObservationTokenizer(pinch_cfg).tokenize_step(obs))
    assert in_privileged_frame(observations[1], "pinch_yaw")["objects/shape"][2] == pytest.approx(
        -1.70, abs=0.01
    )
    batched = tok.tokenize_steps({k: np.stack([o[k] for o in observations]) for k in observations[0]})
    for t, single in enumerate(observations):  # the episode path and the control-loop path agree
        np.testing.assert_array_equal(batched.tokens[t], tok.tokenize_step(single).tokens)


def test_missing_key_raises_and_extra_keys_are_ignored(tokenizer) -> None:
    obs = rgb_observation(np.random.default_rng(2))
    with_extra = {**obs, "zzz/unused": np.ones(3)}
    np.testing.assert_array_equal(
        tokenizer.tokenize_step(with_extra).tokens, tokenizer.tokenize_step(obs).tokens
    )
    del obs["sawyer/tcp/pose"]
    with pytest.raises(KeyError):
        tokenizer.tokenize_step(obs)


def test_tokenize_steps_matches_single_steps(tokenizer) -> None:
    rng = np.random.default_rng(3)
    steps = [rgb_observation(rng) for _ in range(3)]
    stacked = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    batch = tokenizer.tokenize_steps(stacked)
    for t, obs in enumerate(steps):
        single = tokenizer.tokenize_step(obs)
        np.testing.assert_array_equal(batch.tokens[t], single.tokens)
        np.testing.assert_array_equal(batch.patches[t], single.patches)
        np.testing.assert_array_equal(batch.image_mask[t], single.image_mask)
        np.testing.assert_array_equal(batch.patch_pos[t], single.patch_pos)


def test_text_observation_keys_come_first() -> None:
    cfg = load_config(["tokenizer.observation.text_keys=[instruction]"])
    text = TextTokenizer.from_config(cfg)
    tok = ObservationTokenizer(cfg)  # builds the configured SentencePiece model itself
    obs = {**rgb_observation(np.random.default_rng(4)), "instruction": "stack red on blue"}
    step = tok.tokenize_step(obs)
    ids = text.encode("stack red on blue")
    np.testing.assert_array_equal(step.tokens[: len(ids)], ids)
    assert step.image_mask[len(ids) : len(ids) + 128].all()
    assert len(step) == 151 + len(ids)


# ---- actions ----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=5, max_size=5))
def test_action_round_trip(cfg, tokenizer, fractions: list[float]) -> None:
    tok = tokenizer
    low, high = np.array(cfg.control.action_low), np.array(cfg.control.action_high)
    action = low + (np.array(fractions) + 1) / 2 * (high - low)
    ids = tok.tokenize_action(action)
    assert ids.shape == (5,) and ids.dtype == np.int64 and np.all((ids >= 32000) & (ids < 33024))
    decoded = tok.detokenize_action(ids)
    assert np.all(np.abs(decoded - action) <= HALF_BIN * (high - low) / 2 + 1e-12)
    assert np.all((decoded >= low) & (decoded <= high))


def test_actions_are_clipped_to_bounds_and_nan_rejected(tokenizer) -> None:
    ids = tokenizer.tokenize_action(np.array([1.0, -1.0, 0.0, 5.0, -5.0]))
    decoded = tokenizer.detokenize_action(ids)
    np.testing.assert_allclose(decoded[[0, 1, 3, 4]], [0.07, -0.07, 1.0, -1.0], atol=1e-3)
    with pytest.raises(ValueError):
        tokenizer.tokenize_action(np.array([np.nan, 0, 0, 0, 0]))
    with pytest.raises(ValueError):
        tokenizer.detokenize_action(np.array([0, 0, 0, 0, 0]))  # text ids are not actions
