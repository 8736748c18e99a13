"""One-shot GPU check of the Gato core (for a lent H100/H200; about 5 minutes, capped by --max-seconds):

1. control-step latency of the 1.18B config in bf16: tokenize + decode all 5 action dimensions with the
   KV cache reused across steps (p50/p99, trims in the step and trims ahead), with CUDA graphs for the
   observation prefill and the action tokens, for the action tokens only, and none (their actions compared:
   the graphs must decode the eager path's), and with a full forward per dimension;
2. training throughput in tokens/s: AdamW (fused), bf16 autocast, gradient clipping, synthetic batches of
   1024-token sequences in the Gato layout, with the largest batch that fits (probed, halving on OOM);
3. a smoke run of the real trainer (`gato_ros.gato.train.train`) on the device with the tiny config,
   checkpointing included (skipped when safetensors/omegaconf are not installed).

Needs only torch + numpy + this repository: without hydra it composes the config itself from the YAML
files (a small reader for the subset of YAML they use). Run from the repository root:

    PYTHONPATH=. python benchmarks/gpu_check.py --out $OUT/gpu_check.json
    .venv/bin/python benchmarks/gpu_check.py --model tiny --device cpu --out /tmp/g.json   # CPU rehearsal
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import format_result, run_model  # noqa: E402

from gato_ros.gato.model import GatoModel, GatoModelConfig, parameter_count_formula  # noqa: E402
from gato_ros.gato.tokenizer import ObservationTokenizer  # noqa: E402
from gato_ros.gato.train import TokenBatch, autocast_dtype, lr_at, make_optimizer, masked_nll  # noqa: E402

CONFIG_DIR = ROOT / "gato_ros" / "config"
GROUPS_NEEDED = ("robot", "cameras", "tokenizer", "model", "policy", "training")


# ---- configuration without hydra ----------------------------------------------------------------------
class AttrDict(dict):
    """A dict with attribute access, standing in for an OmegaConf node."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"":
            quote = None if quote == ch else (ch if quote is None else quote)
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _split_flow(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(p) for p in _split_flow(text[1:-1])]
    if text.startswith("{") and text.endswith("}"):
        return AttrDict(
            (k.strip(), _scalar(v)) for k, v in (p.split(":", 1) for p in _split_flow(text[1:-1]))
        )
    if text in ("null", "~", ""):
        return None
    if text in ("true", "True"):
        return True
    if text in ("false", "False"):
        return False
    if text[:1] in "'\"":
        return ast.literal_eval(text)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_simple_yaml(path: Path) -> AttrDict:
    """Block mappings by indentation, `- item` block lists, flow lists/maps on one line, scalars."""
    lines = [
        (len(raw) - len(raw.lstrip()), raw.strip())
        for raw in map(_strip_comment, path.read_text().splitlines())
    ]
    lines = [(indent, text) for indent, text in lines if text]

    def parse(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                item = lines[i][1][2:]
                items.append(
                    AttrDict([(item.split(":", 1)[0].strip(), _scalar(item.split(":", 1)[1]))])
                    if re.match(r"^[\w/.-]+:\s", item)
                    else _scalar(item)
                )
                i += 1
            return items, i
        node = AttrDict()
        while i < len(lines) and lines[i][0] == indent:
            key, _, rest = lines[i][1].partition(":")
            i += 1
            if rest.strip():
                node[key.strip()] = _scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                node[key.strip()], i = parse(i, lines[i][0])
            else:
                node[key.strip()] = None
        return node, i

    return parse(0, 0)[0] if lines else AttrDict()


def _resolve(node: Any, root: AttrDict) -> Any:
    """Resolve `${a.b}` and `${oc.env:VAR,default}` interpolations in place."""
    if isinstance(node, dict):
        for key in node:
            node[key] = _resolve(node[key], root)
        return node
    if isinstance(node, list):
        return [_resolve(v, root) for v in node]
    if isinstance(node, str) and "${" in node:
        match = re.fullmatch(r"\$\{([^}]+)\}", node)
        if match is None:
            return node
        ref = match.group(1)
        if ref.startswith("oc.env:"):
            var, _, default = ref[len("oc.env:") :].partition(",")
            return os.environ.get(var, _scalar(default))
        value: Any = root
        for part in ref.split("."):
            value = value[part]
        return _resolve(value, root)
    return node


def compose_config_without_hydra(overrides: list[str]) -> AttrDict:
    """The groups this check needs, composed like hydra does (group=option and dotted key=value)."""
    base = read_simple_yaml(CONFIG_DIR / "config.yaml")
    choices = {k: v for entry in base.pop("defaults") if isinstance(entry, dict) for k, v in entry.items()}
    values = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in choices:
            choices[key] = value
        else:
            values.append((key, _scalar(value)))
    cfg = AttrDict()
    for group in GROUPS_NEEDED:
        cfg[group] = read_simple_yaml(CONFIG_DIR / group / f"{choices[group]}.yaml")
    cfg.update(base)
    for key, value in values:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[leaf] = value
    return _resolve(cfg, cfg)


def load_check_config(overrides: list[str]) -> Any:
    try:
        from gato_ros.config import load_config

        return load_config(overrides), "hydra"
    except ImportError:
        return compose_config_without_hydra(overrides), "built-in YAML reader (hydra not installed)"


# ---- training throughput ---------------------------------------------------------------------------------
def synthetic_sequence_batch(cfg: Any, batch_size: int, device: torch.device) -> TokenBatch:
    """B copies of a real serialized sequence (whole steps of random observations, right-padded)."""
    from decode import observation_shapes, synthetic_observation

    from gato_ros.gato.dataset import make_batch
    from gato_ros.gato.serialization import serialize_steps

    tokenizer = ObservationTokenizer(cfg)
    context = int(cfg.model.context_length)
    shapes = observation_shapes(cfg)
    rng = np.random.default_rng(0)
    probe = synthetic_observation(shapes, rng)
    steps = context // (tokenizer.step_length(probe) + tokenizer.action_dim)
    observations = [synthetic_observation(shapes, rng) for _ in range(steps)]
    stacked = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    actions = rng.uniform(low, high, (steps, len(low)))
    sequence = serialize_steps(
        tokenizer.tokenize_steps(stacked), tokenizer.tokenize_action(actions), int(cfg.model.max_obs_tokens)
    )
    batch = make_batch([sequence] * batch_size, context, tokenizer.padding_id)
    return TokenBatch(**{name: getattr(batch, name).to(device) for name in TokenBatch.__dataclass_fields__})


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def measure_training(
    cfg: Any, device: torch.device, batch_sizes: list[int], steps: int, deadline: float
) -> dict[str, Any]:
    tokenizer = ObservationTokenizer(cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = GatoModel(GatoModelConfig.from_cfg(cfg.model, tokenizer.vocab_size))
    model.train()
    tcfg = cfg.training
    optimizer = make_optimizer(model, tcfg, device)
    amp = autocast_dtype("auto" if device.type == "cuda" else "fp32", device)

    def one_step(batch: TokenBatch, step: int) -> float:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tcfg)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = masked_nll(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    chosen, tried = None, []
    for size in batch_sizes:
        batch = None
        try:
            batch = synthetic_sequence_batch(cfg, size, device)
            one_step(batch, 0)
            one_step(batch, 1)
            chosen = size
            tried.append({"batch": size, "fits": True})
            break
        except RuntimeError as err:
            if not is_oom(err):
                raise
            tried.append({"batch": size, "fits": False})
            del batch
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if chosen is None:
        return {"error": "no batch size fits", "tried": tried}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses, done = [], 0
    t0 = time.perf_counter()
    for step in range(2, 2 + steps):
        losses.append(one_step(batch, step))
        done += 1
        if time.perf_counter() > deadline:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tokens = done * batch.tokens.numel()
    real_tokens = done * int((batch.tokens != tokenizer.padding_id).sum())
    non_embedding = parameter_count_formula(model.config)["non_embedding"]
    return {
        "batch_size": chosen,
        "sequence_length": int(batch.tokens.shape[1]),
        "tried": tried,
        "steps_timed": done,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "unpadded_tokens_per_s": real_tokens / elapsed,
        "step_ms": 1e3 * elapsed / done,
        "approx_tflops": 6 * non_embedding * tokens / elapsed / 1e12,  # 6 N per token, attention excluded
        "precision": "bf16 autocast" if amp is not None else "fp32",
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def trainer_smoke_run(device: torch.device) -> dict[str, Any]:
    """The real `train()` on this device: tiny config, synthetic batches, checkpoint saved and reloaded."""
    try:
        import safetensors  # noqa: F401
    except ImportError as err:
        return {"skipped": f"needs {err.name} (checkpoints)"}
    from gato_ros.gato.checkpoint import load_policy
    from gato_ros.gato.train import train

    with tempfile.TemporaryDirectory() as tmp:
        overrides = ["model=tiny", f"training.device={device}", "training.steps=6", "training.batch_size=2"]
        overrides += ["training.progress=false", f"training.out_dir={tmp}", "training.warmup_steps=2"]
        cfg, _ = load_check_config(overrides)
        batch = synthetic_sequence_batch(cfg, 2, torch.device("cpu"))
        t0 = time.perf_counter()
        result = train(cfg, batch_source=lambda step, micro: batch)
        loaded = load_policy(result.checkpoint, device)
        gato = loaded.model
        with torch.no_grad():
            on_device = TokenBatch(
                **{k: getattr(batch, k).to(device) for k in TokenBatch.__dataclass_fields__}
            )
            reloaded_loss = float(masked_nll(gato, on_device)[0])
        return {
            "steps": result.step,
            "losses": result.losses,
            "seconds": time.perf_counter() - t0,
            "precision": str(cfg.training.precision),
            "checkpoint_reloaded_on": str(gato.head.weight.device),
            "reloaded_model_loss": reloaded_loss,
        }


# ---- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gato GPU check: decode latency and training throughput")
    parser.add_argument("--model", default="gato_1_18b", help="model config (config/model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-steps", type=int, default=300, help="timed control steps with the KV cache")
    parser.add_argument("--full-steps", type=int, default=10, help="timed control steps without the cache")
    parser.add_argument("--train-steps", type=int, default=200, help="timed optimizer steps (at most)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 48, 32, 24, 16, 12, 8, 4, 2, 1])
    parser.add_argument("--max-seconds", type=float, default=420.0, help="stop the timed training by then")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--out", type=Path, required=True, help="JSON results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    deadline = started + args.max_seconds
    device = torch.device(args.device)
    cfg, config_source = load_check_config([f"model={args.model}"])
    report: dict[str, Any] = {
        "model": args.model,
        "config_source": config_source,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
    }
    decode_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(
        f"[gpu_check] {report['device']}, torch {torch.__version__}, config via {config_source}", flush=True
    )

    with torch.inference_mode():
        decode = run_model(cfg, device, decode_dtype, args.decode_steps, args.full_steps)
    report["decode"] = decode
    print(format_result(decode), flush=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    report["training"] = measure_training(cfg, device, args.batch_sizes, args.train_steps, deadline)
    t = report["training"]
    if "error" not in t:
        print(
            f"training {args.model}: batch {t['batch_size']} x {t['sequence_length']} tokens, "
            f"{t['precision']}, "
            f"{t['steps_timed']} steps in {t['seconds']:.1f} s: {t['tokens_per_s']:,.0f} tokens/s "
            f"({t['unpadded_tokens_per_s']:,.0f} unpadded), {t['step_ms']:.0f} ms/step, "
            f"~{t['approx_tflops']:.0f} TFLOP/s, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}",
            flush=True,
        )
    else:
        print(f"training: {t}", flush=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report["trainer_smoke"] = trainer_smoke_run(device)
    print(f"trainer smoke run: {report['trainer_smoke']}", flush=True)
    report["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    c = decode["kv_cache"]
    f = decode["full_forward"] or {}
    print("\n=== summary ===")
    print(f"device            {report['device']}")
    print(
        f"model             {args.model} ({decode['params'] / 1e9:.3f}B params), decode in {decode['dtype']}"
    )
    print(
        f"control step      KV cache p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms ({c['trims']} trims)"
    )
    if f:
        print(f"                  full forward p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms")
    rate = float(cfg.control.rate_hz)
    verdict = "OK" if c["p99_ms"] < 1e3 / rate else "OVER"
    print(f"                  budget at {rate:g} Hz: {1e3 / rate:.0f} ms -> p99 {verdict}")
    if "error" not in t:
        shape = f"batch {t['batch_size']} x {t['sequence_length']}"
        print(f"training          {t['tokens_per_s']:,.0f} tokens/s at {shape}, {t['precision']}")
    print(f"total             {report['total_seconds']:.0f} s; JSON: {args.out}")
    return 0 if math.isfinite(c["p50_ms"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
