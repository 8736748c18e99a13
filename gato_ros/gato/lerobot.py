"""LeRobotDataset v3.0 export and import: the project's episodes in the format LeRobot's tools read.

Layout written (LeRobot's ``CODEBASE_VERSION = "v3.0"``; episodes share files, meta/ says where each is)::

    meta/info.json                     fps, features (dtype, shape, names), path templates, totals
    meta/stats.json                    per feature: min, max, mean, std, count (images: per channel, 0..1)
    meta/tasks.parquet                 task text (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet
                                       per episode: length, tasks, its rows in data/, its span in each video,
                                       per-episode stats, ``gato/metadata`` (this project's JSON, verbatim)
    data/chunk-000/file-000.parquet    per frame: every non-image feature, timestamp, frame/episode/task index
    videos/observation.images.<camera>/chunk-000/file-000.mp4
                                       the camera's frames, episodes back to back
    meta/gato_ros.json                 how each feature maps back to an observation key (shape, dtype): the
                                       import restores the episodes (camera frames up to the codec's loss)

Features: every observation key ``a/b`` becomes ``observation.a.b`` (a camera's ``<name>/pixels`` becomes
the video ``observation.images.<name>``), flattened to a float32 vector; ``observation.state`` is all
non-image keys concatenated (what LeRobot's policies take); ``action``; ``next.reward``, ``next.success``,
``next.done``.
``timestamp`` is ``frame_index / fps`` (LeRobot finds a video frame by it); the recorded stamps are not kept.

The import reads any v3.0 dataset (its own exports losslessly, others with camera ``observation.images.X``
-> ``X/pixels`` and ``observation.a.b`` -> ``a/b``) into an episode directory a data mixture can use.
Only pyarrow and PyAV: no LeRobot, pandas or Hugging Face ``datasets`` needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gato_ros.gato.data import PIXELS_SUFFIX, Episode

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
KEY_MAP_PATH = "meta/gato_ros.json"
IMAGES_PREFIX = "observation.images."
STATE_FEATURE = "observation.state"
METADATA_COLUMN = "gato/metadata"
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
MB = 1024 * 1024


class LeRobotFormatError(ValueError):
    """A dataset that is not LeRobotDataset v3.0, or not one this reader understands."""


@dataclass(frozen=True)
class LeRobotSettings:
    """How an export is written (``export.lerobot`` in the config)."""

    fps: float
    robot_type: str
    action_names: tuple[str, ...] = ()
    video_codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    crf: int = 18
    gop: int = 2
    chunks_size: int = 1000
    data_file_size_mb: float = 100.0
    video_file_size_mb: float = 500.0

    @classmethod
    def from_config(cls, cfg: Any) -> LeRobotSettings:
        section = cfg.export.lerobot
        settings = cls(
            fps=float(cfg.control.rate_hz),
            robot_type=str(section.robot_type),
            action_names=tuple(str(n) for n in cfg.control.action_names),
            video_codec=str(section.video_codec),
            pix_fmt=str(section.pix_fmt),
            crf=int(section.crf),
            gop=int(section.gop),
            chunks_size=int(section.chunks_size),
            data_file_size_mb=float(section.data_file_size_mb),
            video_file_size_mb=float(section.video_file_size_mb),
        )
        for name in ("fps", "chunks_size", "data_file_size_mb", "video_file_size_mb", "gop"):
            value = getattr(settings, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"export.lerobot.{name} must be positive, got {value}")
        return settings


def feature_name(key: str) -> str:
    """LeRobot's feature name of observation ``key`` (no '/' allowed in feature names)."""
    if key.endswith(PIXELS_SUFFIX):
        return IMAGES_PREFIX + key[: -len(PIXELS_SUFFIX)].replace("/", ".")
    return "observation." + key.replace("/", ".")


def observation_key(feature: str) -> str:
    """The inverse of `feature_name` for datasets without a key map."""
    if feature.startswith(IMAGES_PREFIX):
        return feature[len(IMAGES_PREFIX) :].replace(".", "/") + PIXELS_SUFFIX
    return feature.removeprefix("observation.").replace(".", "/")


@dataclass
class _FileSlot:
    """The chunk/file index of the file being filled, advanced once it is full."""

    chunks_size: int
    chunk_index: int = 0
    file_index: int = 0

    def advance(self) -> None:
        self.file_index += 1
        if self.file_index >= self.chunks_size:
            self.chunk_index, self.file_index = self.chunk_index + 1, 0

    def path(self, template: str, **keys: Any) -> str:
        return template.format(chunk_index=self.chunk_index, file_index=self.file_index, **keys)


class _VideoWriter:
    """One camera's mp4 files: episodes appended back to back, a new file once one passes its size limit."""

    def __init__(self, root: Path, video_key: str, settings: LeRobotSettings) -> None:
        self.root, self.video_key, self.settings = root, video_key, settings
        self.slot = _FileSlot(settings.chunks_size)
        self.container: Any = None
        self.stream: Any = None
        self.frames_in_file = 0
        self.bytes_in_file = 0  # encoded so far (an encoder with lookahead holds some back: then approximate)

    def _open(self, height: int, width: int) -> None:
        from fractions import Fraction

        import av

        s = self.settings
        path = self.root / self.slot.path(VIDEO_PATH, video_key=self.video_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        rate = Fraction(s.fps).limit_denominator(1000)
        self.stream = self.container.add_stream(s.video_codec, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, s.pix_fmt
        self.stream.time_base = 1 / rate
        options = {"g": str(s.gop), "crf": str(s.crf)}
        if s.video_codec == "libx264":
            # no lookahead or B-frames: each frame's packet comes out at once, so the file's size is known
            # at every episode's end (the roll-over test), and presentation order is decode order
            options["tune"] = "zerolatency"
        self.stream.options = options
        self.frames_in_file = 0
        self.bytes_in_file = 0

    def append(self, frames: Any) -> tuple[int, int, float, float]:
        """Encode an episode's frames; returns (chunk, file, from_timestamp, to_timestamp)."""
        import av

        if self.container is not None and self.bytes_in_file > self.settings.video_file_size_mb * MB:
            self.close()
            self.slot.advance()
        first = np.asarray(frames[0])
        if self.container is None:
            self._open(int(first.shape[0]), int(first.shape[1]))
        start = self.frames_in_file
        for t in range(len(frames)):
            image = np.ascontiguousarray(np.asarray(frames[t], dtype=np.uint8))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames_in_file
            self.frames_in_file += 1
            for packet in self.stream.encode(frame):
                self.bytes_in_file += packet.size
                self.container.mux(packet)
        fps = self.settings.fps
        return self.slot.chunk_index, self.slot.file_index, start / fps, self.frames_in_file / fps

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None


def _stats(values: np.ndarray) -> dict[str, list]:
    """min, max, mean, std, count over axis 0 (LeRobot's stats keys)."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "count": [int(values.shape[0])],
    }


@dataclass
class _ChannelMoments:
    """Per-channel pixel statistics (values in 0..1) accumulated over frames: an episode's, then merged
    into the dataset's (LeRobot's image stats have shape (3, 1, 1))."""

    total: np.ndarray = field(default_factory=lambda: np.zeros(3))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(3))
    low: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))
    high: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))
    pixels: int = 0
    frames: int = 0

    @classmethod
    def of(cls, frames: Any) -> _ChannelMoments:
        moments = cls()
        for t in range(len(frames)):
            image = np.asarray(frames[t], dtype=np.float64).reshape(-1, 3) / 255.0
            moments.total += image.sum(axis=0)
            moments.squares += (image**2).sum(axis=0)
            moments.low = np.minimum(moments.low, image.min(axis=0))
            moments.high = np.maximum(moments.high, image.max(axis=0))
            moments.pixels += image.shape[0]
            moments.frames += 1
        return moments

    def merge(self, other: _ChannelMoments) -> None:
        self.total += other.total
        self.squares += other.squares
        self.low, self.high = np.minimum(self.low, other.low), np.maximum(self.high, other.high)
        self.pixels += other.pixels
        self.frames += other.frames

    def stats(self) -> dict[str, list]:
        mean = self.total / max(self.pixels, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.pixels, 1) - mean**2, 0.0))
        stats = {"min": self.low, "max": self.high, "mean": mean, "std": std}
        channels = {key: value.reshape(3, 1, 1).tolist() for key, value in stats.items()}
        return {**channels, "count": [self.frames]}


@dataclass
class ExportSummary:
    root: Path
    episodes: int = 0
    frames: int = 0
    skipped: int = 0
    bytes_by_kind: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        sizes = ", ".join(f"{kind} {size / 1e6:.2f} MB" for kind, size in sorted(self.bytes_by_kind.items()))
        return (
            f"{self.episodes} episodes, {self.frames} frames -> {self.root} ({sizes}); {self.skipped} skipped"
        )


def _pandas_index_metadata(index: str, columns: list[tuple[str, str, str]]) -> bytes:
    """The schema metadata pandas writes, so ``pd.read_parquet`` restores ``index`` as the index (LeRobot
    looks task texts up by the tasks table's index)."""
    return json.dumps(
        {
            "index_columns": [index],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": name,
                    "field_name": name,
                    "pandas_type": pandas_type,
                    "numpy_type": numpy_type,
                    "metadata": None,
                }
                for name, pandas_type, numpy_type in columns
            ],
            "creator": {"library": "pyarrow", "version": __import__("pyarrow").__version__},
            "pandas_version": "2.2.3",
        }
    ).encode()


def export_lerobot(episodes: Iterable[Episode], root: str | Path, settings: LeRobotSettings) -> ExportSummary:
    """Write ``episodes`` as a LeRobotDataset v3.0 under ``root`` (which must not hold files yet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: export into a new directory")
    root.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(root)
    tasks: dict[str, int] = {}
    features: dict[str, dict[str, Any]] = {}
    key_map: dict[str, dict[str, Any]] = {}
    videos: dict[str, _VideoWriter] = {}
    image_moments: dict[str, _ChannelMoments] = {}
    data_rows: dict[str, list[Any]] = {}
    data_slot, data_bytes = _FileSlot(settings.chunks_size), 0
    episode_rows: list[dict[str, Any]] = []
    all_columns: dict[str, list[np.ndarray]] = {}
    state_keys: list[str] = []

    def flush_data() -> None:
        nonlocal data_rows, data_bytes
        if not data_rows:
            return
        path = root / data_slot.path(DATA_PATH)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({name: pa.concat_arrays(parts) for name, parts in data_rows.items()}), path)
        data_rows, data_bytes = {}, 0
        data_slot.advance()

    for episode in episodes:
        length = len(episode)
        if length == 0:
            summary.skipped += 1
            continue
        image_keys = sorted(k for k in episode.observations if k.endswith(PIXELS_SUFFIX))
        vector_keys = sorted(k for k in episode.observations if not k.endswith(PIXELS_SUFFIX))
        if not features:  # the first episode fixes the schema
            state_keys = vector_keys
            names: list[str] = []
            for key in vector_keys:
                values = np.asarray(episode.observations[key])
                shape = values.shape[1:]
                size = int(np.prod(shape)) if shape else 1
                element_names = [key] if size == 1 and not shape else [f"{key}[{i}]" for i in range(size)]
                features[feature_name(key)] = {"dtype": "float32", "shape": [size], "names": element_names}
                key_map[feature_name(key)] = {"key": key, "shape": list(shape), "dtype": str(values.dtype)}
                names += element_names
            features[STATE_FEATURE] = {"dtype": "float32", "shape": [len(names)], "names": names}
            for key in image_keys:
                height, width, channels = np.asarray(episode.observations[key][0]).shape
                name = feature_name(key)
                video_info = {
                    "video.height": height, "video.width": width, "video.codec": settings.video_codec,
                    "video.pix_fmt": settings.pix_fmt, "video.is_depth_map": False, "video.fps": settings.fps,
                    "video.channels": channels, "has_audio": False,
                }  # fmt: skip
                features[name] = {
                    "dtype": "video",
                    "shape": [height, width, channels],
                    "names": ["height", "width", "channels"],
                    "info": video_info,
                }
                key_map[name] = {"key": key, "shape": [height, width, channels], "dtype": "uint8"}
                videos[name] = _VideoWriter(root, name, settings)
            action_size = int(np.asarray(episode.action).shape[1])
            action_names = list(settings.action_names)
            if len(action_names) != action_size:
                action_names = [f"action[{i}]" for i in range(action_size)]
            features["action"] = {"dtype": "float32", "shape": [action_size], "names": action_names}
            features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
            features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
            features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
            features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
            for name in INDEX_FEATURES[1:]:
                features[name] = {"dtype": "int64", "shape": [1], "names": None}
        elif vector_keys != state_keys or [feature_name(k) for k in image_keys] != sorted(videos):
            raise ValueError(
                f"episode {episode.metadata.get('episode_index')} has other observation keys than the first "
                f"({vector_keys + image_keys}): one export holds one schema"
            )

        episode_index = summary.episodes
        task = episode.task or "unknown task"
        task_index = tasks.setdefault(task, len(tasks))
        start = summary.frames
        columns: dict[str, np.ndarray] = {}
        for key in state_keys:
            columns[feature_name(key)] = np.asarray(episode.observations[key], dtype=np.float32).reshape(
                length, -1
            )
        state_parts = [columns[feature_name(k)] for k in state_keys]
        columns[STATE_FEATURE] = (
            np.concatenate(state_parts, axis=1) if state_parts else np.zeros((length, 0), np.float32)
        )
        columns["action"] = np.asarray(episode.action, dtype=np.float32).reshape(length, -1)
        columns["next.reward"] = np.asarray(episode.reward, dtype=np.float32)
        columns["next.success"] = np.asarray(episode.success, dtype=bool)
        done = np.zeros(length, dtype=bool)
        done[-1] = True
        columns["next.done"] = done
        frame_index = np.arange(length, dtype=np.int64)
        columns["timestamp"] = (frame_index / settings.fps).astype(np.float32)
        columns["frame_index"] = frame_index
        columns["episode_index"] = np.full(length, episode_index, dtype=np.int64)
        columns["index"] = start + frame_index
        columns["task_index"] = np.full(length, task_index, dtype=np.int64)

        row: dict[str, Any] = {
            "episode_index": episode_index,
            "tasks": [task],
            "length": length,
            "data/chunk_index": data_slot.chunk_index,
            "data/file_index": data_slot.file_index,
            "dataset_from_index": start,
            "dataset_to_index": start + length,
        }
        for name, writer in videos.items():
            frames = episode.observations[key_map[name]["key"]]
            chunk, file, begin, end = writer.append(frames)
            row |= {
                f"videos/{name}/chunk_index": chunk,
                f"videos/{name}/file_index": file,
                f"videos/{name}/from_timestamp": begin,
                f"videos/{name}/to_timestamp": end,
            }
            moments = _ChannelMoments.of(frames)
            row[f"stats/{name}"] = moments.stats()
            image_moments.setdefault(name, _ChannelMoments()).merge(moments)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for name, values in columns.items():
            if name not in INDEX_FEATURES:
                row[f"stats/{name}"] = _stats(values.reshape(length, -1))
            all_columns.setdefault(name, []).append(values)
        row[METADATA_COLUMN] = json.dumps(episode.metadata, default=str)
        episode_rows.append(row)

        for name, values in columns.items():
            if values.ndim == 2:
                column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            else:
                column = pa.array(values)
            data_rows.setdefault(name, []).append(column)
            data_bytes += values.nbytes
        summary.episodes += 1
        summary.frames += length
        if data_bytes > settings.data_file_size_mb * MB:
            flush_data()

    flush_data()
    for writer in videos.values():
        writer.close()
    if not summary.episodes:
        raise ValueError("no episodes to export")

    # per-episode stats go in nested columns, flattened to stats/<feature>/<stat> like LeRobot's own
    flat_rows = []
    for row in episode_rows:
        flat = {k: v for k, v in row.items() if not k.startswith("stats/")}
        for k, v in row.items():
            if k.startswith("stats/"):
                flat |= {f"{k}/{stat}": value for stat, value in v.items()}
        flat_rows.append(flat)
    episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(flat_rows), episodes_path)

    ordered = sorted(tasks, key=tasks.get)
    tasks_table = pa.table(
        {
            "task_index": pa.array([tasks[t] for t in ordered], pa.int64()),
            "task": pa.array(ordered, pa.string()),
        }
    )
    tasks_table = tasks_table.replace_schema_metadata(
        {
            b"pandas": _pandas_index_metadata(
                "task", [("task_index", "int64", "int64"), ("task", "unicode", "object")]
            )
        }
    )
    pq.write_table(tasks_table, root / TASKS_PATH)

    stats = {
        name: _stats(np.concatenate(parts).reshape(summary.frames, -1))
        for name, parts in all_columns.items()
        if name not in INDEX_FEATURES
    }
    for name, moments in image_moments.items():
        stats[name] = moments.stats()
    (root / STATS_PATH).write_text(json.dumps(stats, indent=2))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": settings.robot_type,
        "total_episodes": summary.episodes,
        "total_frames": summary.frames,
        "total_tasks": len(tasks),
        "chunks_size": settings.chunks_size,
        "data_files_size_in_mb": settings.data_file_size_mb,
        "video_files_size_in_mb": settings.video_file_size_mb,
        "fps": settings.fps,
        "splits": {"train": f"0:{summary.episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    (root / KEY_MAP_PATH).write_text(
        json.dumps({"format": 1, "features": key_map, "state": state_keys}, indent=2)
    )
    for path in root.rglob("*"):
        if path.is_file():
            kind = path.relative_to(root).parts[0]
            summary.bytes_by_kind[kind] = summary.bytes_by_kind.get(kind, 0) + path.stat().st_size
    return summary


# -- import -------------------------------------------------------------------------------------------


def read_info(root: str | Path) -> dict[str, Any]:
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise LeRobotFormatError(f"{root}: no {INFO_PATH}: not a LeRobotDataset")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise LeRobotFormatError(
            f"{root}: codebase_version {version!r}; this reader reads v3.x (LeRobot's "
            "own converter upgrades v2.1 datasets)"
        )
    return info


def _decode_frames(path: Path, begin_s: float, count: int, fps: float) -> np.ndarray:
    """``count`` RGB frames of ``path`` from ``begin_s`` on (by presentation time)."""
    import av

    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = round(begin_s * fps)
        container.seek(max(int(begin_s / stream.time_base) - 1, 0), stream=stream, backward=True)
        for frame in container.decode(stream):
            index = round(float(frame.pts * stream.time_base) * fps)
            if index < first:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if len(frames) != count:
        raise LeRobotFormatError(
            f"{path}: {len(frames)} frames from {begin_s:.3f} s, the episode has {count}"
        )
    return np.stack(frames)


def read_lerobot(root: str | Path) -> Iterator[Episode]:
    """The episodes of a LeRobotDataset v3.x under ``root``, in episode order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = read_info(root)
    fps = float(info["fps"])
    key_map_path = root / KEY_MAP_PATH
    key_map = json.loads(key_map_path.read_text())["features"] if key_map_path.is_file() else {}
    features = info["features"]
    wanted = [n for n, f in features.items() if n.startswith("observation.") and n != STATE_FEATURE]
    if not wanted:  # only a state vector: it is the observation
        wanted = [n for n in features if n == STATE_FEATURE]
    tasks_table = pq.read_table(root / TASKS_PATH).to_pylist()
    task_text = {
        int(r["task_index"]): str(r.get("task", r.get("__index_level_0__", ""))) for r in tasks_table
    }
    episode_rows = []
    for path in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        columns = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
        episode_rows += pq.read_table(path, columns=columns).to_pylist()
    episode_rows.sort(key=lambda r: int(r["episode_index"]))
    data_cache: dict[str, Any] = {}
    for row in episode_rows:
        data_file = root / info["data_path"].format(
            chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"])
        )
        if str(data_file) not in data_cache:
            data_cache.clear()
            data_cache[str(data_file)] = pq.read_table(data_file)
        table = data_cache[str(data_file)]
        index = np.asarray(table.column("index"))
        begin, end = int(row["dataset_from_index"]), int(row["dataset_to_index"])
        rows = np.nonzero((index >= begin) & (index < end))[0]
        length = int(row["length"])
        if len(rows) != length:
            raise LeRobotFormatError(
                f"{data_file}: {len(rows)} rows for episode {row['episode_index']}, length {length}"
            )
        part = table.take(rows)

        def column(name: str, part: Any = part, length: int = length) -> np.ndarray:
            values = part.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
                values = values.flatten()
            return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(length, -1)

        observations: dict[str, np.ndarray] = {}
        for name in wanted:
            spec = features[name]
            mapped = key_map.get(name, {})
            key = mapped.get("key", observation_key(name))
            if spec["dtype"] in ("video", "image"):
                if spec["dtype"] == "image":
                    raise LeRobotFormatError(
                        f"{name}: image features (PNG in parquet) are not read; "
                        "LeRobot's datasets store cameras as video"
                    )
                video = root / info["video_path"].format(
                    video_key=name,
                    chunk_index=int(row[f"videos/{name}/chunk_index"]),
                    file_index=int(row[f"videos/{name}/file_index"]),
                )
                observations[key] = _decode_frames(
                    video, float(row[f"videos/{name}/from_timestamp"]), length, fps
                )
            else:
                values = column(name)
                shape = mapped.get("shape", list(values.shape[1:]))
                observations[key] = values.astype(mapped.get("dtype", "float32")).reshape(length, *shape)
        metadata = json.loads(row[METADATA_COLUMN]) if row.get(METADATA_COLUMN) else {}
        tasks = row.get("tasks") or [task_text.get(int(column("task_index")[0, 0]), "")]
        metadata.setdefault("task", str(tasks[0]))
        names = part.column_names
        reward = (
            column("next.reward")[:, 0].astype(np.float32)
            if "next.reward" in names
            else np.zeros(length, np.float32)
        )
        success = (
            column("next.success")[:, 0].astype(bool) if "next.success" in names else np.zeros(length, bool)
        )
        yield Episode(
            observations=observations,
            action=column("action").astype(np.float32),
            timestamp=np.arange(length, dtype=np.float64) / fps,
            reward=reward,
            success=success,
            metadata=metadata,
        )
