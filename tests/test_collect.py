"""`gato-ros collect`: expert episodes written in the episode format, failures counted but kept out,
resumable by seed, parallel workers, camera images and real (sim-time) timestamps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset, load_episode, read_metadata
from gato_ros.tools.collect import LEDGER_NAME, collect, done_seeds
from gato_ros.twin import EXPERT_VERSION, TWIN_VERSION

pytestmark = pytest.mark.usefixtures("egl")


@pytest.fixture
def egl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "egl")


def ledger(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / LEDGER_NAME).read_text().splitlines()]


def config(out: Path, *overrides: str):
    return load_config(
        [f"collection.out_dir={out}", "collection.progress=false", "collection.render=false", *overrides]
    )


def test_failed_episodes_are_counted_not_written_and_a_rerun_resumes(tmp_path: Path) -> None:
    out = tmp_path / "data"
    short = "control.episode_seconds=0.5"  # 10 steps: the expert cannot stack in time
    first = collect(
        config(out, short, "collection.episodes=3", "collection.workers=1", "collection.first_seed=7")
    )
    assert first["this_run"]["attempted"] == 3 and first["this_run"]["successful"] == 0
    assert first["all_runs"] == {
        "attempted": 3,
        "successful": 0,
        "failed": 3,
        "physics_unstable": 0,
        "steps_written": 0,
    }
    assert len(EpisodeDataset(out)) == 0
    assert sorted(r["seed"] for r in ledger(out)) == [7, 8, 9]
    assert all(r["steps"] == 10 and r["episode_file"] is None for r in ledger(out))

    # A longer collection with the same first seed attempts only the new seeds; failed ones kept on request.
    second = collect(
        config(
            out,
            short,
            "collection.episodes=5",
            "collection.workers=1",
            "collection.first_seed=7",
            "collection.keep_failed=true",
        )
    )
    assert second["this_run"]["attempted"] == 2
    assert sorted(r["seed"] for r in ledger(out)) == [7, 8, 9, 10, 11]
    written = EpisodeDataset(out)
    assert sorted(m["seed"] for m in written.metadata) == [10, 11]
    assert all(m["success"] is False for m in written.metadata)
    assert len(EpisodeDataset(out, successful_only=True)) == 0
    assert done_seeds(out) == {7, 8, 9, 10, 11}


def test_seeds_on_disk_count_as_done_without_a_ledger(tmp_path: Path) -> None:
    out = tmp_path / "data"
    collect(
        config(
            out,
            "control.episode_seconds=0.2",
            "collection.episodes=2",
            "collection.workers=1",
            "collection.keep_failed=true",
            "collection.first_seed=3",
        )
    )
    (out / LEDGER_NAME).unlink()  # e.g. killed between writing an episode and its ledger line
    assert done_seeds(out) == {3, 4}


def test_parallel_workers_record_images_and_sim_time_stamps(tmp_path: Path) -> None:
    out = tmp_path / "data"
    cfg = config(
        out,
        "control.episode_seconds=0.3",
        "collection.episodes=2",
        "collection.workers=2",
        "collection.render=true",
        "collection.keep_failed=true",
    )
    summary = collect(cfg)
    assert summary["this_run"]["attempted"] == 2
    dataset = EpisodeDataset(out)
    assert len(dataset) == 2
    for path in dataset.paths:
        episode = load_episode(path)
        assert len(episode) == 6
        for camera in cfg.cameras.policy_cameras:
            pixels = episode.observations[f"{camera}/pixels"]
            assert pixels.shape == (6, int(cfg.cameras.height), int(cfg.cameras.width), 3)
            assert pixels.dtype == np.uint8 and np.asarray(pixels).std() > 0
        assert episode.observations["objects/pose"].shape == (6, 21)
        np.testing.assert_allclose(np.diff(episode.timestamp), 0.05, atol=1e-9)
        assert episode.timestamp[0] == 0.0
        meta = read_metadata(path)
        assert meta["source"] == "twin/scripted_expert" and meta["clock"] == "twin_sim_time"
        assert meta["objects"] == "train" and len(meta["object_ids"]) == 3
        assert meta["frame_codec"] == "png"  # collection.image_codec: lossless, decoded on indexing


def test_a_successful_expert_episode_is_written_for_training(tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = collect(
        # Seed 100001: one the expert stacks on the current twin (TWIN_VERSION); 100000 it does not.
        config(out, "collection.episodes=1", "collection.workers=1", "collection.first_seed=100001")
    )
    assert summary["this_run"]["successful"] == 1
    dataset = EpisodeDataset(out, successful_only=True)
    assert len(dataset) == 1
    episode = dataset[0]
    assert episode.metadata["seed"] == 100001 and episode.succeeded
    assert episode.metadata["twin_version"] == TWIN_VERSION
    assert episode.metadata["expert_version"] == EXPERT_VERSION
    assert episode.metadata["episode_mode"] == "early_stop"
    assert episode.metadata["expert"] == ("feedback" if load_config([]).twin.expert.feedback else "staged")
    assert episode.success[-1] and not episode.success[:-1].any()
    assert episode.action.shape == (len(episode), 5)


def test_dart_executes_noisy_actions_but_records_the_experts(tmp_path: Path) -> None:
    """With noise the trajectory leaves the expert's own, yet every label is the expert's clean action for
    the recorded state: the first label (same start state) equals the noiseless run's, later states differ."""
    runs = {}
    for scale in (0.0, 0.5):
        out = tmp_path / f"noise_{scale}"
        overrides = ["collection.episodes=1", "collection.workers=1", "collection.first_seed=100001"]
        overrides += ["collection.keep_failed=true", f"collection.noise_scale={scale}"]
        collect(config(out, *overrides, "control.episode_seconds=3"))
        runs[scale] = EpisodeDataset(out)[0]
    clean, noisy = runs[0.0], runs[0.5]
    assert noisy.metadata["noise_scale"] == 0.5 and clean.metadata["noise_scale"] == 0.0
    noisy_file = EpisodeDataset(tmp_path / "noise_0.5").paths[0]
    assert read_metadata(noisy_file)["source"] == "twin/scripted_expert_dart"
    np.testing.assert_array_equal(noisy.action[0], clean.action[0])
    pinch = "sawyer/pinch/pose"
    assert np.abs(noisy.observations[pinch][-1, :3] - clean.observations[pinch][-1, :3]).max() > 1e-3
    # Labels are the expert's: within the action bounds and, like the expert's, exactly bang-bang gripper.
    cfg = load_config([])
    assert np.all(noisy.action >= np.asarray(cfg.control.action_low, dtype=np.float32))
    assert np.all(noisy.action <= np.asarray(cfg.control.action_high, dtype=np.float32))
    assert set(np.unique(noisy.action[:, 4])) <= {-1.0, 1.0}


def test_noise_scale_must_be_non_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="noise_scale"):
        from gato_ros.tools.collect import ActionNoise

        ActionNoise(config(tmp_path, "collection.noise_scale=-0.1"))


def test_dagger_rolls_a_checkpoint_out_and_records_the_experts_labels(tmp_path: Path) -> None:
    """A (random, tiny, state-based) checkpoint drives the twin with beta = 0; the labels are the expert's:
    the first equals the expert's own first action, and the trajectory is the learner's, not the expert's."""
    import torch

    from gato_ros.gato.checkpoint import save_checkpoint
    from gato_ros.gato.model import build_model

    learner_cfg = load_config(["+experiment=state_policy", "model=tiny"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "learner", build_model(learner_cfg).eval(), learner_cfg)
    runs = {}
    dagger_overrides = [f"collection.policy={checkpoint}", "collection.round=2"]
    for name, extra in (("expert", []), ("dagger", dagger_overrides)):
        out = tmp_path / name
        overrides = ["collection.episodes=1", "collection.workers=1", "collection.first_seed=100001"]
        collect(config(out, *overrides, "collection.keep_failed=true", "control.episode_seconds=2", *extra))
        runs[name] = EpisodeDataset(out)[0]
    expert, dagger = runs["expert"], runs["dagger"]
    assert read_metadata(EpisodeDataset(tmp_path / "dagger").paths[0])["source"] == "twin/dagger"
    assert dagger.metadata["round"] == 2 and dagger.metadata["beta"] == 0.0
    assert dagger.metadata["policy"] == str(checkpoint)
    np.testing.assert_array_equal(dagger.action[0], expert.action[0])
    pinch = "sawyer/pinch/pose"
    assert np.abs(dagger.observations[pinch][-1, :3] - expert.observations[pinch][-1, :3]).max() > 1e-3
    assert set(np.unique(dagger.action[:, 4])) <= {-1.0, 1.0}  # the expert's bang-bang gripper labels


def test_a_shape_learner_collects_shapes_or_says_how(tmp_path: Path) -> None:
    """A learner that reads ``objects/shape`` needs the twin to publish them: refused in one line without,
    and with them the episodes record the key for the next round's training."""
    from gato_ros.gato.checkpoint import save_checkpoint
    from gato_ros.gato.model import build_model
    from gato_ros.tools.collect import LearnerPolicy

    learner_cfg = load_config(["+experiment=state_shape_policy", "model=tiny"])
    checkpoint = save_checkpoint(tmp_path / "learner", build_model(learner_cfg).eval(), learner_cfg)
    with pytest.raises(ValueError, match="shape_observations"):
        LearnerPolicy(config(tmp_path / "plain", f"collection.policy={checkpoint}"))
    out = tmp_path / "shapes"
    overrides = ["collection.episodes=1", "collection.workers=1", "collection.keep_failed=true"]
    collect(
        config(
            out,
            *overrides,
            "+experiment=state_shape_policy",
            f"collection.policy={checkpoint}",
            "control.episode_seconds=0.5",
        )
    )
    assert EpisodeDataset(out)[0].observations["objects/shape"].shape == (10, 30)


def test_poses_fitted_to_the_cameras_are_recorded_and_read_by_the_learner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``collection.object_pose_source=cameras``: the recorded (and learner-read) poses and shapes are those
    fitted to the rendered policy cameras, millimetres from the twin's exact ones yet not them; the labels
    stay the expert's, from the twin's state; frames are not recorded without ``collection.render``."""
    from gato_ros.gato.checkpoint import save_checkpoint
    from gato_ros.gato.model import build_model
    from gato_ros.tools.collect import LearnerPolicy

    learner_cfg = load_config(["+experiment=state_shape_policy", "model=tiny"])
    checkpoint = save_checkpoint(tmp_path / "learner", build_model(learner_cfg).eval(), learner_cfg)
    learner_read: list[np.ndarray] = []  # the poses the learner was given (workers=1: in this process)
    learner_call = LearnerPolicy.__call__

    def reading(self: LearnerPolicy, observation: dict, expert_action: np.ndarray) -> np.ndarray:
        learner_read.append(np.array(observation["objects/pose"]))
        return learner_call(self, observation, expert_action)

    monkeypatch.setattr(LearnerPolicy, "__call__", reading)
    runs = {}
    for source in ("twin", "cameras"):
        learner_read.clear()
        out = tmp_path / source
        overrides = ["collection.episodes=1", "collection.workers=1", "collection.first_seed=100001"]
        overrides += [
            "collection.keep_failed=true",
            "control.episode_seconds=0.5",
            "+experiment=state_shape_policy",
        ]
        overrides += [f"collection.object_pose_source={source}", "collection.beta=1.0"]  # the expert executes
        collect(config(out, *overrides, f"collection.policy={checkpoint}"))
        runs[source] = EpisodeDataset(out)[0]
    exact, fitted = runs["twin"], runs["cameras"]
    np.testing.assert_array_equal(np.stack(learner_read), fitted.observations["objects/pose"])
    assert (
        fitted.metadata["object_pose_source"] == "cameras" and exact.metadata["object_pose_source"] == "twin"
    )
    assert not any(key.endswith("/pixels") for key in fitted.observations)
    assert len(fitted) == len(exact) == 10
    np.testing.assert_array_equal(fitted.action, exact.action)  # the expert's labels, the same trajectory
    positions = [run.observations["objects/pose"].reshape(-1, 3, 7)[..., :3] for run in (exact, fitted)]
    error = np.linalg.norm(positions[0] - positions[1], axis=-1)
    assert error.max() < 0.01 and error.max() > 0.0
    assert not np.array_equal(exact.observations["objects/shape"], fitted.observations["objects/shape"])
    with pytest.raises(ValueError, match="object_pose_source"):
        collect(config(tmp_path / "bad", "collection.object_pose_source=perfect"))


def _alive_descendants(root: int) -> set[int]:
    """Live (not zombie) processes below `root`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_collection_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL the collection: its pool workers (and the pool's resource tracker) exit with it."""
    command = [sys.executable, "-m", "gato_ros.cli", "collect", f"collection.out_dir={tmp_path / 'data'}"]
    command += ["collection.workers=2", "collection.episodes=50", "collection.render=false"]
    command += ["collection.progress=false"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while len(_alive_descendants(process.pid)) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "the collection exited early"
            time.sleep(0.2)
        children = _alive_descendants(process.pid)
        assert len(children) >= 2, "the pool workers never started"
        process.kill()
        process.wait()
        deadline = time.monotonic() + 60
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(pid) for pid in children), [p for p in children if not _gone(p)]
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the session, whatever happened
            os.killpg(process.pid, signal.SIGKILL)


NONSENSE = ["collection.episodes=-3", "collection.workers=0", "collection.noise_scale=-1"]
NONSENSE += ["collection.beta=2"]


@pytest.mark.parametrize("override", NONSENSE)
def test_nonsense_collection_settings_are_one_line_refusals(tmp_path: Path, override: str, capsys) -> None:
    from gato_ros.tools.collect import main

    assert main([f"collection.out_dir={tmp_path / 'data'}", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gato-ros collect: collection.") and "\n" not in err
    assert not (tmp_path / "data").exists()
