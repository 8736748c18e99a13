"""`gato-ros collect [key=value ...]`: record scripted-expert episodes in the twin for training (no ROS).

Episode k of the collection runs with seed ``collection.first_seed + k`` in a pool of
``collection.workers`` processes, each with its own twin (and offscreen renderer when
``collection.render``). Successful episodes go into the dataset directory in the episode format of
`gato_ros.gato.data` (timestamps are the twin's simulated time of each observation); failed or diverged
expert episodes are counted but kept out of it (``collection.keep_failed=true`` writes them too, marked
unsuccessful, which the training mixture's ``successful_only`` filter drops).

Resumable: every attempted seed is appended to ``collection.jsonl`` in the dataset directory once its
episode is on disk, and a restarted collection skips the seeds found there or in the episodes' metadata.
Interrupting it loses only the episodes in flight.

Corrective data (DART): ``collection.noise_scale > 0`` executes the expert's action plus seeded Gaussian
noise while recording the expert's clean action for every visited state (source
``twin/scripted_expert_dart``; each episode's metadata holds its ``noise_scale``).

DAgger: ``collection.policy=<checkpoint>`` rolls that checkpoint out in the twin in-process (the expert's
action executed instead with probability ``collection.beta`` per step) and records the expert's action at
every visited state (source ``twin/dagger``; ``policy``, ``beta`` and ``round`` per episode). Rounds
aggregate by collecting into the same dataset with the next ``collection.round`` and a fresh
``collection.first_seed`` range.

Observations as a real cell has them: ``collection.object_pose_source=cameras`` records (and feeds the
learner) ``objects/pose`` and ``objects/shape`` fitted to the rendered policy cameras
(`gato_ros.perception.FittedPoseObservation`, what the policy node reads with
``policy.object_pose_source=cameras``) instead of the twin's exact poses; the expert still labels from the
twin's state, so a state policy learns to act on estimated poses. Frames are recorded only with
``collection.render=true``; steps before every object was seen are executed by the expert, not recorded.

Examples:
  gato-ros collect collection.episodes=300                        # images + proprio + object poses
  gato-ros collect collection.render=false collection.dataset=rgb_stacking_sim_state \\
      'training.data.mixture.rgb_stacking_sim_state={path: rgb_stacking_sim_state, weight: 1.0}'
  gato-ros collect collection.noise_scale=0.3 collection.dataset=rgb_stacking_sim_dart   # DART
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gato_ros.tools.workers import die_with_parent

LEDGER_NAME = "collection.jsonl"
SOURCE = "twin/scripted_expert"
DART_SOURCE = "twin/scripted_expert_dart"  # executed: expert + noise; recorded label: the expert's action
DAGGER_SOURCE = "twin/dagger"  # executed: a trained policy's action (expert's with prob. beta); label: expert
NOISE_STREAM = 0xDA27  # the noise generator's stream, apart from the twin's per-seed reset draws
DAGGER_STREAM = 0xDA66  # the DAgger expert/learner coin's stream
OBJECT_POSE_SOURCES = ("twin", "cameras")  # collection.object_pose_source: what `objects/pose` records


@dataclass
class ExpertEpisode:
    """One expert rollout, as a worker returns it to the writing process."""

    seed: int
    object_ids: tuple[str, str, str]
    success: bool
    physics_unstable: bool
    sim_seconds: float
    wall_seconds: float
    observations: dict[str, list[np.ndarray]] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.actions)

    def ledger_record(self, written: str | None) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "objects": list(self.object_ids),
            "success": self.success,
            "physics_unstable": self.physics_unstable,
            "steps": self.steps,
            "sim_seconds": round(self.sim_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "episode_file": written,
        }


def collection_config(cfg: DictConfig) -> DictConfig:
    """The config a collection worker runs with: the collection's objects, episode mode and render switch,
    and the privileged object poses recorded (a state-based policy trains on them; image policies ignore
    them)."""
    ccfg = cfg.collection
    cfg = cfg.copy()
    OmegaConf.update(cfg, "twin.objects", str(ccfg.objects))
    # poses fitted to the cameras need the cameras rendered, recorded or not
    OmegaConf.update(cfg, "twin.render", bool(ccfg.render) or str(ccfg.object_pose_source) == "cameras")
    OmegaConf.update(cfg, "twin.episode.mode", str(ccfg.episode_mode))
    OmegaConf.update(cfg, "twin.privileged_observations", True)
    return cfg


def collection_source(ccfg: DictConfig) -> str:
    """The dataset source tag: what executed the actions (the labels are always the expert's)."""
    if ccfg.policy:
        return DAGGER_SOURCE
    return DART_SOURCE if float(ccfg.noise_scale) > 0.0 else SOURCE


def dagger_metadata(ccfg: DictConfig) -> dict[str, Any]:
    if not ccfg.policy:
        return {}
    return {"policy": str(ccfg.policy), "beta": float(ccfg.beta), "round": int(ccfg.round)}


def output_directory(cfg: DictConfig) -> Path:
    from gato_ros.gato.data import dataset_directory

    ccfg = cfg.collection
    if ccfg.out_dir:
        return Path(str(ccfg.out_dir))
    return dataset_directory(cfg, str(ccfg.dataset))


# -- workers ---------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(plain_cfg: dict[str, Any]) -> None:
    """Per process: one twin and one expert, reused across that worker's episodes."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if multiprocessing.parent_process() is not None:  # a pool worker: Ctrl-C is the parent's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with_parent()
    from gato_ros.twin import ScriptedExpert, StackingTwin

    cfg = OmegaConf.create(plain_cfg)
    _WORKER["twin"] = StackingTwin(cfg)
    _WORKER["expert"] = ScriptedExpert(cfg)
    _WORKER["noise"] = ActionNoise(cfg)
    _WORKER["learner"] = LearnerPolicy(cfg) if cfg.collection.policy else None
    _WORKER["fitted"] = None
    if str(cfg.collection.object_pose_source) == "cameras":
        from gato_ros.perception.object_poses import FittedPoseObservation
        from gato_ros.twin.shape import shape_version

        keep_pixels = bool(cfg.collection.render)
        _WORKER["fitted"] = FittedPoseObservation(cfg, shape_version(cfg), keep_pixels=keep_pixels)


class ActionNoise:
    """DART (Laskey et al., 2017): Gaussian noise added to the expert's velocity commands before they are
    executed, so the data visits the states a slightly wrong policy reaches; the recorded label stays the
    expert's clean action for that state (the expert is a feedback policy). `collection.noise_scale` is the
    noise's standard deviation as a fraction of each velocity bound (0: the expert's own actions); the
    gripper command is never perturbed. Seeded per episode, apart from the twin's own draws."""

    def __init__(self, cfg: DictConfig) -> None:
        self.scale = float(cfg.collection.noise_scale)
        if not np.isfinite(self.scale) or self.scale < 0.0:
            raise ValueError(f"collection.noise_scale must be >= 0, got {self.scale}")
        low, high = np.asarray(cfg.control.action_low, float), np.asarray(cfg.control.action_high, float)
        self.low, self.high = low, high
        self.std = self.scale * 0.5 * (high - low)
        self.std[-1] = 0.0  # the gripper: bang-bang, left as the expert commands it
        self.rng = np.random.default_rng()

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, NOISE_STREAM])

    def __call__(self, action: np.ndarray) -> np.ndarray:
        if self.scale == 0.0:
            return action
        return np.clip(action + self.rng.normal(size=action.shape) * self.std, self.low, self.high)


class LearnerPolicy:
    """DAgger (Ross et al., 2011): a trained checkpoint (`collection.policy`) drives the twin in-process;
    at each step the expert's action is executed instead with probability `collection.beta`. The recorded
    label is always the expert's action for the visited state. Seeded per episode."""

    def __init__(self, cfg: DictConfig) -> None:
        import torch

        from gato_ros.gato.checkpoint import load_policy
        from gato_ros.gato.decoder import ActionDecoder
        from gato_ros.gato.images import fit_observation, policy_image_size
        from gato_ros.gato.tokenizer import ObservationTokenizer
        from gato_ros.twin.shape import SHAPE_KEY, shape_version

        self.beta = float(cfg.collection.beta)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"collection.beta must be in [0, 1], got {self.beta}")
        torch.set_num_threads(1)  # one process per core: the workers share the machine
        checkpoint = load_policy(str(cfg.collection.policy), "cpu")
        tokenizer = ObservationTokenizer(checkpoint.cfg)
        if any(key.endswith("/pixels") for key in tokenizer.observation_keys) and not cfg.twin.render:
            raise ValueError(
                f"collection.policy={cfg.collection.policy} reads camera images: set collection.render=true"
            )
        if SHAPE_KEY in tokenizer.observation_keys and not cfg.twin.get("shape_observations", False):
            raise ValueError(
                f"collection.policy={cfg.collection.policy} reads {SHAPE_KEY}: "
                "set twin.shape_observations=true (+experiment=state_shape_policy)"
            )
        learner_version = shape_version(checkpoint.cfg)
        if SHAPE_KEY in tokenizer.observation_keys and learner_version != shape_version(cfg):
            raise ValueError(
                f"collection.policy={cfg.collection.policy} was trained on {SHAPE_KEY} version "
                f"{learner_version}: set twin.shape_version={learner_version} (the episodes can be given "
                "the current version later: scripts/add_shape_features.py)"
            )
        self.decoder = ActionDecoder(checkpoint.model, tokenizer, cfg)
        self.image_size = policy_image_size(checkpoint.cfg)  # the twin may render at another size
        self.fit_observation = fit_observation
        self.rng = np.random.default_rng()

    def reset(self, seed: int) -> None:
        self.decoder.reset()
        self.rng = np.random.default_rng([seed, DAGGER_STREAM])

    def __call__(self, observation: dict[str, np.ndarray], expert_action: np.ndarray) -> np.ndarray:
        # The learner sees every step (its context must hold the whole history), acted on or not.
        seen = self.fit_observation(observation, *self.image_size)
        action = np.asarray(self.decoder.act(seen), dtype=np.float64)
        return expert_action if self.rng.random() < self.beta else action


def _rollout(seed: int) -> ExpertEpisode:
    from gato_ros.twin.rollout import run_episode

    twin, expert, noise, learner = _WORKER["twin"], _WORKER["expert"], _WORKER["noise"], _WORKER["learner"]
    fitted = _WORKER["fitted"]
    episode = ExpertEpisode(seed, ("", "", ""), False, False, 0.0, 0.0)
    label: list[np.ndarray] = []  # the expert's action for the current state (what is recorded)
    seen: list[dict[str, np.ndarray] | None] = [None]  # what the learner reads and the episode records

    def act(twin_: Any, observation: dict[str, np.ndarray]) -> np.ndarray:
        clean = np.asarray(expert.act(twin_), dtype=np.float64)
        label[:] = [clean]
        seen[0] = observation if fitted is None else fitted(observation, twin_.object_geometries())
        if seen[0] is None:  # an object not seen yet: the expert acts, nothing is recorded
            return noise(clean)
        return noise(clean if learner is None else learner(seen[0], clean))

    def record(observation: dict[str, np.ndarray], action: np.ndarray, step: Any) -> None:
        del observation, action  # recorded: what the learner read, and the expert's clean action
        recorded = seen[0]
        if recorded is None:
            return
        if not episode.observations:
            episode.observations = {key: [] for key in recorded}
        for key, value in recorded.items():
            episode.observations[key].append(value)
        episode.actions.append(label[0].astype(np.float32))
        # The observation was taken one control period before the step's time.
        episode.timestamps.append(float(step.info["time"]) - twin.control_period)
        episode.successes.append(bool(step.success))

    start = time.perf_counter()
    expert.reset()
    noise.reset(seed)
    if learner is not None:
        learner.reset(seed)
    if fitted is not None:
        fitted.reset()
    result = run_episode(twin, act, seed, observer=record)
    episode.object_ids = result.object_ids
    episode.success = bool(result.success)
    episode.physics_unstable = bool(result.physics_unstable)
    episode.sim_seconds = float(result.seconds)
    episode.wall_seconds = time.perf_counter() - start
    return episode


def _close_worker() -> None:
    twin = _WORKER.pop("twin", None)
    if twin is not None:
        twin.close()


# -- the collection ----------------------------------------------------------------------------------------
def done_seeds(directory: Path) -> set[int]:
    """Seeds already attempted: from the ledger and from the metadata of the episodes on disk."""
    from gato_ros.gato.data import EpisodeDataset

    seeds: set[int] = set()
    ledger = directory / LEDGER_NAME
    if ledger.is_file():
        for line in ledger.read_text().splitlines():
            try:
                seeds.add(int(json.loads(line)["seed"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that seed is simply collected again
    if directory.is_dir():
        seeds.update(int(m["seed"]) for m in EpisodeDataset(directory).metadata if "seed" in m)
    return seeds


def ledger_summary(directory: Path) -> dict[str, Any]:
    """Counts over every attempt in the ledger (this run and earlier ones)."""
    records = []
    ledger = directory / LEDGER_NAME
    if ledger.is_file():
        for line in ledger.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    successes = [r for r in records if r.get("success")]
    return {
        "attempted": len(records),
        "successful": len(successes),
        "failed": len(records) - len(successes),
        "physics_unstable": sum(bool(r.get("physics_unstable")) for r in records),
        "steps_written": sum(int(r["steps"]) for r in records if r.get("episode_file")),
    }


def _episodes(pending: list[int], workers: int, plain_cfg: dict[str, Any]) -> Iterator[ExpertEpisode]:
    """Rollouts of `pending` seeds, in completion order: in this process (workers <= 1) or a spawn pool
    (MuJoCo's GL contexts do not survive fork) with a bounded number of episodes in flight."""
    if workers <= 1:
        _init_worker(plain_cfg)
        try:
            for seed in pending:
                yield _rollout(seed)
        finally:
            _close_worker()
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(plain_cfg,)
    ) as pool:
        queue = iter(pending)
        in_flight: set[Future[ExpertEpisode]] = set()
        try:
            for seed in queue:
                in_flight.add(pool.submit(_rollout, seed))
                if len(in_flight) >= 2 * workers:
                    break
            while in_flight:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        in_flight.add(pool.submit(_rollout, nxt))
        finally:
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def check_collection_config(ccfg: DictConfig) -> None:
    """Counts and scales where they are read: a nonsense value is a one-line ValueError, not a no-op."""
    if int(ccfg.episodes) < 0:
        raise ValueError(f"collection.episodes must be >= 0, got {ccfg.episodes}")
    if int(ccfg.workers) < 1:
        raise ValueError(f"collection.workers must be >= 1, got {ccfg.workers}")
    if int(ccfg.first_seed) < 0:
        raise ValueError(f"collection.first_seed must be >= 0, got {ccfg.first_seed}")
    noise = float(ccfg.noise_scale)
    if not np.isfinite(noise) or noise < 0.0:
        raise ValueError(f"collection.noise_scale must be >= 0, got {ccfg.noise_scale}")
    if not 0.0 <= float(ccfg.beta) <= 1.0:
        raise ValueError(f"collection.beta must be in [0, 1], got {ccfg.beta}")
    if str(ccfg.object_pose_source) not in OBJECT_POSE_SOURCES:
        raise ValueError(
            f"collection.object_pose_source must be one of {OBJECT_POSE_SOURCES}, "
            f"got {ccfg.object_pose_source!r}"
        )
    from gato_ros.gato.data import FrameCodec

    try:
        FrameCodec(str(ccfg.image_codec), quality=int(ccfg.jpeg_quality))
    except ValueError as err:
        raise ValueError(f"collection.image_codec/jpeg_quality: {err}") from None


def collect(cfg: DictConfig) -> dict[str, Any]:
    """Run the collection of `cfg.collection`; returns its summary (also printed by `main`)."""
    from gato_ros.gato.data import EpisodeWriter, FrameCodec

    ccfg = cfg.collection
    check_collection_config(ccfg)
    directory = output_directory(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    first, count = int(ccfg.first_seed), int(ccfg.episodes)
    skip = done_seeds(directory)
    pending = [s for s in range(first, first + count) if s not in skip]
    wcfg = collection_config(cfg)
    plain = OmegaConf.to_container(wcfg, resolve=True)
    assert isinstance(plain, dict)
    progress = None
    if bool(ccfg.progress):
        from tqdm import tqdm

        progress = tqdm(
            total=count, initial=count - len(pending), desc="collect", unit="ep", dynamic_ncols=True
        )
    run = {"attempted": 0, "successful": 0, "steps": 0, "sim_seconds": 0.0}
    start = time.perf_counter()
    writer = EpisodeWriter(
        directory,
        control_rate_hz=float(cfg.control.rate_hz),
        source=collection_source(ccfg),
        clock="twin_sim_time",
        compress=bool(ccfg.compress),
        image_codec=FrameCodec(str(ccfg.image_codec), quality=int(ccfg.jpeg_quality)),
        background=False,  # the ledger line follows the file, so a resumed run never skips a lost episode
    )
    try:
        with (directory / LEDGER_NAME).open("a") as ledger:
            for episode in _episodes(pending, int(ccfg.workers), plain):
                written = None
                if episode.success or bool(ccfg.keep_failed):
                    written = _write_episode(writer, episode, wcfg)
                ledger.write(json.dumps(episode.ledger_record(written)) + "\n")
                ledger.flush()
                os.fsync(ledger.fileno())
                run["attempted"] += 1
                run["successful"] += int(episode.success)
                run["steps"] += episode.steps
                run["sim_seconds"] += episode.sim_seconds
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(success=f"{run['successful']}/{run['attempted']}")
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - start
    summary = {
        "directory": str(directory),
        "this_run": {
            **run,
            "wall_seconds": round(wall, 2),
            "episodes_per_hour": round(3600 * run["attempted"] / wall, 1) if wall > 0 else None,
            "steps_per_second": round(run["steps"] / wall, 1) if wall > 0 else None,
            "sim_speedup": round(run["sim_seconds"] / wall, 2) if wall > 0 else None,
        },
        "all_runs": ledger_summary(directory),
    }
    return summary


def _write_episode(writer: Any, episode: ExpertEpisode, cfg: DictConfig) -> str | None:
    from gato_ros.gato.data import STACKING_TASK
    from gato_ros.twin import EXPERT_VERSION, TWIN_VERSION
    from gato_ros.twin.shape import shape_metadata, shape_version

    triplet = int(cfg.twin.triplet) if str(cfg.twin.objects) == "triplet" else None
    writer.begin_episode(
        task=STACKING_TASK,
        seed=episode.seed,
        triplet=triplet,
        objects=str(cfg.twin.objects),
        object_ids=list(episode.object_ids),
        physics_unstable=episode.physics_unstable,
        twin_version=TWIN_VERSION,
        episode_mode=str(cfg.twin.episode.mode),
        noise_scale=float(cfg.collection.noise_scale),
        expert="feedback" if bool(cfg.twin.expert.feedback) else "staged",
        expert_version=EXPERT_VERSION,
        **(shape_metadata(shape_version(cfg)) if cfg.twin.get("shape_observations", False) else {}),
        **dagger_metadata(cfg.collection),
        object_pose_source=str(cfg.collection.object_pose_source),
    )
    for t in range(episode.steps):
        writer.add_step(
            {key: values[t] for key, values in episode.observations.items()},
            episode.actions[t],
            reward=float(episode.successes[t]),
            success=episode.successes[t],
            timestamp=episode.timestamps[t],
        )
    path = writer.end_episode(success=episode.success)
    return None if path is None else path.name


def main(argv: list[str] | None = None) -> int:
    from gato_ros.config import load_config

    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = collect(cfg)
    except ValueError as err:  # a refused setting or input: one line, no traceback
        print(f"gato-ros collect: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        total = ledger_summary(output_directory(cfg))
        print(
            f"\ninterrupted: {total['successful']} successful of {total['attempted']} attempted episodes "
            "are on disk; run the same command again to continue"
        )
        return 130
    run, total = summary["this_run"], summary["all_runs"]
    failed_fate = "written, marked failed" if bool(cfg.collection.keep_failed) else "kept out"
    print(
        f"collected {run['attempted']} episodes, {run['successful']} successful "
        f"({run['steps']} steps) in {run['wall_seconds']:.0f} s: {run['episodes_per_hour']} episodes/h, "
        f"{run['steps_per_second']} steps/s, {run['sim_speedup']}x real time"
    )
    print(
        f"{summary['directory']}: {total['successful']} successful of {total['attempted']} attempted "
        f"({total['failed']} failed, {total['physics_unstable']} diverged: {failed_fate}), "
        f"{total['steps_written']} steps written"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
