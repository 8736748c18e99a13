"""Checkpoints: safetensors + JSON only, bit-identical outputs after save -> load, optimizer round trip."""

from __future__ import annotations

import json

import pytest
import torch
from test_model import random_batch  # tests/ is on sys.path (pytest rootdir insertion)

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import (
    CONFIG_FILE,
    load_policy,
    load_training_state,
    model_dtype,
    read_checkpoint_config,
    save_checkpoint,
)
from gato_ros.gato.model import build_model
from gato_ros.gato.train import make_optimizer


def test_save_load_gives_bit_identical_outputs_and_only_safe_files(tmp_path) -> None:
    cfg = load_config(["model.tie_embeddings=false", "seed=5"])
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    batch = random_batch(model, seed=3)
    with torch.no_grad():
        expected = model(**batch)
    path = save_checkpoint(tmp_path / "ckpt", model, cfg, step=42)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(path, "cpu")
    assert loaded.step == 42 and not loaded.model.training
    assert loaded.cfg.seed == 5 and loaded.cfg.tokenizer.num_bins == 1024  # tokenizer settings travel along
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch), expected)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_tied_head_survives_the_round_trip(tmp_path) -> None:
    cfg = load_config([])
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "tied", model, cfg)
    loaded = load_policy(path).model
    assert loaded.head.weight is loaded.token_embedding.weight
    batch = random_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch), model(**batch))


def test_a_policy_loads_in_the_dtype_it_runs_in_and_still_decodes(tmp_path) -> None:
    """`policy.dtype=bfloat16`: every weight in bf16 (the tie kept), and the decoder acts within bounds."""
    import numpy as np

    from gato_ros.gato.decoder import ActionDecoder
    from gato_ros.gato.tokenizer import ObservationTokenizer

    cfg = load_config(["+experiment=state_policy", "model=tiny"])
    path = save_checkpoint(tmp_path / "tiny", build_model(cfg), cfg)
    loaded = load_policy(path, "cpu", model_dtype("bfloat16"))
    assert {t.dtype for t in loaded.model.state_dict().values()} == {torch.bfloat16}
    assert loaded.model.head.weight is loaded.model.token_embedding.weight
    decoder = ActionDecoder(loaded.model, ObservationTokenizer(loaded.cfg), cfg)
    rng = np.random.default_rng(0)
    observation = {
        "gripper/joints/angle": np.zeros(1, np.float32),
        "objects/pose": rng.uniform(-0.3, 0.3, 21).astype(np.float32),
        "sawyer/joints/angle": rng.uniform(-1, 1, 7).astype(np.float32),
        "sawyer/pinch/pose": rng.uniform(-0.5, 0.5, 7).astype(np.float32),
        "sawyer/tcp/pose": rng.uniform(-0.5, 0.5, 7).astype(np.float32),
    }
    action = decoder.step(observation).action
    assert np.all(action >= np.array(cfg.control.action_low)) and np.all(
        action <= np.array(cfg.control.action_high)
    )
    with pytest.raises(ValueError, match=r"policy\.dtype"):
        model_dtype("int8")


def test_optimizer_state_round_trips_and_overwrite_is_clean(tmp_path) -> None:
    cfg = load_config(["training.lr=1e-3"])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg.training, torch.device("cpu"))
    batch = random_batch(model)
    for _ in range(2):
        logits = model(**batch)
        logits.float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    path = save_checkpoint(tmp_path / "run", model, cfg, step=2, optimizer=optimizer)
    path = save_checkpoint(tmp_path / "run", model, cfg, step=2, optimizer=optimizer)  # replaces in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    fresh = build_model(cfg)
    fresh_optimizer = make_optimizer(fresh, cfg.training, torch.device("cpu"))
    assert load_training_state(path, fresh, fresh_optimizer) == 2
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    saved, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for index, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value), (index, key)


def test_unknown_format_is_refused(tmp_path) -> None:
    cfg = load_config([])
    path = save_checkpoint(tmp_path / "c", build_model(cfg), cfg)
    meta = json.loads((path / CONFIG_FILE).read_text())
    meta["format"] = "something-else"
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        read_checkpoint_config(path)


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path) -> None:
    """All-NaN (or a single inf) weights load as a policy that decodes the same extreme action forever:
    the loader refuses them in one line naming a tensor."""
    cfg = load_config(["model=tiny"])
    model = build_model(cfg)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"NaN or infinite.*refused"):
        load_policy(save_checkpoint(tmp_path / "nan", model, cfg), "cpu")
    model = build_model(cfg)
    with torch.no_grad():
        model.token_embedding.weight.view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=r"tensor\(s\) hold NaN or infinite values, e.g. token_embedding"):
        load_policy(save_checkpoint(tmp_path / "inf", model, cfg), "cpu")


def test_every_way_of_naming_a_checkpoint_resolves(tmp_path) -> None:
    """A checkpoint directory, its weights file, a run's `checkpoints/latest` pointer or the run directory
    (as the README's commands use them) and a shipped policy name all load; anything else is one clear
    error."""
    from gato_ros.gato.checkpoint import MODEL_FILE, resolve_checkpoint
    from gato_ros.gato.train import CHECKPOINT_DIR, LATEST_FILE, checkpoint_path

    cfg = load_config(["model=tiny"])
    run = tmp_path / "run"
    directory = save_checkpoint(checkpoint_path(run, 7), build_model(cfg), cfg, step=7)
    (run / CHECKPOINT_DIR / LATEST_FILE).write_text(directory.name + "\n")
    for name in (directory, directory / MODEL_FILE, run / CHECKPOINT_DIR / LATEST_FILE, run):
        assert resolve_checkpoint(name) == directory, name
    assert load_policy(run / CHECKPOINT_DIR / LATEST_FILE, "cpu").step == 7
    assert resolve_checkpoint("default").name == "default"
    with pytest.raises(FileNotFoundError, match="no shipped policy of that name"):
        resolve_checkpoint(tmp_path / "nothing")
