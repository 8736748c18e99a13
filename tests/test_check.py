"""`gato-ros check`: checkpoints and the expert in lock-step twin episodes (in-process, no ROS), on
evaluation's groups and seeds, with a Markdown table and per-seed outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gato_ros.config import load_config
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.model import build_model
from gato_ros.tools import check as check_tool


def test_check_runs_checkpoints_and_the_expert_on_the_same_seeds(tmp_path: Path, capsys) -> None:
    overrides = ["+experiment=state_policy", "model=tiny"]
    cfg = load_config(overrides)
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoints" / "best", build_model(cfg), cfg, step=3)
    out = tmp_path / "check"
    argv = [
        *overrides,
        f"check.checkpoints=[{checkpoint}]",
        f"check.out_dir={out}",
        "evaluation.baselines=[expert]",
        "evaluation.groups=[2,train]",
        "evaluation.episodes_per_group=3",
        "evaluation.first_seed=4",
        "evaluation.workers=2",
        "control.episode_seconds=0.5",  # 10 control steps: the machinery, not the success rate
    ]
    assert check_tool.main(argv) == 0
    result = json.loads((out / "check.json").read_text())
    assert set(result["summary"]) == {"run/best", "expert"}
    for name in ("run/best", "expert"):
        cells = result["summary"][name]
        assert set(cells) == {"Group 2", "Average", "train"}
        assert cells["Group 2"]["n"] == 3 and cells["train"]["n"] == 3
        assert set(result["outcomes"][name]["train"]) == {"4", "5", "6"}  # split over 2 workers, rejoined
    table = (out / "check.md").read_text()
    assert "| run/best |" in table and "| expert |" in table and "n=3" in table
    assert "run/best" in capsys.readouterr().out


def test_a_shape_checkpoint_gets_the_shapes_from_the_twin(tmp_path: Path) -> None:
    """A checkpoint that reads ``objects/shape`` is checked under any run config: the runner turns the
    twin's shape observations on for it."""
    import numpy as np

    from gato_ros.evaluation.success_check import CheckpointRunner

    cfg = load_config(["+experiment=state_shape_policy", "model=tiny"])
    checkpoint = save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, step=1)
    run_cfg = load_config(["+experiment=state_policy", "model=tiny", "control.episode_seconds=0.25"])
    assert not run_cfg.twin.shape_observations
    runner = CheckpointRunner(run_cfg, checkpoint, 2)
    try:
        observation = runner._twin("benchmark").reset(seed=1)
        assert observation["objects/shape"].shape == (30,)
        assert np.all(np.isfinite(runner._act(runner.twin, observation)))
        outcomes, errors = runner.episodes([1], "benchmark")
        assert len(outcomes) == 1 and errors == 0
    finally:
        runner.close()


def test_a_state_checkpoint_can_read_object_poses_fitted_to_the_cameras(tmp_path: Path) -> None:
    """``policy.object_pose_source=cameras``: the twin renders the policy cameras and the checkpoint reads
    the poses (and shapes) the estimator fits to them, as the policy node would; not the twin's own."""
    import numpy as np

    from gato_ros.evaluation.success_check import CheckpointRunner

    cfg = load_config(["+experiment=state_shape_policy", "model=tiny"])
    checkpoint = save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, step=1)
    run_cfg = load_config(["control.episode_seconds=0.25", "policy.object_pose_source=cameras"])
    runner = CheckpointRunner(run_cfg, checkpoint, 1)
    seen: list[dict] = []
    decoder_act = runner.decoder.act
    runner.decoder.act = lambda observation: seen.append(observation) or decoder_act(observation)
    try:
        assert runner.poses_from_cameras and runner.needs_images and not runner.reads_images
        outcomes, errors = runner.episodes([3], "benchmark")
        assert len(outcomes) == 1 and errors == 0 and len(seen) == 5
        truth = runner.twin.object_poses()
        fed = seen[-1]
        assert not any(key.endswith("/pixels") for key in fed)  # a state checkpoint's observation
        assert not np.array_equal(fed["objects/pose"].reshape(3, 7), truth.astype(np.float32))
        np.testing.assert_allclose(fed["objects/pose"].reshape(3, 7)[:, :3], truth[:, :3], atol=0.01)
    finally:
        runner.close()


def test_check_without_anything_to_check_says_so(tmp_path: Path, capsys) -> None:
    assert check_tool.main([f"check.out_dir={tmp_path}"]) == 2
    assert "nothing to check" in capsys.readouterr().out


def test_expert_dims_hand_those_action_dimensions_to_the_scripted_expert(tmp_path: Path) -> None:
    """`check.expert_dims`: the shadow expert (following every state) supplies the named dimensions, the
    checkpoint the others; the row says which."""
    import numpy as np

    from gato_ros.evaluation.success_check import CheckpointRunner
    from gato_ros.twin import ScriptedExpert

    cfg = load_config(["+experiment=state_policy", "model=tiny", "model.init_std=0.3"])
    checkpoint = save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, step=1)
    plain = CheckpointRunner(cfg, checkpoint, "train")
    mixed = CheckpointRunner(cfg, checkpoint, "train", expert_dims=[0, 1, 2, 3])
    reference = ScriptedExpert(mixed.cfg)
    try:
        twin = mixed._twin("benchmark")
        observation = twin.reset(seed=3)
        reference.reset()
        for runner in (plain, mixed):
            runner.decoder.reset()
            if runner.expert is not None:
                runner.expert.reset()
        for _ in range(5):
            expert_action = reference.act(twin)
            policy_action, action = plain._act(twin, observation), mixed._act(twin, observation)
            np.testing.assert_allclose(action[:4], expert_action[:4])
            assert action[4] == policy_action[4]  # the checkpoint's own gripper command
            observation = twin.step(action).observation
    finally:
        plain.close()
        mixed.close()
    with pytest.raises(ValueError, match=r"expert_dims must lie in 0\.\.4"):
        CheckpointRunner(cfg, checkpoint, "train", expert_dims=[5])
    out = tmp_path / "check"
    argv = [
        "+experiment=state_policy",
        "model=tiny",
        f"check.checkpoints=[{checkpoint}]",
        f"check.out_dir={out}",
        "check.expert_dims=[0,1,2,3]",
        "evaluation.groups=[train]",
        "evaluation.episodes_per_group=1",
        "evaluation.workers=1",
        "control.episode_seconds=0.25",
    ]
    assert check_tool.main(argv) == 0
    result = json.loads((out / "check.json").read_text())
    assert set(result["summary"]) == {"ckpt + expert [0, 1, 2, 3]"} and result["expert_dims"] == [0, 1, 2, 3]


def test_command_limited_step_passes_actions_through_the_command_nodes_limits() -> None:
    """`check.command_limits`: actions that reverse the tool's velocity every tick reach the joints only
    within the command node's acceleration limit (the controller alone asks for bigger jumps), the limiter
    names the clamp, and the checks use it by default."""
    import numpy as np

    from gato_ros.evaluation.success_check import CheckpointRunner
    from gato_ros.safety.limits import Reason, SafetyLimits
    from gato_ros.twin import StackingTwin
    from gato_ros.twin.rollout import CommandLimitedStep

    cfg = load_config(["twin.triplet=4", "twin.render=false"])
    assert CheckpointRunner(cfg, None, 4).command_limits  # the default: the checks see what ROS sees
    limits = SafetyLimits.from_config(cfg)
    per_tick = limits.acceleration_limit / float(cfg.control.rate_hz)
    # full-speed reversals of the tool: down and turning one way, then up and turning the other
    forward, back = np.array([0.0, 0.0, -0.07, 1.0, -1.0]), np.array([0.0, 0.0, 0.07, -1.0, -1.0])
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        q = twin.joint_positions()
        requested = twin.controller.joint_velocity(q, forward) - twin.controller.joint_velocity(q, back)
        assert np.any(np.abs(requested) > per_tick)  # what the plain controller would pass on
        step = CommandLimitedStep(twin, cfg)
        commands = [np.zeros(7)]
        for tick in range(20):
            step(forward if tick % 2 == 0 else back)
            commands.append(step.previous.copy())
            assert np.array_equal(twin.data.ctrl[twin.index.arm_actuators], step.previous)
        assert np.all(np.abs(np.diff(np.array(commands), axis=0)) <= per_tick + 1e-9)
        assert step.limiter.counters[Reason.ACCELERATION] > 0


def test_explain_reads_each_failed_episode_through_the_shadow_expert(tmp_path: Path, capsys) -> None:
    """`check.explain`: per failed episode the expert's stage runs, the first setback and |action - label| per
    dimension; the expert's own row differs from its labels by nothing."""
    cfg = load_config(["+experiment=state_policy", "model=tiny", "model.init_std=0.3"])
    checkpoint = save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg, step=1)
    out = tmp_path / "check"
    argv = [
        "+experiment=state_policy",
        "model=tiny",
        f"check.checkpoints=[{checkpoint}]",
        f"check.out_dir={out}",
        "check.explain=true",
        "evaluation.baselines=[expert]",
        "evaluation.groups=[train]",
        "evaluation.episodes_per_group=1",
        "evaluation.first_seed=3",
        "evaluation.workers=1",
        "control.episode_seconds=0.5",  # 10 steps: nobody stacks, every episode is explained
    ]
    assert check_tool.main(argv) == 0
    result = json.loads((out / "check.json").read_text())
    for name in ("ckpt", "expert"):
        (failed,) = result["failures"][name]["train"]
        assert failed["seed"] == 3 and not failed["success"]
        assert failed["setback"].startswith("time ran out in ")
        steps = [int(run.split(":")[1]) for run in failed["stage_runs"].split()]
        assert sum(steps) == 10 and len(failed["action_error"]) == 5
    assert result["failures"]["expert"]["train"][0]["action_error"] == [0.0] * 5
    assert max(result["failures"]["ckpt"]["train"][0]["action_error"]) > 0.0
    printed = capsys.readouterr().out
    assert "ckpt: failed episodes" in printed and "train seed 3 (time ran out in " in printed


def test_an_episode_explanation_collapses_stages_and_averages_the_label_error() -> None:
    import numpy as np

    from gato_ros.evaluation.setbacks import EpisodeExplanation

    stages = ["APPROACH", "APPROACH", "DESCEND", "CLOSE", "LIFT", "RECOVER"]
    actions = np.zeros((6, 5))
    labels = np.zeros((6, 5))
    labels[:, 2] = 0.06  # the policy never moved up or down where the expert would have
    labels[3, 4] = 1.0
    explanation = EpisodeExplanation.from_trace(7, False, stages, actions, labels)
    assert explanation.runs == [("APPROACH", 2), ("DESCEND", 1), ("CLOSE", 1), ("LIFT", 1), ("RECOVER", 1)]
    assert explanation.setback == "lost red after LIFT"
    assert explanation.action_error == pytest.approx([0.0, 0.0, 0.06, 0.0, 1.0 / 6], abs=1e-4)
    assert explanation.record()["stage_runs"] == "APPROACH:2 DESCEND:1 CLOSE:1 LIFT:1 RECOVER:1"
