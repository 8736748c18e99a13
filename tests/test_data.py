"""Episode data format: writer/loader round trip, real timestamps, crash safety (a killed recorder loses only
the episode in progress and numbering continues), one writer per directory, unreadable files skipped."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gato_ros.gato.data import (
    EncodedFrames,
    EpisodeDataset,
    EpisodeWriter,
    FrameCodec,
    episode_filename,
    episode_indices,
    load_episode,
)


def observation(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "basket_front_left/pixels": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
        "sawyer/joints/angle": rng.normal(size=7).astype(np.float32),
    }


def record(writer: EpisodeWriter, steps: int, seed: int, stamps: list[float] | None = None) -> Path | None:
    rng = np.random.default_rng(seed)
    writer.begin_episode(task="stack red on blue", triplet=1, seed=seed)
    for t in range(steps):
        success = t == steps - 1
        stamp = None if stamps is None else stamps[t]
        writer.add_step(
            observation(rng), rng.uniform(-1, 1, 5), reward=float(success), success=success, timestamp=stamp
        )
    return writer.end_episode()


@pytest.mark.parametrize("background", [True, False])
def test_round_trip(tmp_path: Path, background: bool) -> None:
    stamps = [100.0, 100.05, 100.11, 100.15]
    with EpisodeWriter(
        tmp_path, control_rate_hz=20.0, source="test", clock="sim", background=background
    ) as w:
        path = record(w, 4, seed=3, stamps=stamps)
    assert path == tmp_path / "episode_000000.npz" and path.is_file()
    episode = load_episode(path)
    rng = np.random.default_rng(3)
    for t in range(4):
        expected = observation(rng)
        for key, value in expected.items():
            np.testing.assert_array_equal(episode.observations[key][t], value)
        np.testing.assert_allclose(episode.action[t], rng.uniform(-1, 1, 5).astype(np.float32))
    assert len(episode) == 4 and episode.action.dtype == np.float32
    np.testing.assert_allclose(episode.timestamp, np.array(stamps) - 100.0)  # real, relative to the start
    assert episode.timestamp.dtype == np.float64
    assert episode.success.tolist() == [False, False, False, True]
    assert episode.reward.tolist() == [0, 0, 0, 1]
    meta = episode.metadata
    assert meta["task"] == "stack red on blue" and meta["triplet"] == 1 and meta["seed"] == 3
    assert meta["success"] is True and meta["episode_index"] == 0 and meta["num_steps"] == 4
    assert meta["control_rate_hz"] == 20.0 and meta["source"] == "test" and meta["clock"] == "sim"
    assert meta["achieved_rate_hz"] == pytest.approx(3 / 0.15)
    assert meta["format_version"] == 2 and meta["frame_codec"] == "png" and "start_time_utc" in meta
    assert episode.observation(2)["sawyer/joints/angle"].shape == (7,)
    assert isinstance(episode.observations["basket_front_left/pixels"], EncodedFrames)
    # a plain numpy + OpenCV user can read it too
    import cv2

    with np.load(path) as npz:
        assert json.loads(str(npz["metadata"]))["num_steps"] == 4
        offsets = npz["frames/basket_front_left/pixels/offsets"]
        assert offsets.shape == (5,) and npz["frames/basket_front_left/pixels/shape"].tolist() == [16, 16, 3]
        blob = npz["frames/basket_front_left/pixels/data"][offsets[1] : offsets[2]]
        bgr = cv2.imdecode(blob, cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(bgr[..., ::-1], episode.observations["basket_front_left/pixels"][1])


def test_raw_codec_keeps_the_version_1_layout(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test", background=False, image_codec="raw") as w:
        path = record(w, 3, seed=2)
    with np.load(path) as npz:
        assert npz["obs/basket_front_left/pixels"].shape == (3, 16, 16, 3)
        assert not any(name.startswith("frames/") for name in npz.files)
    episode = load_episode(path)
    assert "frame_codec" not in episode.metadata
    assert isinstance(episode.observations["basket_front_left/pixels"], np.ndarray)


def rendered_like_frames(count: int, seed: int = 0) -> np.ndarray:
    """Smooth shading plus flat coloured blocks that move: what the twin's cameras produce (noise is not)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    frames = np.empty((count, 64, 64, 3), dtype=np.uint8)
    for t in range(count):
        base = np.stack([80 + xx, 90 + yy, 100 + (xx + yy) // 2], axis=-1).astype(np.uint8)
        for colour in ([200, 30, 30], [30, 200, 30], [30, 30, 200]):
            r, c = rng.integers(4, 44, 2)
            base[r : r + 16, c : c + 16] = colour
        frames[t] = base
    return frames


@pytest.mark.parametrize(("codec", "max_mean_error"), [("png", 0.0), ("jpeg", 4.0)])
def test_encoded_frames_round_trip_within_the_codecs_tolerance(
    tmp_path: Path, codec: str, max_mean_error: float
) -> None:
    """png is exact; jpeg at quality 95 stays within 4 grey levels on average on these hard-edged 64 x 64
    blocks (chroma subsampling's worst case; 1.3 on the twin's renders, benchmarks/frames.py)."""
    frames = rendered_like_frames(6)
    with EpisodeWriter(tmp_path, 20.0, "test", background=False, image_codec=codec) as writer:
        writer.begin_episode(task="t")
        for frame in frames:
            writer.add_step({"cam/pixels": frame, "x": np.zeros(2, np.float32)}, np.zeros(5))
        path = writer.end_episode()
    assert path is not None and path.stat().st_size < frames.nbytes / 2
    for mmap in (False, True):
        stored = load_episode(path, mmap=mmap).observations["cam/pixels"]
        assert isinstance(stored, EncodedFrames) and stored.shape == frames.shape and len(stored) == 6
        decoded = np.asarray(stored)
        assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
        error = np.abs(decoded.astype(int) - frames.astype(int))
        assert error.mean() <= max_mean_error
        if codec == "png":
            np.testing.assert_array_equal(decoded, frames)
        # every way of indexing decodes the same frames
        np.testing.assert_array_equal(stored[2], decoded[2])
        np.testing.assert_array_equal(stored[-1], decoded[5])
        np.testing.assert_array_equal(stored[1:4], decoded[1:4])
        np.testing.assert_array_equal(stored[[0, 5, 3]], decoded[[0, 5, 3]])
        np.testing.assert_array_equal(stored[np.arange(2)], decoded[:2])
        assert stored[4:2].shape == (0, 64, 64, 3)
        with pytest.raises(IndexError):
            stored[6]


def test_frame_codec_refuses_unknown_names_and_qualities() -> None:
    with pytest.raises(ValueError, match="image codec must be one of raw, png, jpeg"):
        FrameCodec("gif")
    with pytest.raises(ValueError, match="jpeg quality"):
        FrameCodec("jpeg", quality=101)
    assert not FrameCodec("png").encodes(np.zeros((2, 8, 8), np.uint8))  # grey images stay raw
    assert not FrameCodec("png").encodes(np.zeros((2, 8, 8, 3), np.float32))


@pytest.mark.parametrize("compress", [False, True])
def test_memory_mapped_loading_matches(tmp_path: Path, compress: bool) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test", compress=compress, background=False) as w:
        path = record(w, 5, seed=4)
    full, mapped = load_episode(path), load_episode(path, mmap=True)
    assert isinstance(mapped.action, np.memmap) != compress  # compressed members cannot be mapped
    for key, value in full.observations.items():
        np.testing.assert_array_equal(mapped.observations[key], value)
        assert mapped.observations[key].dtype == value.dtype
    for name in ("action", "timestamp", "reward", "success"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(full, name))
    assert mapped.metadata == full.metadata


def test_default_timestamps_come_from_the_clock(tmp_path: Path) -> None:
    now = iter([10.0, 10.05, 10.1])
    with EpisodeWriter(tmp_path, 20.0, "test", background=False, monotonic=lambda: next(now)) as w:
        record(w, 3, seed=0)
    np.testing.assert_allclose(load_episode(tmp_path / episode_filename(0)).timestamp, [0.0, 0.05, 0.1])


def test_indices_continue_and_empty_or_discarded_episodes_reuse_theirs(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test") as w:
        record(w, 2, 0)
        w.begin_episode()
        assert w.end_episode() is None  # nothing recorded, nothing written
        w.begin_episode()
        w.add_step(observation(np.random.default_rng(0)), np.zeros(5))
        w.discard_episode()
        record(w, 2, 1)
    with EpisodeWriter(tmp_path, 20.0, "test") as w:
        assert w.next_index == 2
        record(w, 2, 2)
    assert episode_indices(tmp_path) == [0, 1, 2]


def test_inconsistent_steps_are_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path, 20.0, "test", background=False) as w:
        w.begin_episode()
        w.add_step(observation(rng), np.zeros(5), timestamp=1.0)
        with pytest.raises(ValueError):
            w.add_step(observation(rng), np.zeros(5), timestamp=0.5)  # time went backwards
        with pytest.raises(ValueError):
            w.add_step({"other": np.zeros(1)}, np.zeros(5), timestamp=2.0)
        with pytest.raises(ValueError):
            w.add_step(observation(rng), np.zeros(4), timestamp=2.0)


CRASHING_RECORDER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from gato_ros.gato.data import EpisodeWriter
    directory = sys.argv[1]
    writer = EpisodeWriter(directory, 20.0, "crash-test", background=False)
    rng = np.random.default_rng(0)
    for episode in range(2):
        writer.begin_episode(task="t", seed=episode)
        for _ in range(3):
            writer.add_step({"q": rng.normal(size=3)}, rng.normal(size=5))
        writer.end_episode()
    writer.begin_episode(task="t", seed=2)  # the episode in progress when the recorder dies
    writer.add_step({"q": rng.normal(size=3)}, rng.normal(size=5))
    # a write interrupted half-way leaves a truncated temp file behind
    with open(os.path.join(directory, ".episode_000002.npz.partial"), "wb") as f:
        f.write(b"PK\\x03\\x04 truncated")
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_crash_loses_only_the_episode_in_progress(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_RECORDER, str(tmp_path)], capture_output=True, timeout=120
    )
    assert result.returncode == -9, result.stderr.decode()
    assert (tmp_path / ".episode_000002.npz.partial").exists()
    dataset = EpisodeDataset(tmp_path)
    assert len(dataset) == 2 and dataset.episode_indices == [0, 1]  # the temp file is not an episode
    assert len(dataset[1]) == 3
    # the lock died with the process: a new recorder starts, cleans up, and continues at index 2
    with EpisodeWriter(tmp_path, 20.0, "crash-test", background=False) as writer:
        assert writer.next_index == 2
        assert not (tmp_path / ".episode_000002.npz.partial").exists()
        writer.begin_episode(task="t")
        writer.add_step({"q": np.zeros(3)}, np.zeros(5))
        writer.end_episode()
    assert episode_indices(tmp_path) == [0, 1, 2]
    assert EpisodeDataset(tmp_path).total_steps == 7


def test_one_writer_per_directory(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, 20.0, "a"), pytest.raises(RuntimeError):
        EpisodeWriter(tmp_path, 20.0, "b")
    with EpisodeWriter(tmp_path, 20.0, "c"):  # released on close
        pass


def test_dataset_skips_unreadable_files_and_filters_failures(tmp_path: Path, caplog) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test") as w:
        record(w, 2, 0)  # succeeds on its last step
        w.begin_episode(task="x")
        w.add_step(observation(np.random.default_rng(1)), np.zeros(5), success=False)
        w.end_episode()  # a failure
    (tmp_path / episode_filename(7)).write_bytes(b"not a zip file")
    (tmp_path / "notes.txt").write_text("ignored")
    dataset = EpisodeDataset(tmp_path)
    assert dataset.episode_indices == [0, 1]
    assert "unreadable" in caplog.text
    assert EpisodeDataset(tmp_path, successful_only=True).episode_indices == [0]
    with pytest.raises(FileNotFoundError):
        EpisodeDataset(tmp_path / "missing")


def _rewrite_member(path: Path, name: str, value: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as npz:
        members = {key: npz[key] for key in npz.files}
    members[name] = value
    np.savez(path, **members)


@pytest.mark.parametrize(
    ("member", "bad", "message"),
    [
        ("action", lambda a: a.astype(str), "action must be"),
        ("action", lambda a: a.astype(np.int64), "action must be"),
        ("action", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(np.float32),
         "action holds NaN"),
        ("obs/sawyer/joints/angle", lambda a: a.astype(np.float16), "must be float32 or float64"),
        ("obs/basket_front_left/pixels", lambda a: a.astype(np.float32), "must be (T, H, W, C) uint8"),
        ("success", lambda a: a.astype(np.int8), "success must be bool"),
    ],
)  # fmt: skip
def test_malformed_episode_files_are_refused_in_one_line(tmp_path: Path, member: str, bad, message) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test", background=False, image_codec="raw") as writer:
        path = record(writer, 4, seed=1)
    assert path is not None and len(load_episode(path)) == 4
    with np.load(path, allow_pickle=False) as npz:
        original = npz[member]
    _rewrite_member(path, member, bad(original))
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        load_episode(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("member", "bad", "message"),
    [
        ("frames/basket_front_left/pixels/offsets", lambda a: a[:-1], "do not partition"),
        ("frames/basket_front_left/pixels/shape", lambda a: a[:2], "frame shape"),
    ],
)
def test_malformed_encoded_frames_are_refused_in_one_line(tmp_path: Path, member: str, bad, message) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test", background=False) as writer:
        path = record(writer, 4, seed=1)
    with np.load(path, allow_pickle=False) as npz:
        original = npz[member]
    _rewrite_member(path, member, bad(original))
    with pytest.raises(ValueError, match=message) as refused:
        load_episode(path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    with EpisodeWriter(tmp_path, 20.0, "test", background=False) as writer:
        path = record(writer, 2, seed=1)
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["metadata"]))
    _rewrite_member(path, "metadata", np.asarray(json.dumps({**meta, "format_version": 99})))
    with pytest.raises(ValueError, match="format version 99"):
        load_episode(path)
