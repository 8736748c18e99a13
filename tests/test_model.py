"""The Gato transformer: causal masking, patch positions, and parameter counts against the configs."""

from __future__ import annotations

import pytest
import torch

from gato_ros.config import load_config
from gato_ros.gato.model import GatoModel, GatoModelConfig, build_model, parameter_count_formula
from gato_ros.gato.tokenizer import ObservationTokenizer

SMALL_CONFIGS = ["tiny", "small"]
PAPER_CONFIGS = ["gato_79m", "gato_364m", "gato_1_18b"]


def random_batch(model: GatoModel, B: int = 2, T: int = 200, seed: int = 0) -> dict[str, torch.Tensor]:
    """A serialized batch in the token layout: one image block of 64 patches, values, separator."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(32000, 33024, (B, T), generator=g)
    image_mask = torch.zeros(B, T, dtype=torch.bool)
    image_mask[:, 20:84] = True
    tokens[image_mask] = 0
    n = int(image_mask.sum())
    patches = (torch.rand(n, 3, 16, 16, generator=g) * 2 - 1) / 4
    patch_pos = torch.zeros(B, T, 4, dtype=torch.long)
    grid = torch.arange(64)
    row, col = (grid // 8) * 16, (grid % 8) * 16
    patch_pos[:, 20:84] = torch.stack([row, row + 16, col, col + 16], dim=1)
    obs_pos = torch.randint(0, model.config.max_obs_tokens + 1, (B, T), generator=g)
    return dict(tokens=tokens, image_mask=image_mask, patches=patches, patch_pos=patch_pos, obs_pos=obs_pos)


@pytest.fixture(scope="module")
def cfg():
    return load_config([])


@pytest.fixture(scope="module")
def tiny(cfg) -> GatoModel:
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_future_tokens_never_change_earlier_logits(tiny: GatoModel) -> None:
    batch = random_batch(tiny)
    with torch.no_grad():
        reference = tiny(**batch)
        for cut in (10, 50, 150):  # a value token, an image patch, a late value token
            changed = {k: v.clone() for k, v in batch.items()}
            if changed["image_mask"][0, cut]:
                first = int(changed["image_mask"][0].nonzero()[0])
                changed["patches"][cut - first] += 0.5  # row 0's patches come first
            else:
                changed["tokens"][0, cut] = 32000 + (int(changed["tokens"][0, cut]) - 32000 + 7) % 1024
            logits = tiny(**changed)
            torch.testing.assert_close(logits[0, :cut], reference[0, :cut], rtol=0, atol=1e-5)
            assert not torch.allclose(logits[0, cut:], reference[0, cut:])  # the change does reach later ones
            torch.testing.assert_close(logits[1], reference[1], rtol=0, atol=1e-5)  # other rows untouched


def test_patch_position_index_samples_in_training_and_takes_the_mean_at_eval(tiny: GatoModel) -> None:
    lo = torch.tensor([0, 16, 112, 5, 127])
    hi = torch.tensor([16, 32, 128, 6, 128])
    tiny.eval()
    assert tiny.patch_position_index(lo, hi).tolist() == [8, 24, 120, 5, 127]
    tiny.train()
    try:
        torch.manual_seed(1)
        draws = torch.stack([tiny.patch_position_index(lo, hi) for _ in range(400)])
    finally:
        tiny.eval()
    assert bool(((draws >= lo) & (draws < hi)).all())
    assert draws[:, 0].unique().numel() == 16  # every index of the interval gets drawn


@pytest.mark.parametrize("name", SMALL_CONFIGS)
def test_built_model_matches_documented_parameter_count(name: str) -> None:
    cfg = load_config([f"model={name}"])
    vocab = ObservationTokenizer(cfg).vocab_size
    counts = build_model(cfg, vocab_size=vocab).parameter_counts()
    formula = parameter_count_formula(GatoModelConfig.from_cfg(cfg.model, vocab))
    assert counts == formula
    assert counts["total"] == cfg.model.expected_params
    assert counts["non_embedding"] == cfg.model.expected_non_embedding_params


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_sizes_match_documented_parameter_count_without_allocating(name: str) -> None:
    cfg = load_config([f"model={name}"])
    vocab = ObservationTokenizer(cfg).vocab_size
    model = build_model(cfg, vocab_size=vocab, device="meta")
    assert model.head.weight.is_meta
    counts = model.parameter_counts()
    assert counts == parameter_count_formula(GatoModelConfig.from_cfg(cfg.model, vocab))
    assert counts["total"] == cfg.model.expected_params
    assert counts["non_embedding"] == cfg.model.expected_non_embedding_params
    m = cfg.model  # the paper's shapes: layers / heads / width / feed-forward / head size
    assert (m.n_layer, m.n_head, m.d_model, m.d_ff, m.d_head) == {
        "gato_79m": (8, 24, 768, 3072, 32),
        "gato_364m": (12, 12, 1536, 6144, 128),
        "gato_1_18b": (24, 16, 2048, 8192, 128),
    }[name]
    assert abs(counts["total"] - m.paper_params) / m.paper_params < 0.1


def test_default_model_is_tiny_and_small_is_cpu_trainable() -> None:
    assert load_config([]).model.name == "tiny"
    assert 5e6 <= load_config(["model=small"]).model.expected_params <= 20e6


def test_params_tool_prints_counts(capsys) -> None:
    from gato_ros.tools import params

    assert params.main(["model=gato_1_18b"]) == 0
    out = capsys.readouterr().out
    assert "1,285,756,224" in out and "matches" in out


def test_sinusoidal_value_init_orders_the_bins_and_survives_a_checkpoint(tmp_path) -> None:
    from gato_ros.gato.checkpoint import load_policy, save_checkpoint

    cfg = load_config(["model=tiny", "+model.value_embedding_init=sinusoidal"])
    model = build_model(cfg)
    start, count = int(cfg.tokenizer.text_vocab_size), int(cfg.tokenizer.num_bins)
    assert (model.config.value_id_start, model.config.value_id_count) == (start, count)
    bins = model.token_embedding.weight[start : start + count].detach()
    similarity = torch.nn.functional.cosine_similarity(bins[512], bins, dim=1)
    assert similarity[513] > 0.8 and similarity[511] > 0.8  # neighbours start alike ...
    assert similarity[1000].abs() < 0.5  # ... distant values do not
    assert bins.std() == pytest.approx(float(cfg.model.init_std), rel=0.05)
    text = model.token_embedding.weight[:start].detach()
    assert text.std() == pytest.approx(float(cfg.model.init_std), rel=0.05)  # other rows untouched
    path = save_checkpoint(tmp_path / "ckpt", model, cfg)
    loaded = load_policy(path)
    assert loaded.model.config == model.config
    torch.testing.assert_close(loaded.model.token_embedding.weight, model.token_embedding.weight)
    with pytest.raises(ValueError, match="value_embedding_init"):
        build_model(load_config(["model=tiny", "+model.value_embedding_init=uniform"]))
