"""Training of the Gato policy: masked NLL (eq. 2), AdamW + warmup/cosine, bf16 autocast, safetensors
checkpoints, exact resume, and DistributedDataParallel under `torchrun` with no code changes.

Determinism is per step, not per process: the batch of step s on rank r and the model's own randomness
(patch-position sampling, dropout) are seeded from (seed, rank, s). Resuming from step s therefore needs
only the weights, the optimizer state and s, and continues exactly as the uninterrupted run would.

The loss is normalised per target token: the summed NLL over all target tokens of the batch divided by
their count (under DDP each rank normalises by its own count and DDP averages the gradients).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from gato_ros.gato.batch import BATCH_FIELDS, TokenBatch
from gato_ros.gato.model import GatoModel, build_model

if TYPE_CHECKING:  # the loss/optimiser pieces need only torch (benchmarks/gpu_check.py uses them bare)
    from omegaconf import DictConfig

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"


# A batch source maps an optimizer step (and micro-batch index) to that step's batch, deterministically.
BatchSource = Callable[[int, int], TokenBatch]


# ---- loss -----------------------------------------------------------------------------------------
def masked_nll(model: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, float]:
    """NLL over target tokens summed with loss_mask's weights (1 for actions and text), divided by the
    weights' sum (the target count when all are 1); logits at t-1 predict token t.

    Calls the model's forward (so DDP hooks fire) with `loss_mask`, which makes it compute the head only
    at the target positions instead of over the whole [B, T, vocab] grid.
    """
    total, count = model(
        batch.tokens,
        batch.image_mask,
        batch.patches,
        batch.patch_pos,
        batch.obs_pos,
        loss_mask=batch.loss_mask,
    )
    return total / max(count, 1e-12), count


def sequence_nll(gato: GatoModel, batch: TokenBatch) -> tuple[torch.Tensor, float]:
    """The same loss from full logits: the reference the fast path is tested against."""
    logits = gato(batch.tokens, batch.image_mask, batch.patches, batch.patch_pos, batch.obs_pos)
    weights = batch.loss_mask[:, 1:].float()
    nll = F.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), batch.tokens[:, 1:].flatten(), reduction="none"
    ).view_as(weights)
    count = float(weights.sum())
    return (nll * weights).sum() / max(count, 1e-12), count


# ---- optimiser and schedule -----------------------------------------------------------------------
def lr_at(step: int, train_cfg: DictConfig) -> float:
    """Linear warmup 0 -> lr over warmup_steps, then cosine decay to lr * min_lr_ratio at `steps`."""
    peak, warmup, total = float(train_cfg.lr), int(train_cfg.warmup_steps), int(train_cfg.steps)
    floor = peak * float(train_cfg.min_lr_ratio)
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: GatoModel, weight_decay: float) -> list[dict[str, Any]]:
    """Decay Linear/Conv weight matrices; never biases, LayerNorm/GroupNorm, or embedding tables (the
    tied output head is the token table, so it is not decayed either)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and id(m.weight) not in embedding_ids
    }
    decay, no_decay = [], []
    for param in model.parameters():  # shared parameters appear once
        (decay if id(param) in decay_ids else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: GatoModel, train_cfg: DictConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, float(train_cfg.weight_decay)),
        lr=float(train_cfg.lr),
        betas=tuple(float(b) for b in train_cfg.betas),
        eps=float(train_cfg.eps),
        fused=device.type == "cuda",
    )


def check_training_config(tcfg: DictConfig) -> None:
    """The numbers of ``training.*`` where they are read: nonsense is a one-line ValueError before any
    data is opened, not a silent no-op or a NaN run."""
    counts = {
        "steps": 1, "batch_size": 1, "grad_accum_steps": 1, "sequence_length": 1, "log_every": 1,
        "checkpoint_every": 1, "keep_checkpoints": 1, "warmup_steps": 0,
    }  # fmt: skip
    for key, least in counts.items():
        value = tcfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"training.{key} must be an integer >= {least}, got {value!r}")
    lr = float(tcfg.get("lr"))
    if not (math.isfinite(lr) and lr >= 0.0):  # 0 freezes the weights (a dry run)
        raise ValueError(f"training.lr must be finite and >= 0, got {tcfg.get('lr')!r}")
    for key in ("grad_clip", "eps"):
        value = float(tcfg.get(key))
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"training.{key} must be finite and > 0, got {tcfg.get(key)!r}")
    for key, low, high in (("min_lr_ratio", 0.0, 1.0), ("weight_decay", 0.0, math.inf)):
        value = float(tcfg.get(key))
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"training.{key} must be in [{low}, {high}], got {tcfg.get(key)!r}")


# ---- devices, precision, processes --------------------------------------------------------------
@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def resolve_device(name: str, dist: DistContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # plain "cuda": this process's GPU under torchrun
        return torch.device(f"cuda:{dist.local_rank}")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA devices that support it (auto), always (bf16), or never (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if supported else None
    raise ValueError(f"training.precision must be auto, bf16 or fp32, not {precision!r}")


def step_seed(seed: int, rank: int, step: int, micro: int = 0) -> int:
    """A well-mixed 63-bit seed for one (rank, step, micro-batch): DistributedSampler-like per-rank data."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(2, dtype=np.uint64)[0] >> 1)


def batch_to(batch: TokenBatch, device: torch.device) -> TokenBatch:
    """Move a batch to `device`; any object with the token-layout fields becomes a TokenBatch there."""
    if isinstance(batch, TokenBatch):
        return batch.to(device, non_blocking=True)
    return TokenBatch(**{name: getattr(batch, name).to(device, non_blocking=True) for name in BATCH_FIELDS})


# ---- checkpoints in a run directory -----------------------------------------------------------------
def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step_{step:07d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def _write_latest(out_dir: Path, path: Path, keep: int) -> None:
    pointer = out_dir / CHECKPOINT_DIR / LATEST_FILE
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(path.name + "\n")
    os.replace(tmp, pointer)
    steps = sorted(p for p in pointer.parent.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


# ---- the loop ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    tokens_per_s: float = 0.0


def next_batch_key(step: int, micro: int, accum: int) -> tuple[int, int]:
    """The (step, micro) the trainer asks for after (step, micro), with `accum` micro-batches a step."""
    return (step, micro + 1) if micro + 1 < accum else (step + 1, 0)


class PrefetchedBatches:
    """A batch source that builds the next (step, micro) batch in a background thread while the model
    trains on the current one: the sampler's work (PNG decoding, augmentation, tokenizing: numpy and
    OpenCV, which release the GIL) overlaps the forward and backward pass instead of adding to it. A
    batch is a pure function of (step, micro), so prefetching changes no batch; the source is never
    called from two threads at once."""

    def __init__(self, source: BatchSource, accum: int, end: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.source, self.accum, self.end = source, accum, end
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gato-batch-prefetch")
        self.pending: tuple[tuple[int, int], Any] | None = None  # (key, Future)

    def __call__(self, step: int, micro: int) -> Any:
        pending, self.pending = self.pending, None
        batch = None
        if pending is not None:
            ready = pending[1].result()  # also when not the one asked for: never two calls at once
            if pending[0] == (step, micro):
                batch = ready
        if batch is None:
            batch = self.source(step, micro)
        following = next_batch_key(step, micro, self.accum)
        if following[0] < self.end:
            self.pending = (following, self.pool.submit(self.source, *following))
        return batch

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].cancel()
        self.pool.shutdown(wait=True)


# The batch source of a batch-building worker process (`ParallelBatches`), made once per process.
_WORKER_SOURCE: BatchSource | None = None


def _start_batch_worker(cfg: DictConfig, rank: int, world_size: int) -> None:
    global _WORKER_SOURCE
    torch.set_num_threads(1)  # one core per worker: they run side by side
    from gato_ros.gato import dataset

    _WORKER_SOURCE = dataset.make_batch_source(cfg, rank=rank, world_size=world_size)


def _build_batch(step: int, micro: int) -> dict[str, np.ndarray]:
    assert _WORKER_SOURCE is not None
    batch = _WORKER_SOURCE(step, micro)
    return {name: getattr(batch, name).numpy() for name in BATCH_FIELDS}  # plain arrays between processes


class ParallelBatches:
    """The dataset's batches built by `workers` spawned processes, up to two per worker ahead of the
    trainer: for a GPU that trains on a batch faster than one core builds it (a batch of 1,024 one-step
    state windows takes a CPU core ~0.2 s; image windows far longer). A batch is a pure function of
    (seed, rank, step, micro), so these are the batches the trainer's own process would build."""

    def __init__(
        self, cfg: DictConfig, dist: DistContext, accum: int, start: int, end: int, workers: int
    ) -> None:
        import multiprocessing

        self.accum, self.end, self.ahead = accum, end, 2 * workers
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA
        self.pool = context.Pool(workers, _start_batch_worker, (cfg, dist.rank, dist.world_size))
        self.pending: dict[tuple[int, int], Any] = {}  # (step, micro) -> AsyncResult
        self.next_key = (start, 0)

    def __call__(self, step: int, micro: int) -> TokenBatch:
        key = (step, micro)
        for old in [k for k in self.pending if k < key]:
            del self.pending[old]
        self.next_key = max(self.next_key, key)
        while len(self.pending) < self.ahead and self.next_key[0] < self.end:
            self.pending[self.next_key] = self.pool.apply_async(_build_batch, self.next_key)
            self.next_key = next_batch_key(*self.next_key, self.accum)
        job = self.pending.pop(key, None) or self.pool.apply_async(_build_batch, key)
        return TokenBatch(**{name: torch.from_numpy(array) for name, array in job.get().items()})

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def train(
    cfg: DictConfig,
    batch_source: BatchSource | None = None,
    *,
    vocab_size: int | None = None,
    model: GatoModel | None = None,
    stop_at: int | None = None,
    on_checkpoint: Callable[[int, Path], Any] | None = None,
) -> TrainResult:
    """Train `cfg.model` with `cfg.training`; batches from `batch_source(step, micro)` or, by default,
    from the episode mixture of `cfg.training.data`. Runs under torchrun (DDP) as well as plainly.

    `stop_at` ends this session early at that step, with a checkpoint, keeping the schedule of
    `training.steps` (for time-sliced or preemptible jobs; resume with `training.resume=auto`).
    `on_checkpoint(step, path)` runs on rank 0 after each checkpoint is saved (e.g. the success check of
    gato_ros/evaluation/success_check.py, which the core cannot import).
    """
    if cfg.training.get("init_from"):
        cfg = adopt_init_architecture(cfg)
    tcfg = cfg.training
    check_training_config(tcfg)
    dist = DistContext.from_env()
    if dist.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    device = resolve_device(str(tcfg.device), dist)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp_dtype = autocast_dtype(str(tcfg.precision), device)
    threads_before = torch.get_num_threads()
    if tcfg.get("num_threads"):
        torch.set_num_threads(int(tcfg.num_threads))
    try:
        return _train(
            cfg, tcfg, dist, device, amp_dtype, batch_source, vocab_size, model, stop_at, on_checkpoint
        )
    finally:
        torch.set_num_threads(threads_before)


def _train(
    cfg: DictConfig,
    tcfg: DictConfig,
    dist: DistContext,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    batch_source: BatchSource | None,
    vocab_size: int | None,
    model: GatoModel | None,
    stop_at: int | None,
    on_checkpoint: Callable[[int, Path], Any] | None = None,
) -> TrainResult:
    from gato_ros.gato.checkpoint import (  # needs safetensors
        load_training_state,
        resolve_checkpoint,
        save_checkpoint,
    )

    seed = int(tcfg.seed)
    out_dir = Path(str(tcfg.out_dir))

    torch.manual_seed(seed)  # identical initial weights on every rank
    gato = model if model is not None else build_model(cfg, vocab_size=vocab_size)
    gato.to(device).train()
    optimizer = make_optimizer(gato, tcfg, device)
    start = 0
    resume = tcfg.get("resume")
    if resume:
        path = latest_checkpoint(out_dir) if str(resume) == "auto" else Path(str(resume))
        if path is not None:
            start = load_training_state(path, gato, optimizer)
    if start == 0 and tcfg.get("init_from"):
        source = resolve_checkpoint(str(tcfg.init_from))
        initial_step = load_training_state(source, gato, optimizer=None)
        if dist.is_main:
            print(f"initialised from {source} (its step {initial_step}); fresh optimizer and schedule")
    net: nn.Module = gato
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            gato, device_ids=[device.index] if device.type == "cuda" else None
        )

    total_steps, accum = int(tcfg.steps), int(tcfg.grad_accum_steps)
    log_path = out_dir / "log.jsonl"
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    result = TrainResult(step=start)
    progress = None
    if dist.is_main and bool(tcfg.progress):
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    tokens_seen, t0 = 0, time.perf_counter()
    end = total_steps if stop_at is None else min(int(stop_at), total_steps)
    prefetched: PrefetchedBatches | ParallelBatches | None = None
    if batch_source is None:
        workers = int(tcfg.data.get("workers") or 0)
        if workers > 0:
            prefetched = batch_source = ParallelBatches(cfg, dist, accum, start, end, workers)
        else:
            batch_source = dataset_batch_source(cfg, dist)
    if prefetched is None and bool(tcfg.get("prefetch_batches", False)):
        prefetched = batch_source = PrefetchedBatches(batch_source, accum, end)
    try:
        for step in range(start, end):
            lr = lr_at(step, tcfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(accum):
                torch.manual_seed(step_seed(seed, dist.rank, step, micro))
                batch = batch_to(batch_source(step, micro), device)
                defer_sync = micro < accum - 1 and isinstance(net, nn.parallel.DistributedDataParallel)
                with net.no_sync() if defer_sync else contextlib.nullcontext():
                    with torch.autocast(
                        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ):
                        loss, _ = masked_nll(net, batch)
                    (loss / accum).backward()
                loss_sum += float(loss.detach()) / accum
                tokens_seen += batch.tokens.numel()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(gato.parameters(), float(tcfg.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(loss_sum)
            result.step = step + 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}")
            done = step + 1 == end
            if dist.is_main and ((step + 1) % int(tcfg.log_every) == 0 or done):
                elapsed = time.perf_counter() - t0
                result.tokens_per_s = tokens_seen * dist.world_size / max(elapsed, 1e-9)
                record = {
                    "step": step + 1,
                    "loss": loss_sum,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": result.tokens_per_s,
                    "time": time.time(),
                }
                with log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
            if dist.is_main and ((step + 1) % int(tcfg.checkpoint_every) == 0 or done):
                path = save_checkpoint(
                    checkpoint_path(out_dir, step + 1), gato, cfg, step=step + 1, optimizer=optimizer
                )
                _write_latest(out_dir, path, int(tcfg.keep_checkpoints))
                result.checkpoint = path
                if bool(tcfg.get("plot", True)):
                    _plot_curves(log_path, str(cfg.model.name))
                if on_checkpoint is not None:
                    on_checkpoint(step + 1, path)
    finally:
        if prefetched is not None:
            prefetched.close()
    if progress is not None:
        progress.close()
    if dist.world_size > 1:
        torch.distributed.barrier()
    return result


INIT_ADOPTED_GROUPS = ("model", "tokenizer")  # and the policy's image size, cameras.width/height


def adopt_init_architecture(cfg: DictConfig) -> DictConfig:
    """Fine-tuning (``training.init_from``): the run takes the starting checkpoint's model, tokenizer and
    image size, whatever the command line said, so its weights load and its observations mean the same,
    except the settings ``training.init_keep`` names (dotted keys the run deliberately changes, such as
    ``tokenizer.observation.privileged_frame``; the weights must still fit); returns a copy, and says
    which settings changed."""
    from omegaconf import OmegaConf

    from gato_ros.gato.checkpoint import read_checkpoint_config, resolve_checkpoint

    source = resolve_checkpoint(str(cfg.training.init_from))
    trained = OmegaConf.create(read_checkpoint_config(source)["config"])
    cfg = cfg.copy()
    missing = object()
    kept = {
        str(key): OmegaConf.select(cfg, str(key), default=missing)
        for key in cfg.training.get("init_keep") or []
    }
    for key, value in kept.items():
        if key.split(".")[0] not in INIT_ADOPTED_GROUPS or value is missing:
            raise ValueError(
                f"training.init_keep: {key!r} is not a setting of the adopted {INIT_ADOPTED_GROUPS} groups"
            )
    changed = []
    for group in INIT_ADOPTED_GROUPS:
        if OmegaConf.to_container(cfg[group], resolve=True) != OmegaConf.to_container(trained[group]):
            changed.append(group)
        OmegaConf.update(cfg, group, OmegaConf.to_container(trained[group]), merge=False)
    for key, value in kept.items():  # the run's own value: e.g. a new frame of the same tokens
        OmegaConf.update(cfg, key, value, merge=False)
    for key in ("width", "height"):
        if int(cfg.cameras[key]) != int(trained.cameras[key]):
            changed.append(f"cameras.{key}")
        OmegaConf.update(cfg, f"cameras.{key}", int(trained.cameras[key]))
    if int(cfg.training.sequence_length) > int(cfg.model.context_length):  # e.g. a one-step (Markov) policy
        changed.append("training.sequence_length")
        OmegaConf.update(cfg, "training.sequence_length", int(cfg.model.context_length))
    if changed and DistContext.from_env().is_main:
        print(f"training.init_from={source}: adopting its {', '.join(changed)} settings")
    return cfg


def _plot_curves(log_path: Path, title: str) -> None:
    """Redraw loss.png beside log.jsonl; a plotting failure must never cost the training run."""
    from gato_ros.gato.curves import plot_training_log

    try:
        plot_training_log(log_path, title=title)
    except Exception as err:  # e.g. a headless matplotlib problem: the log itself is intact
        print(f"warning: could not plot {log_path}: {err!r}", file=sys.stderr)


def dataset_batch_source(cfg: DictConfig, dist: DistContext) -> BatchSource:
    """Batches from part 1's training dataset (mixture by weight, prompt conditioning), per rank."""
    from gato_ros.gato import dataset  # part 1: episode datasets -> GatoBatch in the token layout

    return dataset.make_batch_source(cfg, rank=dist.rank, world_size=dist.world_size)
