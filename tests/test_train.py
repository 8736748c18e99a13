"""Training: the LR schedule, decay groups, the masked loss, loss falling on episodes, exact resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model import random_batch  # tests/ is on sys.path (pytest rootdir insertion)

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import load_policy
from gato_ros.gato.data import EpisodeWriter
from gato_ros.gato.model import build_model
from gato_ros.gato.train import (
    DistContext,
    PrefetchedBatches,
    TokenBatch,
    latest_checkpoint,
    lr_at,
    masked_nll,
    parameter_groups,
    resolve_device,
    sequence_nll,
    train,
)
from gato_ros.twin.shape import SHAPE_VERSION, shape_metadata

DATASET = "rgb_stacking_sim"  # the default mixture's source


def write_synthetic_episodes(root: Path, episodes: int = 3, steps: int = 12, seed: int = 0) -> None:
    """Episodes in the recorded format whose action is a fixed function of the arm state (learnable)."""
    rng = np.random.default_rng(seed)
    with EpisodeWriter(
        root / DATASET, control_rate_hz=20.0, source="test/synthetic", background=False
    ) as writer:
        for _ in range(episodes):
            writer.begin_episode(task="stack red on blue")
            for t in range(steps):
                joints = rng.uniform(-1, 1, 7).astype(np.float32)
                obs = {
                    "basket_front_left/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
                    "basket_front_right/pixels": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
                    "gripper/joints/angle": np.array([255.0 * (t > steps // 2)], dtype=np.float32),
                    "sawyer/joints/angle": joints,
                    "sawyer/pinch/pose": rng.uniform(-1, 1, 7).astype(np.float32),
                    "sawyer/tcp/pose": rng.uniform(-1, 1, 7).astype(np.float32),
                }
                action = np.array([0.05 * joints[0], -0.03, 0.02, 0.5 * joints[1], 1.0 if t > 5 else -1.0])
                writer.add_step(obs, action, timestamp=0.05 * t)
            writer.end_episode(success=True)


def small_run_overrides(tmp_path: Path, **training: object) -> list[str]:
    values = {
        "steps": 40,
        "batch_size": 2,
        "sequence_length": 320,  # two whole 156-token steps per sequence
        "lr": 5e-3,
        "warmup_steps": 3,
        "log_every": 1,
        "num_threads": 1,  # one intra-op thread: far faster than two on a shared 2-core runner
        "checkpoint_every": 1000,
        "progress": False,
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
        "data.root": str(tmp_path / "data"),
        "data.prompt.max_tokens": 156,
        "success_check.every": 0,  # the in-process twin check has its own test
    }
    values.update(training)
    return [f"training.{k}={v}" for k, v in values.items()]


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_a_tenth() -> None:
    cfg = load_config(["training.lr=1e-3", "training.warmup_steps=10", "training.steps=110"]).training
    lrs = np.array([lr_at(s, cfg) for s in range(130)])
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)  # linear warmup to the peak
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[10:111]) < 0)  # strictly decaying
    assert lrs[60] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))  # cosine midpoint
    np.testing.assert_allclose(lrs[110:], 1e-4)  # floor: a tenth of the peak


def test_weight_decay_skips_biases_norms_and_embeddings() -> None:
    model = build_model(load_config([]))
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    names = {name: id(p) in decayed for name, p in model.named_parameters()}
    assert (
        names["blocks.0.fc.weight"]
        and names["blocks.0.attn.qkv.weight"]
        and names["patch_encoder.conv1.weight"]
    )
    for name, is_decayed in names.items():
        if name.endswith(".bias") or "ln" in name or "norm" in name or "embedding" in name:
            assert not is_decayed, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_fast_masked_loss_equals_loss_from_full_logits() -> None:
    torch.manual_seed(0)
    model = build_model(load_config([])).eval()
    fields = random_batch(model)
    loss_mask = torch.zeros_like(fields["tokens"], dtype=torch.float32)
    loss_mask[:, 150:155] = 1.0
    loss_mask[1, 190:195] = 1.0
    batch = TokenBatch(**fields, loss_mask=loss_mask)
    with torch.no_grad():
        fast, count = masked_nll(model, batch)
        reference, ref_count = sequence_nll(model, batch)
    assert count == ref_count == 15
    torch.testing.assert_close(fast, reference)
    # weighted targets (auxiliary ones): the loss is the weighted mean over them
    loss_mask[0, 160:170] = 0.25
    with torch.no_grad():
        fast, count = masked_nll(model, batch)
        reference, ref_count = sequence_nll(model, batch)
    assert count == ref_count == 15 + 2.5
    torch.testing.assert_close(fast, reference)


def test_loss_falls_on_recorded_episodes_through_the_train_tool(tmp_path, capsys) -> None:
    from gato_ros.tools import train as train_tool

    write_synthetic_episodes(tmp_path / "data")
    assert train_tool.main(small_run_overrides(tmp_path)) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))
    assert log[0]["loss"] == pytest.approx(
        math.log(33026), abs=0.3
    )  # starts near uniform over the vocabulary
    final = np.mean([r["loss"] for r in log[-5:]])
    assert final < 0.5 * log[0]["loss"]
    assert final < math.log(1024)  # better than uniform over the value bins: it learned the actions
    latest = latest_checkpoint(tmp_path / "run")
    assert latest is not None and latest.name == "step_0000040"
    assert load_policy(latest).step == 40
    assert "last loss" in capsys.readouterr().out
    png = tmp_path / "run" / "loss.png"  # the curve is redrawn at every checkpoint
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_eval_at_end_evaluates_the_final_checkpoint_into_the_run_directory(tmp_path, monkeypatch) -> None:
    from gato_ros.tools import eval as eval_tool
    from gato_ros.tools import train as train_tool

    seen = []

    class Report:
        ok = True

    def fake_evaluate(cfg):  # the real evaluation through ROS is tested in test_eval.py
        seen.append(cfg)
        return Report()

    monkeypatch.setattr(eval_tool, "evaluate", fake_evaluate)
    write_synthetic_episodes(tmp_path / "data", episodes=1, steps=4)
    overrides = small_run_overrides(tmp_path, steps=2, eval_at_end=True)
    assert train_tool.main([*overrides, "evaluation.episodes_per_group=1"]) == 0
    (cfg,) = seen
    assert cfg.evaluation.checkpoint == str(tmp_path / "run" / "checkpoints" / "step_0000002")
    assert cfg.evaluation.out_dir == str(tmp_path / "run" / "eval")
    assert cfg.evaluation.episodes_per_group == 1


def test_training_curve_reads_resumed_and_truncated_logs(tmp_path) -> None:
    from gato_ros.gato.curves import plot_training_log, read_log, running_mean

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-4}) for s in (1, 2, 3)]
    lines += [json.dumps({"step": 2, "loss": 9.0, "lr": 1e-4}), '{"step": 4, "lo']  # resumed, then cut
    log.write_text("\n".join(lines))
    records = read_log(log)
    assert [r["step"] for r in records] == [1, 2, 3] and records[1]["loss"] == 9.0
    np.testing.assert_allclose(running_mean(np.array([1.0, 3.0, 5.0]), 2), [1.0, 2.0, 4.0])
    assert plot_training_log(log).stat().st_size > 0


def test_prefetching_batches_changes_nothing_but_the_overlap(tmp_path) -> None:
    """training.prefetch_batches builds the next batch in a thread while the model trains: the same losses
    and weights as without it, micro-batches (grad accumulation) included."""
    write_synthetic_episodes(tmp_path / "data", episodes=2, steps=6)
    runs = {}
    for prefetch in (False, True):
        out = tmp_path / f"prefetch_{prefetch}"
        cfg = load_config(
            small_run_overrides(tmp_path, steps=4, grad_accum_steps=2, prefetch_batches=prefetch, out_dir=out)
        )
        runs[prefetch] = (train(cfg).losses, load_policy(out / "checkpoints" / "step_0000004").model)
    assert runs[True][0] == runs[False][0]
    right = runs[False][1].state_dict()
    for name, tensor in runs[True][1].state_dict().items():
        assert torch.equal(tensor, right[name]), name


def test_batch_worker_processes_build_the_same_batches(tmp_path, monkeypatch) -> None:
    """training.data.workers builds batches in spawned processes ahead of the trainer: the same losses and
    weights as the trainer's own process, micro-batches included."""
    import gato_ros.gato.train as train_module

    served: list[tuple[int, int]] = []
    call = train_module.ParallelBatches.__call__

    def counting(self, step: int, micro: int):
        served.append((step, micro))
        return call(self, step, micro)

    monkeypatch.setattr(train_module.ParallelBatches, "__call__", counting)
    write_synthetic_episodes(tmp_path / "data", episodes=2, steps=6)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"workers_{workers}"
        overrides = small_run_overrides(tmp_path, steps=4, grad_accum_steps=2, out_dir=out)
        cfg = load_config([*overrides, f"training.data.workers={workers}"])
        runs[workers] = (train(cfg).losses, load_policy(out / "checkpoints" / "step_0000004").model)
    assert served == [(step, micro) for step in range(4) for micro in range(2)]  # all from the workers
    assert runs[2][0] == runs[0][0]
    right = runs[0][1].state_dict()
    for name, tensor in runs[2][1].state_dict().items():
        assert torch.equal(tensor, right[name]), name


def test_prefetched_batches_serve_each_key_once_in_order_never_concurrently() -> None:
    import threading
    import time as time_module

    calls: list[tuple[int, int]] = []
    busy = threading.Lock()

    def source(step: int, micro: int) -> tuple[int, int]:
        assert busy.acquire(blocking=False), "the source was called from two threads at once"
        try:
            time_module.sleep(0.001)
            calls.append((step, micro))
            return (step, micro)
        finally:
            busy.release()

    batches = PrefetchedBatches(source, accum=2, end=3)
    try:
        served = [batches(step, micro) for step in range(3) for micro in range(2)]
        assert served == [(s, m) for s in range(3) for m in range(2)]
        assert calls == served  # each built once, none past the end
        assert batches(1, 1) == (1, 1)  # a key out of order is built on demand
    finally:
        batches.close()


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path) -> None:
    write_synthetic_episodes(tmp_path / "data", episodes=2, steps=6)
    full = train(load_config(small_run_overrides(tmp_path, steps=6, out_dir=tmp_path / "a")))
    cfg = load_config(small_run_overrides(tmp_path, steps=6, out_dir=tmp_path / "b"))
    interrupted = train(cfg, stop_at=3)  # same 6-step schedule, stopped (and checkpointed) after 3
    assert interrupted.step == 3 and interrupted.checkpoint.name == "step_0000003"
    cfg.training.resume = "auto"
    resumed = train(cfg)
    assert resumed.step == 6
    assert resumed.losses == full.losses[3:]
    left = load_policy(tmp_path / "a" / "checkpoints" / "step_0000006").model.state_dict()
    right = load_policy(tmp_path / "b" / "checkpoints" / "step_0000006").model.state_dict()
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


@pytest.mark.slow
def test_loss_falls_on_twin_expert_episodes(tmp_path, monkeypatch) -> None:
    """The real pipeline end to end: scripted-expert episodes from the MuJoCo twin (rendered cameras),
    recorded in the episode format, serialized by the dataset, trained on by the tiny model."""
    monkeypatch.setenv("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))
    from gato_ros.twin.env import StackingTwin
    from gato_ros.twin.expert import ScriptedExpert

    cfg = load_config(small_run_overrides(tmp_path))
    with (
        StackingTwin(cfg) as twin,
        EpisodeWriter(tmp_path / "data" / DATASET, 20.0, "twin/scripted_expert", background=False) as writer,
    ):
        expert = ScriptedExpert(cfg)
        for seed in (1, 2):
            obs = twin.reset(seed=seed)
            expert.reset()
            writer.begin_episode(task="stack red on blue", seed=seed)
            for _ in range(10):
                action = expert.act(twin)
                step = twin.step(action)
                writer.add_step(obs, action, timestamp=twin.time)
                obs = step.observation
            writer.end_episode(success=True)  # short clips: the filter would otherwise drop them
    result = train(cfg)
    assert result.losses[0] > 0.9 * math.log(33026)  # an untrained model: near uniform over the vocabulary
    final = float(np.mean(result.losses[-5:]))
    assert final < 0.5 * result.losses[0] and final < math.log(1024)


@pytest.mark.slow
def test_same_command_trains_under_torchrun_with_two_processes(tmp_path) -> None:
    """DistributedDataParallel over gloo on the CPU: `torchrun ... -m gato_ros.cli train` needs no changes."""
    write_synthetic_episodes(tmp_path / "data", episodes=2, steps=6)
    overrides = small_run_overrides(tmp_path, steps=4, log_every=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*command, "-m", "gato_ros.cli", "train", *overrides], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("trained tiny to step 4") == 1  # only rank 0 reports, logs and checkpoints
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert load_policy(latest_checkpoint(tmp_path / "run")).step == 4


def test_device_names_resolve_to_this_ranks_gpu() -> None:
    """A bare "cuda" means this process's GPU under torchrun (torch.cuda.set_device rejects it as is)."""
    rank1 = DistContext(rank=1, local_rank=1, world_size=2)
    assert resolve_device("cuda", rank1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", rank1) == torch.device("cuda:0")
    assert resolve_device("cpu", rank1) == torch.device("cpu")
    expected = torch.device("cuda:1") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto", rank1) == expected


def write_state_episodes(
    root: Path,
    episodes: int = 3,
    steps: int = 10,
    seed: int = 0,
    shapes: bool = False,
    shape_version: int = SHAPE_VERSION,
) -> None:
    """State-policy episodes (proprioception + object poses, and with `shapes` the objects' shapes, said to
    be of `shape_version`; no frames) in the recorded format."""
    rng = np.random.default_rng(seed)
    metadata = shape_metadata(shape_version) if shapes else {}
    with EpisodeWriter(root / "rgb_stacking_sim_state", 20.0, "test/synthetic", background=False) as writer:
        for _ in range(episodes):
            writer.begin_episode(task="stack red on blue", **metadata)
            for t in range(steps):
                obs = {
                    "gripper/joints/angle": np.array([255.0 * (t > steps // 2)], dtype=np.float32),
                    "objects/pose": rng.uniform(-1, 1, 21).astype(np.float32),
                    "sawyer/joints/angle": rng.uniform(-1, 1, 7).astype(np.float32),
                    "sawyer/pinch/pose": rng.uniform(-1, 1, 7).astype(np.float32),
                    "sawyer/tcp/pose": rng.uniform(-1, 1, 7).astype(np.float32),
                }
                if shapes:
                    obs["objects/shape"] = rng.uniform(-1, 1, 30).astype(np.float32)
                writer.add_step(obs, rng.uniform(-0.05, 0.05, 5), timestamp=0.05 * t)
            writer.end_episode(success=True)


def test_success_check_picks_the_best_checkpoint_by_twin_episodes_and_survives_resume(tmp_path) -> None:
    """`gato-ros train` with the in-process check: twin episodes at every checked checkpoint, success.jsonl
    and success.png beside the loss curve, checkpoints/best a loadable copy; a resumed run appends."""
    from gato_ros.gato.curves import plot_success_vs_data
    from gato_ros.tools import train as train_tool

    write_state_episodes(tmp_path / "data", episodes=3)
    overrides = [
        "+experiment=state_policy",
        "model=tiny",
        "control.episode_seconds=1.0",  # 20 control steps per check episode: a test-sized check
        *small_run_overrides(
            tmp_path,
            steps=4,
            sequence_length=100,
            checkpoint_every=2,
            **{"success_check.every": 2, "success_check.episodes": 2, "success_check.first_seed": 5},
        ),
        "training.data.prompt.max_tokens=0",
    ]
    assert train_tool.main([*overrides, "training.data.max_episodes=2"]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "success.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert record["episodes"] == 2 and record["seeds"] == [5, 6] and len(record["outcomes"]) == 2
        assert record["successes"] == sum(record["outcomes"]) and 0.0 <= record["success_rate"] <= 1.0
        assert record["data_episodes"] == 2 and record["data_steps"] == 20  # max_episodes=2 of 3
        lo, hi = record["interval"]
        assert 0.0 <= lo <= record["success_rate"] <= hi <= 1.0
    assert (run / "success.png").read_bytes()[:4] == b"\x89PNG"
    best = load_policy(run / "checkpoints" / "best")
    best_rate = max(r["success_rate"] for r in records)
    assert best.step == max(r["step"] for r in records if r["success_rate"] == best_rate)
    # resumed with a longer schedule: the check continues the same log
    steps_before = [r["step"] for r in records]
    overrides = [o.replace("training.steps=4", "training.steps=6") for o in overrides]
    assert train_tool.main([*overrides, "training.resume=auto"]) == 0
    records = [json.loads(line) for line in (run / "success.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [*steps_before, 6]
    assert records[-1]["data_episodes"] == 3  # the whole dataset this time
    png = plot_success_vs_data([run], tmp_path / "data_size.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_best_checkpoint_follows_the_success_rate_not_the_step(tmp_path) -> None:
    """checkpoints/best is the checkpoint with the highest checked success (ties: the later one), and a
    resumed run remembers the best rate it had."""
    from gato_ros.evaluation.success_check import CheckResult, SuccessCheck

    cfg = load_config(
        small_run_overrides(tmp_path, steps=8, checkpoint_every=2, **{"success_check.every": 2})
    )
    check = SuccessCheck(cfg)

    def checked(step: int, successes: int) -> None:
        source = tmp_path / f"ckpt_{step}"
        source.mkdir()
        (source / "step.txt").write_text(str(step))
        result = CheckResult(step, successes, 4, [0, 1, 2, 3], [True] * successes + [False] * (4 - successes),
                             0, 0.0, "train")  # fmt: skip
        check._record(result, source)

    def best_step() -> int:
        return int((tmp_path / "run" / "checkpoints" / "best" / "step.txt").read_text())

    checked(2, 1)
    assert best_step() == 2
    checked(4, 3)
    checked(6, 2)
    assert best_step() == 4  # a later, worse checkpoint does not replace it
    assert SuccessCheck(cfg).best_rate == 0.75  # what a resumed run starts from
    checked(8, 3)
    assert best_step() == 8  # a tie goes to the later checkpoint
    assert check.due(2) and not check.due(3) and check.due(8)


def test_init_from_fine_tunes_a_shipped_policy_with_a_fresh_optimizer(tmp_path, capsys) -> None:
    """`training.init_from=default`: the run adopts the policy's model and tokenizer (whatever model= said),
    starts from its weights at step 0 with a fresh optimizer, and continues its own state on resume."""
    from gato_ros.tools import train as train_tool

    shipped = load_policy("default")  # the state policy with the objects' shapes
    write_state_episodes(tmp_path / "data", episodes=2, shapes=True)
    overrides = [
        "+experiment=state_shape_policy",
        "model=tiny",  # replaced by the shipped policy's own
        "training.init_from=default",
        "training.data.prompt.max_tokens=0",
        *small_run_overrides(tmp_path, steps=2, sequence_length=100, lr=0.0, warmup_steps=0),
    ]
    assert train_tool.main(overrides) == 0
    assert capsys.readouterr().out.count("adopting its model") == 1  # said once, not per caller
    tuned = load_policy(latest_checkpoint(tmp_path / "run"))
    assert tuned.step == 2 and tuned.cfg.model.name == shipped.cfg.model.name
    # training windows fit the adopted context (a one-step policy fine-tunes on one-step windows)
    context = shipped.cfg.model.context_length
    assert tuned.cfg.model.context_length == context and tuned.cfg.training.sequence_length <= context
    for name, tensor in shipped.model.state_dict().items():  # lr 0: the shipped weights, untouched
        torch.testing.assert_close(tuned.model.state_dict()[name], tensor)
    # a resumed fine-tuning run continues from its own checkpoint, not the starting policy
    more = [o.replace("training.steps=2", "training.steps=3") for o in overrides]
    assert train_tool.main([*more, "training.resume=auto"]) == 0
    assert "initialised from" not in capsys.readouterr().out
    assert load_policy(latest_checkpoint(tmp_path / "run")).step == 3


def test_init_keep_changes_a_named_setting_of_the_adopted_tokenizer() -> None:
    """`training.init_keep`: a fine-tuning run keeps the settings it names (here a new frame of the same
    tokens) and adopts every other model and tokenizer setting of its starting policy; a name outside the
    adopted groups is refused rather than silently ignored."""
    from gato_ros.gato.train import adopt_init_architecture

    shipped = load_policy("default")
    frame = "tokenizer.observation.privileged_frame"
    theirs = shipped.cfg.tokenizer.observation.privileged_frame
    ours = "pinch" if theirs != "pinch" else "pinch_yaw"  # another frame of the same tokens
    overrides = ["+experiment=state_shape_policy", "model=tiny", "training.init_from=default"]
    adopted = adopt_init_architecture(load_config([*overrides, f"{frame}={ours}"]))
    assert adopted.tokenizer.observation.privileged_frame == theirs
    kept = adopt_init_architecture(
        load_config([*overrides, f"{frame}={ours}", f"training.init_keep=[{frame}]"])
    )
    assert kept.tokenizer.observation.privileged_frame == ours != theirs
    assert kept.model == shipped.cfg.model  # the rest adopted: model=tiny did not win
    assert list(kept.tokenizer.observation.privileged_keys) == list(
        shipped.cfg.tokenizer.observation.privileged_keys
    )
    with pytest.raises(ValueError, match="init_keep"):
        adopt_init_architecture(load_config([*overrides, "training.init_keep=[training.lr]"]))


def test_training_refuses_shapes_of_another_version_than_the_runs(tmp_path) -> None:
    """Episodes whose `objects/shape` was written in version 1 (the narrowest width) would teach a version-3
    run (the expert's grasp plan) features its policy is never fed: refused, with the way out."""
    from gato_ros.tools import train as train_tool

    write_state_episodes(tmp_path / "data", episodes=2, shapes=True, shape_version=1)
    overrides = [
        "+experiment=state_shape_policy",
        "model=tiny",
        "training.data.prompt.max_tokens=0",
        *small_run_overrides(tmp_path, steps=1, sequence_length=79),
    ]
    with pytest.raises(ValueError, match=r"version \[1\].*add_shape_features.py SRC DST --shape-version 3"):
        train_tool.main(overrides)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert train_tool.main([*overrides, "twin.shape_version=1"]) == 0  # a version-1 run takes them
    assert load_policy(latest_checkpoint(tmp_path / "run")).cfg.twin.shape_version == 1
