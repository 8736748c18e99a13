"""The in-training success check: a checkpoint drives a few lock-step twin episodes on fixed seeds, in
the training process, without ROS. Behaviour cloning's loss says little about whether a policy stacks
(a lower loss can come with a policy that closes early), so `gato-ros train` picks ``checkpoints/best`` by
this success rate, not by loss, and draws the success curve beside the loss curve.

It is a proxy for `gato-ros eval`, never a replacement: the same twin, seeds and episode rule, but the
decoded action goes straight to the twin (which clips it to the action bounds) instead of through the
command node's limits and the ROS transport, and frames are fitted to the policy's image size in-process.
Results go to ``<run>/success.jsonl``, one line per check; ``success.png`` plots them. A resumed run
appends to the same log and keeps the best rate it had.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gato_ros.evaluation.stats import wilson_interval
from gato_ros.gato.curves import SUCCESS_LOG_NAME, SUCCESS_PLOT_NAME, plot_success_log, read_log

if TYPE_CHECKING:
    from gato_ros.evaluation.setbacks import EpisodeExplanation

log = logging.getLogger(__name__)

BEST_DIR = "best"  # under the run's checkpoints/: a copy of the best checkpoint so far, never pruned


@dataclass
class CheckResult:
    """One check of one checkpoint."""

    step: int
    successes: int
    episodes: int
    seeds: list[int]
    outcomes: list[bool]
    errors: int  # episodes ended by a decoder error (non-finite logits): failures
    wall_seconds: float
    objects: str
    data_episodes: int | None = None  # size of the training data, for success-vs-data curves
    data_steps: int | None = None
    interval: tuple[float, float] = field(default=(0.0, 0.0))

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.rate, "interval": list(self.interval)}


def read_success_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The checks recorded in a run directory (newest per step), in step order; none if there is no log."""
    path = Path(run_dir) / SUCCESS_LOG_NAME
    return read_log(path) if path.is_file() else []


def check_settings(tcfg: DictConfig) -> DictConfig | None:
    """``training.success_check`` when it is on (``every`` > 0), else None; nonsense is a ValueError."""
    node = tcfg.get("success_check")
    if node is None or int(node.get("every", 0)) <= 0:
        return None
    if int(node.episodes) < 1:
        raise ValueError(f"training.success_check.episodes must be >= 1, got {node.episodes}")
    if int(node.every) % int(tcfg.checkpoint_every):
        print(
            f"note: training.success_check.every ({node.every}) is not a multiple of "
            f"training.checkpoint_every ({tcfg.checkpoint_every}): checks run only at checkpoints whose "
            "step it divides, and at the end"
        )
    return node


class SuccessCheck:
    """Runs the check on checkpoints of one training run and keeps ``checkpoints/best`` up to date.

    Called by the trainer after every checkpoint it saves (`__call__`); it checks at multiples of
    ``training.success_check.every`` and at the run's last step. A failing check (no renderer, a bad
    checkpoint) is logged and skipped: it must never cost the training run.
    """

    def __init__(
        self, cfg: DictConfig, data_episodes: int | None = None, data_steps: int | None = None
    ) -> None:
        settings = check_settings(cfg.training)
        if settings is None:
            raise ValueError("training.success_check.every is 0: the success check is off")
        self.cfg = cfg
        self.settings = settings
        self.every = int(settings.every)
        self.total_steps = int(cfg.training.steps)
        self.seeds = [int(settings.first_seed) + i for i in range(int(settings.episodes))]
        self.run_dir = Path(str(cfg.training.out_dir))
        self.data_episodes, self.data_steps = data_episodes, data_steps
        self.runner: CheckpointRunner | None = None
        self.best_rate = self._best_so_far()

    def _best_so_far(self) -> float:
        """A resumed run keeps the best of the checks it already made."""
        rates = [float(r["success_rate"]) for r in read_success_log(self.run_dir)]
        return max(rates) if rates else -math.inf

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total_steps

    def __call__(self, step: int, checkpoint: Path) -> CheckResult | None:
        if not self.due(step):
            return None
        try:
            result = self.run(step, checkpoint)
        except Exception as err:  # a check must never cost the training run
            log.warning("success check at step %d failed: %r", step, err)
            print(f"warning: success check at step {step} failed: {err!r}")
            return None
        self._record(result, checkpoint)
        return result

    # -- the episodes ------------------------------------------------------------------------------
    def run(self, step: int, checkpoint: Path) -> CheckResult:
        """The check's episodes, one after another, on a twin kept for the run (built on first use)."""
        start = time.perf_counter()
        runner = self.runner or CheckpointRunner(self.cfg, checkpoint, self.settings.objects)
        if self.runner is not None:
            runner.load(checkpoint)
        self.runner = runner
        outcomes, errors = runner.episodes(self.seeds, str(self.settings.episode_mode))
        successes = sum(outcomes)
        return CheckResult(
            step=step,
            successes=successes,
            episodes=len(outcomes),
            seeds=list(self.seeds),
            outcomes=outcomes,
            errors=errors,
            wall_seconds=round(time.perf_counter() - start, 2),
            objects=str(self.settings.objects),
            data_episodes=self.data_episodes,
            data_steps=self.data_steps,
            interval=wilson_interval(successes, len(outcomes)),
        )

    # -- bookkeeping -------------------------------------------------------------------------------
    def _record(self, result: CheckResult, checkpoint: Path) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / SUCCESS_LOG_NAME).open("a") as handle:
            handle.write(json.dumps(result.record()) + "\n")
        # ties go to the later checkpoint: the same success after more training
        if result.rate >= self.best_rate:
            self.best_rate = result.rate
            copy_checkpoint(checkpoint, self.run_dir / "checkpoints" / BEST_DIR)
        lo, hi = result.interval
        print(
            f"success check at step {result.step}: {result.successes}/{result.episodes} "
            f"({100 * result.rate:.0f} %, 95 % CI {100 * lo:.0f}-{100 * hi:.0f} %) "
            f"on {result.objects} objects, seeds {self.seeds[0]}..{self.seeds[-1]}; "
            f"best so far {100 * self.best_rate:.0f} % "
            f"({result.wall_seconds:.0f} s)"
        )
        try:
            plot_success_log(self.run_dir / SUCCESS_LOG_NAME, title=str(self.cfg.model.name))
        except Exception as err:  # the log itself is intact
            print(f"warning: could not plot {self.run_dir / SUCCESS_PLOT_NAME}: {err!r}")

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


def group_overrides(group: int | str) -> dict[str, Any]:
    """Twin settings of an object group: a test triplet 1..5 or ``train`` / ``heldout``."""
    text = str(group)
    if text.isdigit():  # twin.objects=triplet selects the fixed test triplet twin.triplet
        return {"twin.objects": "triplet", "twin.triplet": int(text)}
    return {"twin.objects": text}


class CheckpointRunner:
    """A checkpoint (or the scripted expert, ``checkpoint=None``) driving lock-step twin episodes of one
    object group, in this process, no ROS: the machinery of the success check and `gato-ros check`.
    With `check.command_limits` each action passes the command node's limits first (`CommandLimitedStep`)."""

    def __init__(
        self,
        cfg: DictConfig,
        checkpoint: Path | str | None,
        group: int | str,
        expert_dims: Sequence[int] = (),
        policy: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
        explain: bool = False,
    ) -> None:
        """`expert_dims`: action dimensions a shadow scripted expert supplies instead of the checkpoint
        (`check.expert_dims`, a diagnosis: which dimensions keep the policy from stacking). `policy`: an
        observation -> action callable driving instead of a checkpoint (a state-only baseline).
        `explain`: the shadow expert's stage and label at every step of every episode are kept, summed up
        per episode in `explanations` (`check.explain`: where and how a policy's episodes fail)."""
        self.cfg = cfg.copy()
        for key, value in group_overrides(group).items():
            OmegaConf.update(self.cfg, key, value)
        self.group = group
        self.twin: Any = None
        self.decoder: Any = None
        self.expert: Any = None
        self.image_size = (int(cfg.cameras.width), int(cfg.cameras.height))
        self.needs_images = False
        self.reads_images = False
        # `policy.object_pose_source=cameras`: a state checkpoint reads poses fitted to the rendered policy
        # cameras (gato_ros.perception), as the policy node does then, instead of the twin's own
        self.poses_from_cameras = False
        self._fitted: Any = None  # FittedPoseObservation
        self.policy = policy
        self.expert_dims = sorted({int(d) for d in expert_dims})
        self.command_limits = bool(cfg.check.command_limits)
        self.explain = bool(explain)
        self.explanations: list[EpisodeExplanation] = []
        self._trace: list[tuple[str, np.ndarray, np.ndarray]] = []
        action_dim = len(cfg.control.action_low)
        if any(not 0 <= d < action_dim for d in self.expert_dims):
            raise ValueError(f"expert_dims must lie in 0..{action_dim - 1}, got {list(expert_dims)}")
        if (checkpoint is None and policy is None) or self.expert_dims or self.explain:
            from gato_ros.twin import ScriptedExpert

            self.expert = ScriptedExpert(self.cfg)
        if checkpoint is not None:
            self.load(checkpoint)

    def load(self, checkpoint: Path | str) -> None:
        """Switch to another checkpoint (of the same observation layout) on the same twin."""
        import torch

        from gato_ros.gato.checkpoint import load_policy, model_dtype, resolve_checkpoint
        from gato_ros.gato.decoder import ActionDecoder
        from gato_ros.gato.images import policy_image_size
        from gato_ros.gato.tokenizer import ObservationTokenizer
        from gato_ros.twin.shape import SHAPE_KEY, shape_version

        device = "cuda" if torch.cuda.is_available() and str(self.cfg.training.device) != "cpu" else "cpu"
        dtype = model_dtype(str(self.cfg.policy.get("dtype", "float32")))
        policy = load_policy(resolve_checkpoint(checkpoint), device, dtype)
        tokenizer = ObservationTokenizer(policy.cfg)
        self.decoder = ActionDecoder(policy.model, tokenizer, self.cfg)
        self.image_size = policy_image_size(policy.cfg)
        self.reads_images = any(k.endswith("/pixels") for k in tokenizer.observation_keys)
        self.poses_from_cameras = str(self.cfg.policy.get("object_pose_source", "topic")) == "cameras" and (
            "objects/pose" in tokenizer.observation_keys or SHAPE_KEY in tokenizer.observation_keys
        )
        self.needs_images = self.reads_images or self.poses_from_cameras
        # A checkpoint that reads the objects' shapes gets them from the twin (gato_ros/twin/shape.py).
        OmegaConf.update(self.cfg, "twin.shape_observations", SHAPE_KEY in tokenizer.observation_keys)
        OmegaConf.update(self.cfg, "twin.shape_version", shape_version(policy.cfg))

    def _twin(self, episode_mode: str) -> Any:
        if self.twin is None or bool(self.twin.render_images) != self.needs_images:
            from gato_ros.twin import StackingTwin

            os.environ.setdefault("MUJOCO_GL", "egl")
            if self.twin is not None:
                self.twin.close()
            OmegaConf.update(self.cfg, "twin.episode.mode", episode_mode)
            self.twin = StackingTwin(self.cfg, render=self.needs_images)
        return self.twin

    def episodes(self, seeds: list[int], episode_mode: str) -> tuple[list[bool], int]:
        """Success of each seed's episode, and how many ended on a decoder error (counted as failures)."""
        from gato_ros.evaluation.setbacks import EpisodeExplanation
        from gato_ros.gato.decoder import NonFiniteLogitsError
        from gato_ros.twin.rollout import CommandLimitedStep, run_episode

        twin = self._twin(episode_mode)
        stepper = (lambda twin: CommandLimitedStep(twin, self.cfg)) if self.command_limits else None
        outcomes, errors = [], 0
        for seed in seeds:
            if self.expert is not None:
                self.expert.reset()
            if self.decoder is not None:
                self.decoder.reset()
            if self._fitted is not None:  # each episode's objects, found from scratch
                self._fitted.reset()
            self._trace = []
            try:
                outcomes.append(bool(run_episode(twin, self._act, seed, stepper=stepper).success))
            except NonFiniteLogitsError as err:
                log.warning("%s, seed %d: %s", self.group, seed, err)
                outcomes.append(False)
                errors += 1
            if self.explain:
                stages = [stage for stage, _, _ in self._trace]
                actions = np.array([action for _, action, _ in self._trace])
                labels = np.array([label for _, _, label in self._trace])
                explanation = EpisodeExplanation.from_trace(seed, outcomes[-1], stages, actions, labels)
                self.explanations.append(explanation)
        return outcomes, errors

    def _act(self, twin: Any, observation: dict[str, np.ndarray]) -> np.ndarray:
        # The expert follows every state (feedback), so it can label or take over any dimension; asked
        # once per step.
        label = None
        if self.expert is not None:
            label = np.asarray(self.expert.act(twin), dtype=np.float64)
        if self.poses_from_cameras:
            observation = self._camera_poses(twin, observation)
            if observation is None:  # an object not seen yet: the policy node would hold (no action)
                return np.zeros(len(self.cfg.control.action_low))
        if self.policy is not None:
            action = np.array(self.policy(observation), dtype=np.float64)
        elif self.decoder is None:
            action = label.copy()
        else:
            from gato_ros.gato.images import fit_observation

            fitted = fit_observation(observation, *self.image_size)
            action = np.array(self.decoder.act(fitted), dtype=np.float64)
        if self.expert_dims:
            action[self.expert_dims] = label[self.expert_dims]
        if self.explain:
            self._trace.append((self.expert.stage.name, action.copy(), label))
        return action

    def _camera_poses(self, twin: Any, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The observation with ``objects/pose`` (and the shapes) fitted to its policy camera frames, or None
        while some object has not been seen."""
        from gato_ros.perception.object_poses import FittedPoseObservation
        from gato_ros.twin.shape import shape_version

        if self._fitted is None:
            self._fitted = FittedPoseObservation(self.cfg, shape_version(self.cfg), self.reads_images)
        return self._fitted(observation, twin.object_geometries())

    def close(self) -> None:
        if self.twin is not None:
            self.twin.close()
            self.twin = None


def copy_checkpoint(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of the checkpoint directory ``source``, atomically (a rename)."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
