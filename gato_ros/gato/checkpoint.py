"""Checkpoints as safetensors + JSON only (never pickle): safe to load from anyone, readable without torch.

A checkpoint is a directory:
  model.safetensors      the weights (tied head/embedding stored once)
  config.json            format tag, the model architecture, the whole resolved config (tokenizer settings
                         included) and the training step
  optimizer.safetensors  optional: the optimizer's tensors (Adam moments, step counts)
  optimizer.json         optional: the optimizer's non-tensor state (param groups, hyper-parameters)
It is written to a temporary sibling directory and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gato_ros.gato.model import GatoModel, GatoModelConfig

if TYPE_CHECKING:
    from omegaconf import DictConfig

FORMAT = "gato_ros.checkpoint/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_STATE_FILE = "optimizer.json"


@dataclass
class PolicyCheckpoint:
    """A loaded policy: the model (eval mode), the config it was trained with, and its training step."""

    model: GatoModel
    cfg: DictConfig
    step: int
    path: Path


def unwrap_model(model: nn.Module) -> GatoModel:
    """The GatoModel inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, GatoModel):
            return model
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"not a GatoModel: {type(model).__name__}")
        model = inner


def _config_to_plain(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain JSON data (an OmegaConf node, or nested dicts where hydra is absent)."""
    if type(cfg).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return json.loads(json.dumps(cfg))


def _config_from_plain(data: dict[str, Any]) -> Any:
    """An OmegaConf node again (plain nested dicts on machines without omegaconf)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return data
    return OmegaConf.create(data)


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors-able tensors and JSON-able everything else."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state/{index}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    cfg: DictConfig,
    *,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` (replacing one already there) and return its path."""
    path = Path(path)
    gato = unwrap_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_model(gato, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "step": int(step),
            "model": gato.config.to_dict(),
            "config": _config_to_plain(cfg),
            "extra": extra or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if optimizer is not None:
            tensors, opt_meta = _optimizer_to_flat(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": FORMAT})
            (tmp / OPTIMIZER_STATE_FILE).write_text(json.dumps(opt_meta, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _checkpoint_dir(path: Path) -> Path | None:
    """`path` as a checkpoint directory: itself, the directory of its weights file, the directory a
    `latest` pointer file names, or a training run's newest checkpoint (`<run>/checkpoints/latest`)."""
    from gato_ros.gato.train import CHECKPOINT_DIR, LATEST_FILE

    if (path / CONFIG_FILE).is_file():
        return path
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / CONFIG_FILE).is_file():
        return path.parent
    if path.is_dir() and (path / CHECKPOINT_DIR / LATEST_FILE).is_file():
        path = path / CHECKPOINT_DIR / LATEST_FILE
    if path.is_file() and path.stat().st_size < 4096:
        target = path.parent / path.read_text().strip()
        if target != path.parent and (target / CONFIG_FILE).is_file():
            return target
    return None


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A checkpoint directory from any of: a checkpoint directory, its `.safetensors` file, a training
    run's `checkpoints/latest` pointer (or the run directory itself), or the name of a policy shipped under
    `policies/` (`policy.checkpoint=default` is the package's default policy)."""
    from gato_ros.paths import policies_dir

    path = Path(name_or_path).expanduser()
    found = _checkpoint_dir(path)
    if found is not None:
        return found
    shipped = policies_dir() / str(name_or_path)
    if not path.is_absolute() and (shipped / CONFIG_FILE).is_file():
        return shipped
    names = sorted(p.name for p in policies_dir().glob("*") if (p / CONFIG_FILE).is_file())
    raise FileNotFoundError(
        f"no checkpoint at {path} (a checkpoint directory with {CONFIG_FILE} and {MODEL_FILE}, its "
        f"{MODEL_FILE}, a run's checkpoints/latest), and no shipped policy of that name "
        f"(shipped: {', '.join(names) or 'none'})"
    )


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    return meta


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_dtype(name: str) -> torch.dtype:
    """``policy.dtype`` -> the torch dtype a policy runs in (one of MODEL_DTYPES)."""
    if name not in MODEL_DTYPES:
        raise ValueError(f"policy.dtype must be one of {sorted(MODEL_DTYPES)}, not {name!r}")
    return MODEL_DTYPES[name]


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PolicyCheckpoint:
    """Rebuild the model from the checkpoint's JSON config and load its weights (eval mode), then cast it
    to `dtype` (`policy.dtype`). `path` may also name a shipped policy (`resolve_checkpoint`)."""
    path = resolve_checkpoint(path)
    meta = read_checkpoint_config(path)
    model_cfg = GatoModelConfig(**meta["model"])
    with torch.device("meta"):
        model = GatoModel(model_cfg)
    model = model.to_empty(device=device)
    if model_cfg.tie_embeddings:  # to_empty breaks the tie: restore it before loading
        model.head.weight = model.token_embedding.weight
    missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=True, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model: {missing=} {unexpected=}")
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:  # a policy with NaN weights decodes garbage that only the safety limits would stop
        raise ValueError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {bad[0]}; refused")
    model.to(dtype).eval()
    return PolicyCheckpoint(
        model=model, cfg=_config_from_plain(meta["config"]), step=int(meta["step"]), path=path
    )


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Load weights (and optimizer state when saved) into existing objects for resuming; returns the step."""
    path = Path(path)
    meta = read_checkpoint_config(path)
    gato = unwrap_model(model)
    device = gato.head.weight.device
    load_model(gato, str(path / MODEL_FILE), strict=True, device=str(device))
    if optimizer is not None:
        if not (path / OPTIMIZER_FILE).is_file():
            raise FileNotFoundError(f"{path}: no optimizer state to resume from")
        tensors = load_file(str(path / OPTIMIZER_FILE), device=str(device))
        opt_meta = json.loads((path / OPTIMIZER_STATE_FILE).read_text())
        optimizer.load_state_dict(_optimizer_from_flat(tensors, opt_meta))
    return int(meta["step"])
