"""The KV-cached action decoder equals a full forward pass, across control steps, trims and prompts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gato_ros.config import load_config
from gato_ros.gato.decoder import MAX_PREFILL_LAYOUTS, ActionDecoder, NonFiniteLogitsError, model_inputs
from gato_ros.gato.model import GatoModel, build_model
from gato_ros.gato.serialization import Demonstration, EpisodeSerializer, TokenSequence
from gato_ros.gato.tokenizer import ObservationTokenizer

STEPS = 11  # 156 tokens per step: the 1024-token window fills at step 7; trims at steps 7 and 11


def random_observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "basket_front_left/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "basket_front_right/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "gripper/joints/angle": rng.uniform(0, 255, 1).astype(np.float32),
        "sawyer/joints/angle": rng.uniform(-2, 2, 7).astype(np.float32),
        "sawyer/pinch/pose": rng.uniform(-1, 1, 7).astype(np.float32),
        "sawyer/tcp/pose": rng.uniform(-1, 1, 7).astype(np.float32),
    }


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One intra-op thread: much faster than two on a shared 2-core runner; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup() -> tuple[GatoModel, ObservationTokenizer]:
    # a large init scale makes an untrained model's argmax depend on its input (a fair equality test)
    cfg = load_config(["model.init_std=0.3"])
    torch.manual_seed(0)
    return build_model(cfg).eval(), ObservationTokenizer(cfg)


def make_decoder(model, tokenizer, *overrides: str) -> ActionDecoder:
    decoder = ActionDecoder(model, tokenizer, load_config(list(overrides)))
    decoder.record_logits = True
    return decoder


def assert_same_decoding(result, reference, tolerance: float = 1e-4) -> None:
    """Two decoders' results of one step: the same action ids, logits equal to `tolerance`."""
    np.testing.assert_array_equal(result.token_ids, reference.token_ids)
    np.testing.assert_allclose(result.logits, reference.logits, rtol=tolerance, atol=tolerance)
    assert result.context_tokens == reference.context_tokens and result.trimmed == reference.trimmed


def full_forward_value_logits(model: GatoModel, sequence: TokenSequence, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        h = model.hidden(model.embed(*model_inputs(sequence, torch.device("cpu"))))
        return model.logits(h[0, positions], (32000, 33024)).numpy()


def test_cached_decoder_matches_full_forward_over_steps_and_trims(setup) -> None:
    model, tokenizer = setup
    cached = make_decoder(model, tokenizer)
    uncached = make_decoder(model, tokenizer, "policy.decoder.kv_cache=false")
    rng = np.random.default_rng(0)
    observations = [random_observation(rng) for _ in range(STEPS)]
    actions_seen, trims = set(), 0
    for t, obs in enumerate(observations):
        fast, slow = cached.step(obs), uncached.step(obs)
        np.testing.assert_array_equal(fast.token_ids, slow.token_ids)
        np.testing.assert_allclose(fast.logits, slow.logits, rtol=1e-4, atol=1e-4)
        assert fast.context_tokens == slow.context_tokens <= model.config.context_length
        trims += fast.trimmed
        actions_seen.add(tuple(fast.token_ids))
        # independent reference: re-tokenize the kept steps from the raw observations and actions
        kept = len(cached.steps)
        parts = []
        for s in range(t + 1 - kept, t + 1):
            parts.append(TokenSequence.from_step(tokenizer.tokenize_step(observations[s])))
            ids = cached.steps[s - (t + 1 - kept)].tokens[-5:]
            parts.append(TokenSequence.from_actions(ids, model.config.action_obs_index, (3, 16, 16)))
        sequence = TokenSequence.concat(parts)
        np.testing.assert_array_equal(sequence.tokens, cached.history().tokens)
        first_action = len(sequence) - 5
        reference = full_forward_value_logits(model, sequence, np.arange(first_action - 1, first_action + 4))
        np.testing.assert_allclose(fast.logits, reference, rtol=1e-4, atol=1e-4)
        assert cached.cached == len(sequence) - 1  # all but the last action token, cached next step
        np.testing.assert_allclose(fast.action, tokenizer.detokenize_action(fast.token_ids))
    assert trims == 2
    assert len(actions_seen) > 1


def test_prompt_stays_pinned_and_decoding_still_matches(setup) -> None:
    model, tokenizer = setup
    rng = np.random.default_rng(1)
    demo = [random_observation(rng) for _ in range(4)]
    demo_obs = {k: np.stack([o[k] for o in demo]) for k in demo[0]}
    demo_actions = rng.uniform(-0.05, 0.05, (4, 5)).astype(np.float32)
    cfg = load_config(["policy.decoder.max_prompt_tokens=400"])
    serializer = EpisodeSerializer(cfg, tokenizer)
    prompt = serializer.prompt_sequence(Demonstration(demo_obs, demo_actions), goal=True)
    assert len(prompt) == 2 * 156  # the last two whole demonstration steps fit in 400 tokens
    np.testing.assert_array_equal(prompt.tokens[-5:], tokenizer.tokenize_action(demo_actions[-1]))
    cached = make_decoder(model, tokenizer, "policy.decoder.max_prompt_tokens=400")
    uncached = make_decoder(
        model, tokenizer, "policy.decoder.kv_cache=false", "policy.decoder.max_prompt_tokens=400"
    )
    cached.reset(prompt)
    uncached.reset(prompt)
    for _ in range(8):  # 312 prompt tokens + 4 steps fill the window: trims behind the prompt
        obs = random_observation(rng)
        fast, slow = cached.step(obs), uncached.step(obs)
        np.testing.assert_array_equal(fast.token_ids, slow.token_ids)
        np.testing.assert_allclose(fast.logits, slow.logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(cached.history().tokens[: len(prompt)], prompt.tokens)
    assert cached.last_result.context_tokens <= model.config.context_length
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        cached.reset(TokenSequence.concat([prompt, prompt]))


def test_sampling_stays_in_value_range_and_is_seeded(setup) -> None:
    model, tokenizer = setup
    args = ("policy.decoder.greedy=false", "policy.decoder.temperature=2.0", "policy.decoder.seed=3")
    first, second = make_decoder(model, tokenizer, *args), make_decoder(model, tokenizer, *args)
    rng = np.random.default_rng(2)
    draws = []
    for _ in range(3):
        obs = random_observation(rng)
        a, b = first.step(obs), second.step(obs)
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        draws.append(a.token_ids)
    ids = np.concatenate(draws)
    assert ids.min() >= 32000 and ids.max() < 33024
    assert len(set(ids.tolist())) > 5  # temperature 2 over 1024 bins: not the argmax every time
    low, high = np.array(load_config([]).control.action_low), np.array(load_config([]).control.action_high)
    assert np.all(first.last_result.action >= low) and np.all(first.last_result.action <= high)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_value_mean_decodes_the_bin_nearest_each_distributions_mean(setup, kv_cache: bool) -> None:
    """`value_mean`: per dimension, the mean of the model's distribution over the bins (from the logits it
    produced in that context), as the nearest bin; the same with and without the cache."""
    model, tokenizer = setup
    cache = f"policy.decoder.kv_cache={str(kv_cache).lower()}"
    decoder = make_decoder(model, tokenizer, "policy.decoder.value_mean=true", cache)
    rng = np.random.default_rng(5)
    centres = (2.0 * np.arange(1024) + 1.0) / 1024 - 1.0  # the action bins (not companded), in [-1, 1]
    differs_from_argmax = False
    for _ in range(3):
        result = decoder.step(random_observation(rng))
        probs = torch.softmax(torch.from_numpy(result.logits).double(), dim=-1).numpy()
        means = probs @ centres
        expected = np.abs(centres[None, :] - means[:, None]).argmin(axis=1) + 32000
        np.testing.assert_array_equal(result.token_ids, expected)
        differs_from_argmax |= bool(np.any(result.token_ids != result.logits.argmax(axis=1) + 32000))
    assert differs_from_argmax  # a spread distribution's mean is not its mode


@pytest.mark.parametrize("kv_cache", [True, False])
def test_value_median_decodes_the_bin_where_half_the_mass_is_reached(setup, kv_cache: bool) -> None:
    """`value_median`: per dimension, the first bin whose cumulative probability (from the logits the model
    produced in that context) reaches one half; the same with and without the cache."""
    model, tokenizer = setup
    cache = f"policy.decoder.kv_cache={str(kv_cache).lower()}"
    decoder = make_decoder(model, tokenizer, "policy.decoder.value_median=true", cache)
    rng = np.random.default_rng(6)
    differs_from_argmax = False
    for _ in range(3):
        result = decoder.step(random_observation(rng))
        probs = torch.softmax(torch.from_numpy(result.logits).double(), dim=-1).numpy()
        cumulative = np.cumsum(probs, axis=1)
        expected = (cumulative < 0.5).sum(axis=1) + 32000
        np.testing.assert_array_equal(result.token_ids, expected)
        differs_from_argmax |= bool(np.any(result.token_ids != result.logits.argmax(axis=1) + 32000))
    assert differs_from_argmax  # a spread distribution's median is not its mode
    with pytest.raises(ValueError, match="value_mean excludes"):
        make_decoder(model, tokenizer, "policy.decoder.value_median=true", "policy.decoder.value_mean=true")


@pytest.mark.parametrize("kv_cache", [True, False])
def test_median_dims_decode_the_named_dimensions_by_their_median_and_the_rest_by_argmax(
    setup, kv_cache: bool
) -> None:
    """`median_dims`: the named action dimensions take their distribution's median, the others their most
    likely bin, each from the logits the model produced in that context; bad indices are refused."""
    model, tokenizer = setup
    cache = f"policy.decoder.kv_cache={str(kv_cache).lower()}"
    decoder = make_decoder(model, tokenizer, "policy.decoder.median_dims=[1,3]", cache)
    assert decoder.median_dims == {1, 3}
    rng = np.random.default_rng(6)
    medians_differ = False
    for _ in range(3):
        result = decoder.step(random_observation(rng))
        probs = torch.softmax(torch.from_numpy(result.logits).double(), dim=-1).numpy()
        medians = (np.cumsum(probs, axis=1) < 0.5).sum(axis=1) + 32000
        argmaxes = result.logits.argmax(axis=1) + 32000
        expected = argmaxes.copy()
        expected[[1, 3]] = medians[[1, 3]]
        np.testing.assert_array_equal(result.token_ids, expected)
        medians_differ |= bool(np.any(medians[[1, 3]] != argmaxes[[1, 3]]))
    assert medians_differ  # the named dimensions really were decoded another way than argmax
    with pytest.raises(ValueError, match="median_dims"):
        make_decoder(model, tokenizer, "policy.decoder.median_dims=[5]")
    with pytest.raises(ValueError, match="value_mean excludes"):
        make_decoder(model, tokenizer, "policy.decoder.median_dims=[0]", "policy.decoder.value_mean=true")


def test_reset_forgets_the_episode(setup) -> None:
    model, tokenizer = setup
    decoder = make_decoder(model, tokenizer)
    rng = np.random.default_rng(4)
    obs = random_observation(rng)
    first = decoder.step(obs).token_ids
    decoder.step(random_observation(rng))
    decoder.reset()
    assert decoder.cached == 0 and not decoder.steps
    np.testing.assert_array_equal(decoder.step(obs).token_ids, first)


def test_warmup_leaves_a_fresh_episode(setup) -> None:
    model, tokenizer = setup
    rng = np.random.default_rng(5)
    observations = [random_observation(rng) for _ in range(3)]
    fresh, warmed = make_decoder(model, tokenizer), make_decoder(model, tokenizer)
    assert warmed.warmup(observations[0]) > 0
    assert warmed.cached == 0 and not warmed.steps
    for obs in observations:
        np.testing.assert_array_equal(warmed.step(obs).token_ids, fresh.step(obs).token_ids)


def test_non_finite_logits_give_no_action(setup) -> None:
    """A model whose weights went NaN after loading: the step raises (the policy node then publishes
    nothing and the command node holds) and the decoder starts a fresh episode; finite weights decode
    again afterwards (no NaN left behind in the KV cache)."""
    model, tokenizer = setup
    observation = random_observation(np.random.default_rng(0))
    decoder = make_decoder(model, tokenizer)
    weight = model.token_embedding.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(NonFiniteLogitsError):
            decoder.step(observation)
        assert len(decoder.steps) == 0
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert np.all(np.isfinite(decoder.step(observation).action))


@pytest.mark.parametrize("kv_cache", [True, False])
def test_trimming_ahead_changes_no_action_and_takes_the_trim_off_the_step(setup, kv_cache: bool) -> None:
    """`prepare_next` between steps (the policy node calls it after publishing) keeps the same steps and
    decodes the same actions as trimming inside `step`; the step after it encodes only its observation."""
    model, tokenizer = setup
    plain = make_decoder(model, tokenizer)
    ahead = make_decoder(model, tokenizer, f"policy.decoder.kv_cache={str(kv_cache).lower()}")
    rng = np.random.default_rng(1)
    trims_ahead = 0
    for _ in range(STEPS):
        obs = random_observation(rng)
        reference, result = plain.step(obs), ahead.step(obs)
        assert_same_decoding(result, reference)
        np.testing.assert_array_equal(ahead.history().tokens, plain.history().tokens)
        if ahead.prepare_next():
            trims_ahead += 1
            if kv_cache:  # everything kept is cached now, the last action token included
                assert ahead.cached == len(ahead.history()) and ahead.pending_action is None
    assert trims_ahead == 2
    assert not make_decoder(model, tokenizer).prepare_next()  # nothing to trim before the first step


@pytest.mark.parametrize("trim_ahead", [False, True])
def test_fixed_shape_prefill_decodes_as_the_variable_shape_forward(setup, trim_ahead: bool) -> None:
    """The observation prefill through the fixed-shape path (what a CUDA graph captures: whole-cache mask,
    device-side position, image indices computed once per layout) gives the variable-shape forward's
    actions and logits at every step, across trims, with two cameras' patches; one slot per layout."""
    model, tokenizer = setup
    fixed = make_decoder(model, tokenizer, "policy.decoder.static_prefill=true")
    variable = make_decoder(model, tokenizer, "policy.decoder.static_prefill=false")
    assert fixed.static_prefill and not variable.static_prefill and not fixed.use_cuda_graphs
    assert not make_decoder(model, tokenizer).static_prefill  # auto: CUDA only
    rng = np.random.default_rng(2)
    trims = 0
    for _ in range(STEPS):
        obs = random_observation(rng)
        a = fixed.step(obs)
        assert_same_decoding(a, variable.step(obs))
        assert fixed.cached == variable.cached
        trims += a.trimmed
        if trim_ahead:
            assert fixed.prepare_next() == variable.prepare_next()
    assert trims == 2
    # the first step (observation only) and every later one (previous action token + observation)
    assert sorted(key[0] for key in fixed._prefill_slots) == [151, 152]
    fixed.reset()
    fixed.step(random_observation(rng))
    assert len(fixed._prefill_slots) == 2  # a new episode reuses the slots


def test_fixed_shape_prefill_is_bounded_in_layouts(setup) -> None:
    """Beyond `MAX_PREFILL_LAYOUTS` observation layouts the prefill runs the variable-shape forward (no
    unbounded graph memory), decoding the same actions."""
    model, tokenizer = setup
    fixed = make_decoder(model, tokenizer, "policy.decoder.static_prefill=true")
    variable = make_decoder(model, tokenizer, "policy.decoder.static_prefill=false")
    rng = np.random.default_rng(3)
    for layout in range(MAX_PREFILL_LAYOUTS + 2):
        obs = random_observation(rng)
        obs["sawyer/joints/angle"] = obs["sawyer/joints/angle"][: 7 - layout]  # a new token count each
        fixed.reset()
        variable.reset()
        np.testing.assert_array_equal(fixed.step(obs).token_ids, variable.step(obs).token_ids)
    assert len(fixed._prefill_slots) == MAX_PREFILL_LAYOUTS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_cuda_graphs_decode_as_the_eager_variable_shape_path(setup) -> None:
    """On CUDA: the captured prefill and action-token graphs decode the actions of the eager
    variable-shape path, across trims and episodes (float32, so the comparison is tight)."""
    model, tokenizer = setup
    model = copy.deepcopy(model).to("cuda")
    graphed = make_decoder(model, tokenizer)
    eager = make_decoder(model, tokenizer, "policy.decoder.cuda_graphs=false")
    assert graphed.use_cuda_graphs and graphed.static_prefill and not eager.static_prefill
    rng = np.random.default_rng(4)
    graphed.warmup(random_observation(rng))
    for episode in range(2):
        graphed.reset()
        eager.reset()
        for _ in range(STEPS if episode == 0 else 3):
            obs = random_observation(rng)
            assert_same_decoding(graphed.step(obs), eager.step(obs), tolerance=1e-3)
            graphed.prepare_next()
            eager.prepare_next()
    assert all(slot.graph is not None for slot in graphed._prefill_slots.values())


def test_a_one_step_context_is_a_markov_policy() -> None:
    """`model.context_length` of exactly one step (the state policy's recipe, against copycat behaviour
    cloning): each action depends on its own observation only, cached or not, whatever came before."""
    cfg = load_config(["model.init_std=0.3", "model.context_length=156"])
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg).eval(), ObservationTokenizer(cfg)
    cached, uncached = (
        make_decoder(model, tokenizer),
        make_decoder(model, tokenizer, "policy.decoder.kv_cache=false"),
    )
    rng = np.random.default_rng(1)
    observations = [random_observation(rng) for _ in range(4)]
    for obs in observations:
        fast, slow = cached.step(obs), uncached.step(obs)
        fresh = make_decoder(model, tokenizer).step(obs)  # no history at all
        np.testing.assert_array_equal(fast.token_ids, slow.token_ids)
        np.testing.assert_array_equal(fast.token_ids, fresh.token_ids)
        np.testing.assert_allclose(fast.logits, fresh.logits, rtol=1e-4, atol=1e-4)
        assert fast.context_tokens <= 156 and len(cached.steps) == len(uncached.steps) == 1
