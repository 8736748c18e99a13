"""LeRobotDataset v3.0 export and import.

The export is checked with an independent reader (pyarrow and PyAV directly, against LeRobot's published
v3.0 layout), never with this project's reader; the import is checked on its own exports (round trip) and
on a dataset written here by hand as another tool would.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gato_ros import cli
from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset, EpisodeWriter
from gato_ros.gato.lerobot import LeRobotSettings, export_lerobot

TASK = "stack the red object on the blue object"
CAMERA = "basket_front_left/pixels"
JOINTS = "sawyer/joints/angle"
GRASP = "sawyer/gripper/grasp"
FPS = 20.0


def frame(episode: int, t: int) -> np.ndarray:
    """A frame whose content tells its episode and step apart after lossy coding (flat colour + a block)."""
    image = np.full((48, 64, 3), 40, np.uint8)
    image[..., 0] = 30 + 40 * episode
    image[..., 1] = (5 * t) % 200
    image[8:24, 4 + t : 20 + t] = 230
    return image


def write_episodes(directory: Path, lengths: list[int], source: str = "twin/teleop") -> EpisodeDataset:
    rng = np.random.default_rng(0)
    with EpisodeWriter(directory, FPS, source) as writer:
        for e, length in enumerate(lengths):
            writer.begin_episode(task=TASK, seed=100 + e, triplet=e + 1)
            for t in range(length):
                observation = {JOINTS: rng.normal(size=7), CAMERA: frame(e, t), GRASP: np.float32(t % 3 == 0)}
                writer.add_step(
                    observation, rng.uniform(-1, 1, 5), float(t == length - 1), t == length - 1, t / FPS
                )
            writer.end_episode(success=e != 1)
    return EpisodeDataset(directory)


def settings(**changes) -> LeRobotSettings:
    return LeRobotSettings(**{**vars(LeRobotSettings.from_config(load_config())), **changes})


def decode_all(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            (float(f.pts * stream.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(stream)
        ]


def test_export_follows_the_lerobot_v3_layout(tmp_path) -> None:
    source = write_episodes(tmp_path / "takes", [12, 9, 15])
    root = tmp_path / "lerobot"
    summary = export_lerobot(source, root, settings())
    assert (summary.episodes, summary.frames) == (3, 36)

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "sawyer"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 36, 1)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert all("/" not in name for name in features)  # LeRobot refuses '/' in feature names
    camera = "observation.images.basket_front_left"
    assert features[camera]["dtype"] == "video" and features[camera]["shape"] == [48, 64, 3]
    assert features[camera]["names"] == ["height", "width", "channels"]
    assert features["action"] == {
        "dtype": "float32",
        "shape": [5],
        "names": ["vx", "vy", "vz", "wz", "gripper"],
    }
    assert features["observation.state"]["shape"] == [8] and len(features["observation.state"]["names"]) == 8
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[name]["shape"] == [1]

    # data: one row per frame, every non-video feature a column of its declared type and width
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert data.num_rows == 36
    non_video = {n for n, f in features.items() if f["dtype"] != "video"}
    assert set(data.column_names) == non_video
    assert data.schema.field("action").type == pa.list_(pa.float32(), 5)
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 8)
    assert data.schema.field("episode_index").type == pa.int64()
    rows = data.to_pylist()
    assert [r["index"] for r in rows] == list(range(36))
    assert [r["episode_index"] for r in rows] == [0] * 12 + [1] * 9 + [2] * 15
    assert [r["frame_index"] for r in rows[12:21]] == list(range(9))
    assert rows[13]["timestamp"] == pytest.approx(1 / FPS)
    first = source[1]
    np.testing.assert_allclose(rows[12]["action"], first.action[0], atol=1e-6)
    np.testing.assert_allclose(
        rows[12]["observation.sawyer.joints.angle"], first.observations[JOINTS][0], atol=1e-6
    )
    assert [r["next.done"] for r in rows[12:21]] == [False] * 8 + [True]

    # tasks: the text is the pandas index (LeRobot looks tasks up by it)
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "task": TASK}]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    # episodes: where each one's rows and video frames are, its stats, and this project's metadata
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == [0, 1, 2]
    assert [e["length"] for e in episodes] == [12, 9, 15] and episodes[0]["tasks"] == [TASK]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 12),
        (12, 21),
        (21, 36),
    ]
    assert json.loads(episodes[1]["gato/metadata"])["seed"] == 101
    assert json.loads(episodes[1]["gato/metadata"])["success"] is False
    assert np.asarray(episodes[2]["stats/action/mean"]).shape == (5,)
    assert np.asarray(episodes[2][f"stats/{camera}/mean"]).shape == (3, 1, 1)

    # video: every frame once, each episode's frames where its [from, to) timestamps say
    video = root / info["video_path"].format(video_key=camera, chunk_index=0, file_index=0)
    decoded = decode_all(video)
    assert len(decoded) == 36
    for e, row in enumerate(episodes):
        begin, end = row[f"videos/{camera}/from_timestamp"], row[f"videos/{camera}/to_timestamp"]
        frames = [image for stamp, image in decoded if begin - 1e-4 <= stamp < end - 1e-4]
        assert len(frames) == row["length"]
        for t in (0, row["length"] - 1):
            error = np.abs(frames[t].astype(int) - frame(e, t).astype(int)).mean()
            assert error < 3.0, (e, t, error)

    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [36] and len(stats["action"]["mean"]) == 5
    assert np.asarray(stats[camera]["mean"]).shape == (3, 1, 1)
    red = np.mean([frame(e, t)[..., 0].mean() for e, n in enumerate([12, 9, 15]) for t in range(n)]) / 255
    assert stats[camera]["mean"][0][0][0] == pytest.approx(red, abs=1e-6)


def test_a_round_trip_through_the_cli_gives_the_episodes_back(tmp_path, capsys) -> None:
    source = write_episodes(tmp_path / "takes", [10, 7])
    exported, imported = tmp_path / "lerobot", tmp_path / "imported"
    assert cli.main(["export", "--format", "lerobot", "--out", str(exported), str(tmp_path / "takes")]) == 0
    assert "2 episodes, 17 frames" in capsys.readouterr().out
    assert cli.main(["import", "--format", "lerobot", "--out", str(imported), str(exported)]) == 0
    assert "training.data.mixture.imported=" in capsys.readouterr().out
    back = EpisodeDataset(imported)
    assert len(back) == 2
    for original, episode in zip(source, back, strict=True):
        assert len(episode) == len(original) and episode.task == TASK
        assert episode.metadata["seed"] == original.metadata["seed"]
        assert episode.metadata["source"] == "twin/teleop" and episode.succeeded == original.succeeded
        assert episode.observations[JOINTS].dtype == np.float64
        np.testing.assert_allclose(episode.observations[JOINTS], original.observations[JOINTS], atol=1e-6)
        np.testing.assert_allclose(episode.observations[GRASP], original.observations[GRASP])
        np.testing.assert_allclose(episode.action, original.action)
        np.testing.assert_array_equal(episode.success, original.success)
        pixels = np.abs(
            np.asarray(episode.observations[CAMERA][:], int)
            - np.asarray(original.observations[CAMERA][:], int)
        )
        assert pixels.mean() < 3.0
    # a second export into the same directory is refused, not merged
    assert cli.main(["export", "--out", str(exported), str(tmp_path / "takes")]) != 0


def test_files_roll_over_at_their_size_limit_and_are_read_back(tmp_path) -> None:
    source = write_episodes(tmp_path / "takes", [8, 8, 8])
    root = tmp_path / "lerobot"
    tiny = settings(data_file_size_mb=1e-4, video_file_size_mb=1e-4)  # every episode starts new files
    export_lerobot(source, root, tiny)
    assert len(list(root.glob("data/chunk-000/*.parquet"))) == 3
    assert len(list(root.glob("videos/observation.images.basket_front_left/chunk-000/*.mp4"))) == 3
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["data/file_index"] for e in episodes] == [0, 1, 2]
    assert [e["videos/observation.images.basket_front_left/from_timestamp"] for e in episodes] == [0.0] * 3
    imported = tmp_path / "imported"
    assert cli.main(["import", "--out", str(imported), str(root)]) == 0
    back = EpisodeDataset(imported)
    for original, episode in zip(source, back, strict=True):
        np.testing.assert_allclose(episode.action, original.action)
        error = np.abs(
            np.asarray(episode.observations[CAMERA][:], int)
            - np.asarray(original.observations[CAMERA][:], int)
        )
        assert error.mean() < 3.0


def test_a_foreign_dataset_without_a_key_map_imports_by_feature_name(tmp_path) -> None:
    """A v3.0 dataset as LeRobot writes one for another robot: a state vector, actions, no gato_ros map."""
    root = tmp_path / "foreign"
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    (root / "data/chunk-000").mkdir(parents=True)
    features = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        **{
            n: {"dtype": "int64", "shape": [1], "names": None}
            for n in ("frame_index", "episode_index", "index", "task_index")
        },
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    info = {"codebase_version": "v3.0", "fps": 10, "features": features, "robot_type": "so100",
            "data_path": data_path, "video_path": None}  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info))
    state = np.arange(15, dtype=np.float32).reshape(5, 3)
    action = -np.arange(10, dtype=np.float32).reshape(5, 2)
    pq.write_table(
        pa.table({
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), 3),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 2),
            "timestamp": pa.array(np.arange(5, dtype=np.float32) / 10),
            "frame_index": pa.array([0, 1, 2, 0, 1], pa.int64()),
            "episode_index": pa.array([0, 0, 0, 1, 1], pa.int64()),
            "index": pa.array(range(5), pa.int64()),
            "task_index": pa.array([0] * 5, pa.int64()),
        }),
        root / "data/chunk-000/file-000.parquet",
    )  # fmt: skip
    pq.write_table(pa.table({"task_index": [0], "task": ["pick the cube"]}), root / "meta/tasks.parquet")
    pq.write_table(
        pa.Table.from_pylist([
            {"episode_index": i, "tasks": ["pick the cube"], "length": n, "data/chunk_index": 0,
             "data/file_index": 0, "dataset_from_index": begin, "dataset_to_index": begin + n}
            for i, (begin, n) in enumerate([(0, 3), (3, 2)])
        ]),
        root / "meta/episodes/chunk-000/file-000.parquet",
    )  # fmt: skip
    imported = tmp_path / "imported"
    assert cli.main(["import", "--out", str(imported), str(root), "export.import_source=lerobot/so100"]) == 0
    back = EpisodeDataset(imported)
    assert [len(e) for e in back] == [3, 2]
    assert back[1].metadata["source"] == "lerobot/so100" and back[1].task == "pick the cube"
    np.testing.assert_array_equal(back[1].observations["state"], state[3:])
    np.testing.assert_array_equal(back[0].action, action[:3])


def test_a_dataset_of_another_version_is_refused_in_one_line(tmp_path, capsys) -> None:
    (tmp_path / "old/meta").mkdir(parents=True)
    (tmp_path / "old/meta/info.json").write_text(
        json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}})
    )
    assert cli.main(["import", "--out", str(tmp_path / "x"), str(tmp_path / "old")]) != 0
    assert "v2.1" in capsys.readouterr().err
