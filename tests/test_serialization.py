"""Episode serialization: exact loss mask and positions on a hand-built episode, windows on step boundaries
that fit the context, prompt conditioning masked out of the loss, run-time appending."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gato_ros.config import load_config
from gato_ros.gato.serialization import Demonstration, EpisodeSerializer, TokenSequence, serialize_steps
from gato_ros.gato.text import TextTokenizer
from gato_ros.gato.tokenizer import ObservationTokenizer

# A hand-checkable observation: one 16 x 32 image (2 patches) and a 2-vector -> 2 + 2 + separator = 5
# observation tokens, + 5 action tokens = 10 tokens per step.
SMALL = [
    "tokenizer.observation.image_keys=[cam/pixels]",
    "tokenizer.observation.tensor_keys=[arm/q]",
    "tokenizer.observation.companded_keys=[arm/q]",
    "training.sequence_length=64",
    "training.data.prompt.max_tokens=30",
]
STEP = 10


def small_cfg(*extra: str):
    return load_config([*SMALL, *extra])


def small_episode(num_steps: int, seed: int = 0, task: str = "stack red on blue") -> Demonstration:
    rng = np.random.default_rng(seed)
    obs = {
        "cam/pixels": rng.integers(0, 256, (num_steps, 16, 32, 3), dtype=np.uint8),
        "arm/q": rng.uniform(-2, 2, (num_steps, 2)).astype(np.float32),
    }
    actions = rng.uniform(-0.07, 0.07, (num_steps, 5)).astype(np.float32)
    actions[:, 3:] = rng.uniform(-1, 1, (num_steps, 2))
    return Demonstration(obs, actions, task)


@functools.cache
def serializer_cfg():
    return small_cfg()


@pytest.fixture(scope="module")
def serializer() -> EpisodeSerializer:
    return EpisodeSerializer(serializer_cfg())


def test_hand_built_episode_every_position(serializer: EpisodeSerializer) -> None:
    demo = small_episode(3)
    seq = serializer.serialize(demo)
    tok = serializer.tokenizer
    A = serializer.action_obs_index
    assert load_config().model.max_obs_tokens == A
    assert len(seq) == 3 * STEP == serializer.step_length(demo) * 3
    # per step: patch, patch, q0, q1, '|', a0..a4
    assert seq.loss_mask.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * 3
    assert seq.image_mask.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 3
    assert seq.obs_pos.tolist() == [0, 1, 2, 3, 4, A, A, A, A, A] * 3
    for t in range(3):
        row = seq.tokens[t * STEP : (t + 1) * STEP]
        assert row[:2].tolist() == [0, 0]
        np.testing.assert_array_equal(row[2:4], tok.tokenize_step(demo_obs(demo, t)).tokens[2:4])
        assert row[4] == tok.separator_id
        np.testing.assert_array_equal(row[5:], tok.tokenize_action(demo.actions[t]))
        pp = seq.patch_pos[t * STEP : (t + 1) * STEP]
        assert pp[:2].tolist() == [[0, 128, 0, 64], [0, 128, 64, 128]]
        assert not pp[2:].any()
    assert seq.patches.shape == (6, 3, 16, 16)
    np.testing.assert_array_equal(seq.patches[2:4], tok.tokenize_step(demo_obs(demo, 1)).patches)
    # targets are exactly the action ids
    assert np.all((seq.tokens[seq.loss_mask == 1] >= 32000) & (seq.tokens[seq.loss_mask == 1] < 33024))


def demo_obs(demo: Demonstration, t: int) -> dict[str, np.ndarray]:
    return {k: v[t] for k, v in demo.observations.items()}


def test_task_text_prefix_is_a_target_numbered_like_an_observation() -> None:
    cfg = small_cfg("tokenizer.task_text_prefix=true")
    ser = EpisodeSerializer(cfg)
    demo = small_episode(2, task="stack red on blue")
    ids = TextTokenizer.from_config(cfg).encode("stack red on blue")
    n = len(ids)
    seq = ser.serialize(demo)
    assert len(seq) == n + 2 * STEP
    np.testing.assert_array_equal(seq.tokens[:n], ids)
    assert seq.loss_mask[:n].tolist() == [1] * n
    assert seq.obs_pos[:n].tolist() == list(range(n))
    assert seq.loss_mask[n:].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * 2
    no_target = EpisodeSerializer(
        small_cfg("tokenizer.task_text_prefix=true", "tokenizer.text_is_target=false")
    )
    assert no_target.serialize(demo).loss_mask[:n].sum() == 0


def test_rgb_stacking_step_is_156_tokens() -> None:
    rng = np.random.default_rng(0)
    T = 2
    obs = {
        "basket_front_left/pixels": rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8),
        "basket_front_right/pixels": rng.integers(0, 256, (T, 128, 128, 3), dtype=np.uint8),
        "gripper/joints/angle": rng.uniform(0, 255, (T, 1)),
        "sawyer/joints/angle": rng.uniform(-1, 1, (T, 7)),
        "sawyer/pinch/pose": rng.uniform(-1, 1, (T, 7)),
        "sawyer/tcp/pose": rng.uniform(-1, 1, (T, 7)),
    }
    ser = EpisodeSerializer(load_config())
    demo = Demonstration(obs, np.zeros((T, 5)))
    assert ser.step_length(demo) == 156
    seq = ser.serialize(demo)
    assert len(seq) == 312 and seq.loss_mask.sum() == 10 and seq.image_mask.sum() == 256
    # a 1024-token context holds 6 whole steps
    assert ser.fit_steps(1024, 156) == 6


@settings(max_examples=60, deadline=None)
@given(num_steps=st.integers(1, 30), context=st.integers(STEP, 120), seed=st.integers(0, 2**32 - 1))
def test_windows_start_on_step_boundaries_and_fit(
    serializer: EpisodeSerializer, num_steps: int, context: int, seed: int
) -> None:
    ser = EpisodeSerializer(
        serializer_cfg(), serializer.tokenizer, context_length=context, prompt=serializer.prompt
    )
    demo = small_episode(num_steps, seed=seed % 7)
    rng = np.random.default_rng(seed)
    seq = ser.training_sequence(demo, rng)
    assert len(seq) <= context and len(seq) % STEP == 0 and len(seq) > 0
    steps = len(seq) // STEP
    assert steps <= context // STEP
    # every step of the window is a whole step: separators and the action mask at the same offsets
    assert np.all(seq.tokens[4::STEP] == ser.tokenizer.separator_id)
    assert seq.loss_mask.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * steps
    # and it is a contiguous run of the episode's steps, starting on one of them
    full = ser.serialize(demo)
    starts = [
        lo
        for lo in range(num_steps)
        if np.array_equal(full.tokens[lo * STEP : lo * STEP + len(seq)], seq.tokens)
    ]
    assert starts


def test_windows_cover_every_step_equally() -> None:
    num_steps, window = 12, 5
    counts = np.zeros(num_steps, dtype=int)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        seen.add(EpisodeSerializer.sample_window(num_steps, window, rng))
    assert len(seen) == num_steps + window - 1  # every clipped window is reachable
    for lo, hi in seen:
        assert 0 <= lo < hi <= num_steps and hi - lo <= window
        counts[lo:hi] += 1
    assert np.all(counts == window)


@pytest.mark.parametrize("mode", ["goal", "uniform"])
def test_prompt_is_masked_and_taken_from_the_demonstration(serializer: EpisodeSerializer, mode: str) -> None:
    demo = small_episode(20, seed=1)
    prompt_demo = small_episode(9, seed=2)
    seq = serializer.training_sequence(demo, np.random.default_rng(3), prompt_demo, mode)
    prompt_steps = serializer.prompt.max_tokens // STEP  # 30 tokens -> 3 steps
    n = prompt_steps * STEP
    assert len(seq) <= serializer.context_length
    assert seq.loss_mask[:n].sum() == 0  # the prompt is context only, actions included
    rest = len(seq) - n
    assert rest > 0 and seq.loss_mask[n:].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * (rest // STEP)
    prompt_full = serializer.serialize(prompt_demo)
    if mode == "goal":  # the demonstration's last steps
        np.testing.assert_array_equal(seq.tokens[:n], prompt_full.tokens[-n:])
    else:
        windows = [prompt_full.tokens[s * STEP : s * STEP + n] for s in range(9 - prompt_steps + 1)]
        assert any(np.array_equal(seq.tokens[:n], w) for w in windows)
    assert seq.image_mask[:n].sum() == 2 * prompt_steps
    np.testing.assert_array_equal(seq.patches[: 2 * prompt_steps].shape, (2 * prompt_steps, 3, 16, 16))


def test_prompt_draws_follow_the_configured_shares(serializer: EpisodeSerializer) -> None:
    rng = np.random.default_rng(0)
    draws = [serializer.draw_prompt_mode(rng) for _ in range(8000)]
    prompted = [d for d in draws if d is not None]
    assert len(prompted) / len(draws) == pytest.approx(0.25, abs=0.02)
    assert sum(d == "goal" for d in prompted) / len(prompted) == pytest.approx(0.5, abs=0.04)


def test_prompt_budget_never_squeezes_out_the_episode() -> None:
    ser = EpisodeSerializer(small_cfg("training.data.prompt.max_tokens=200"), context_length=25)
    seq = ser.training_sequence(small_episode(10), np.random.default_rng(0), small_episode(10, 1), "goal")
    assert len(seq) == 20 and seq.loss_mask[:10].sum() == 0 and seq.loss_mask[10:].sum() == 5


def test_step_larger_than_context_raises() -> None:
    ser = EpisodeSerializer(small_cfg(), context_length=STEP - 1)
    with pytest.raises(ValueError):
        ser.training_sequence(small_episode(3), np.random.default_rng(0))


def test_run_time_appending_matches_serialization(serializer: EpisodeSerializer) -> None:
    demo = small_episode(4, seed=5)
    tok: ObservationTokenizer = serializer.tokenizer
    parts = []
    for t in range(4):
        parts.append(TokenSequence.from_step(tok.tokenize_step(demo_obs(demo, t))))
        ids = tok.tokenize_action(demo.actions[t])
        parts.append(TokenSequence.from_actions(ids, serializer.action_obs_index, serializer.patch_shape))
    built = TokenSequence.concat(parts)
    reference = serializer.serialize(demo)
    for name in ("tokens", "image_mask", "patches", "patch_pos", "obs_pos", "loss_mask"):
        np.testing.assert_array_equal(getattr(built, name), getattr(reference, name), err_msg=name)
    prompt = serializer.prompt_sequence(demo, goal=True)
    assert len(prompt) == 30 and prompt.loss_mask.sum() == 0
    np.testing.assert_array_equal(prompt.tokens, reference.tokens[-30:])


def test_serialize_steps_rejects_mismatched_actions(serializer: EpisodeSerializer) -> None:
    demo = small_episode(3)
    steps = serializer.tokenizer.tokenize_steps(demo.observations)
    with pytest.raises(ValueError):
        serialize_steps(steps, np.zeros((2, 5), dtype=np.int64) + 32000, serializer.action_obs_index)


def test_auxiliary_targets_end_the_window_with_the_last_steps_object_poses() -> None:
    cfg = small_cfg("training.data.auxiliary.keys=[objects/pose]", "training.data.auxiliary.weight=0.25")
    ser = EpisodeSerializer(cfg)
    demo = small_episode(12, seed=4)
    rng = np.random.default_rng(5)
    poses = rng.uniform(-0.5, 0.5, (12, 21)).astype(np.float32)
    pinch = rng.uniform(-0.5, 0.5, (12, 7)).astype(np.float32)
    demo = Demonstration(
        {**demo.observations, "objects/pose": poses, "sawyer/pinch/pose": pinch}, demo.actions
    )
    seq = ser.training_sequence(demo, np.random.default_rng(6))
    body = len(seq) - 21
    assert len(seq) <= ser.context_length and body % STEP == 0 and body // STEP == (64 - 21) // STEP
    # the window itself is unchanged: whole steps, actions the only targets
    assert seq.loss_mask[:body].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1] * (body // STEP)
    full = ser.serialize(demo)
    starts = [
        lo for lo in range(12) if np.array_equal(full.tokens[lo * STEP : lo * STEP + body], seq.tokens[:body])
    ]
    assert len(starts) == 1
    last = starts[0] + body // STEP - 1
    # then the last step's object positions relative to the pinch point, orientations as they are
    relative = poses[last].reshape(3, 7).copy()
    relative[:, :3] -= pinch[last, :3]
    expected = ser.tokenizer.tokenize_values(
        {"objects/pose": relative.reshape(-1)}, ("objects/pose",), "world"
    )
    np.testing.assert_array_equal(seq.tokens[body:], expected)
    assert np.all(seq.loss_mask[body:] == 0.25) and not seq.image_mask[body:].any()
    top = cfg.model.max_obs_tokens
    np.testing.assert_array_equal(seq.obs_pos[body:], np.arange(top - 21, top))
    # an episode without the key says which one is missing
    with pytest.raises(KeyError, match="objects/pose"):
        ser.training_sequence(small_episode(5), np.random.default_rng(0))
