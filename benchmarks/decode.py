"""Per-control-step latency of the Gato action decoder: tokenize one observation and decode all action
dimensions, with the KV cache reused across steps, against a full forward of the whole context per
action dimension (no cache). Synthetic observations in the benchmark's shapes; the model is untrained
(latency does not depend on the weights).

    .venv/bin/python benchmarks/decode.py                          # tiny and small on the CPU
    .venv/bin/python benchmarks/decode.py --models small --device cuda --dtype bfloat16 --steps 200
    .venv/bin/python benchmarks/decode.py --models large --dtype bfloat16   # CPUs with AMX: policy.dtype

Steps run past the 1024-token window, so the figures include context trims (drop the oldest steps,
re-encode the rest): p99 shows them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gato_ros.gato.decoder import ActionDecoder
from gato_ros.gato.model import GatoModel, GatoModelConfig
from gato_ros.gato.tokenizer import ObservationTokenizer

# The dtypes `policy.dtype` takes (gato_ros.gato.checkpoint.MODEL_DTYPES), spelt out: gpu_check.py imports
# this module on a GPU box that promises only torch + numpy (no safetensors, which checkpoint.py needs).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def observation_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """The benchmark observation (docs/ARCHITECTURE.md): policy camera images and the arm's state."""
    cams, obs = cfg.cameras, cfg.tokenizer.observation
    shapes = {f"{name}/pixels": (int(cams.height), int(cams.width), 3) for name in cams.policy_cameras}
    state = {"gripper/joints/angle": (1,), "sawyer/joints/angle": (len(cfg.robot.joint_names),)}
    pose = (7,)  # x, y, z, qw, qx, qy, qz
    for key in obs.tensor_keys:
        shapes[str(key)] = state.get(str(key), pose)
    return shapes


def synthetic_observation(
    shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        if key.endswith("/pixels"):
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "n": len(ms),
    }


def measure_decoder(
    model: GatoModel,
    tokenizer: ObservationTokenizer,
    cfg: Any,
    observations: list[dict[str, np.ndarray]],
    steps: int,
    warmup: int,
    trim_ahead: bool = False,
) -> dict[str, Any]:
    """Latency of `steps` control steps with the decoder `cfg` describes, after `ActionDecoder.warmup`
    (as a deployment does before its control loop) and `warmup` further untimed steps. `trim_ahead`:
    `prepare_next` after each step, as the policy node does after publishing (timed apart: idle time)."""
    t0 = time.perf_counter()
    decoder = ActionDecoder(model, tokenizer, cfg)
    setup_s = time.perf_counter() - t0
    warmup_s = decoder.warmup(observations[0])
    totals, tokenize, trims, ahead = [], [], 0, []
    for i in range(warmup + steps):
        result = decoder.step(observations[i % len(observations)])
        if i >= warmup:
            totals.append(result.total_s)
            tokenize.append(result.tokenize_s)
            trims += int(result.trimmed)
        if trim_ahead:
            t_prepare = time.perf_counter()
            if decoder.prepare_next() and i >= warmup:
                ahead.append(time.perf_counter() - t_prepare)
    stats = percentiles(totals)
    stats["trim_ahead_max_ms"] = 1e3 * max(ahead) if ahead else None
    stats["setup_s"] = setup_s
    stats["warmup_s"] = warmup_s
    stats["tokenize_p50_ms"] = percentiles(tokenize)["p50_ms"]
    stats["trims"] = trims
    stats["context_tokens_last"] = decoder.last_result.context_tokens
    return stats


def compare_cuda_graphs(
    model: GatoModel,
    tokenizer: ObservationTokenizer,
    cfg: Any,
    observations: list[dict[str, np.ndarray]],
    steps: int,
) -> dict[str, Any]:
    """Greedy decoding with the captured CUDA graphs (observation prefill and action tokens) and without
    any (the variable-shape prefill, eager) over `steps` steps (through a context trim): the action ids
    must be identical and the logits equal to rounding."""
    runs = {}
    for use_graphs in (True, False):
        cfg.policy.decoder.cuda_graphs = use_graphs
        decoder = ActionDecoder(model, tokenizer, cfg)
        decoder.record_logits = True
        runs[use_graphs] = [decoder.step(observations[i % len(observations)]) for i in range(steps)]
    cfg.policy.decoder.cuda_graphs = True
    same_ids = all(
        np.array_equal(a.token_ids, b.token_ids) for a, b in zip(runs[True], runs[False], strict=True)
    )
    diff = max(float(np.abs(a.logits - b.logits).max()) for a, b in zip(runs[True], runs[False], strict=True))
    return {"steps": steps, "same_action_ids": same_ids, "max_logit_diff": diff}


def build_for_benchmark(cfg: Any, vocab_size: int, device: torch.device, dtype: torch.dtype) -> GatoModel:
    """An (untrained) model of `cfg.model`, initialised directly on `device`, in `dtype`, eval mode."""
    torch.manual_seed(0)
    with torch.device(device):
        model = GatoModel(GatoModelConfig.from_cfg(cfg.model, vocab_size))
    return model.to(dtype).eval()


def run_model(
    cfg: Any, device: torch.device, dtype: torch.dtype, steps: int, full_steps: int
) -> dict[str, Any]:
    tokenizer = ObservationTokenizer(cfg)
    model = build_for_benchmark(cfg, tokenizer.vocab_size, device, dtype)
    rng = np.random.default_rng(0)
    shapes = observation_shapes(cfg)
    observations = [synthetic_observation(shapes, rng) for _ in range(16)]
    step_tokens = tokenizer.step_length(observations[0]) + tokenizer.action_dim
    cfg.policy.decoder.kv_cache = True
    cached = measure_decoder(model, tokenizer, cfg, observations, steps, warmup=0)
    ahead = measure_decoder(model, tokenizer, cfg, observations, steps, warmup=0, trim_ahead=True)
    eager, token_graph_only, graph_check = None, None, None
    if device.type == "cuda" and bool(cfg.policy.decoder.cuda_graphs):
        cfg.policy.decoder.cuda_graphs = False
        eager = measure_decoder(model, tokenizer, cfg, observations, steps, warmup=0)
        cfg.policy.decoder.cuda_graphs = True
        static_prefill = cfg.policy.decoder.get("static_prefill", "auto")
        cfg.policy.decoder.static_prefill = False  # the action tokens graphed, the prefill eager
        token_graph_only = measure_decoder(model, tokenizer, cfg, observations, steps, warmup=0)
        cfg.policy.decoder.static_prefill = static_prefill
        graph_check = compare_cuda_graphs(model, tokenizer, cfg, observations, steps=10)
    full = None
    if full_steps > 0:
        cfg.policy.decoder.kv_cache = False
        full = measure_decoder(model, tokenizer, cfg, observations, full_steps, warmup=0)
        cfg.policy.decoder.kv_cache = True
    return {
        "model": str(cfg.model.name),
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype).removeprefix("torch."),
        "tokens_per_step": step_tokens,
        "context_length": model.config.context_length,
        "period_ms": 1e3 / float(cfg.control.rate_hz),
        "kv_cache": cached,
        "kv_cache_trim_ahead": ahead,
        "kv_cache_without_cuda_graphs": eager,
        "kv_cache_action_token_graph_only": token_graph_only,
        "cuda_graph_check": graph_check,
        "full_forward": full,
    }


def format_result(r: dict[str, Any]) -> str:
    c, f = r["kv_cache"], r["full_forward"]
    lines = [
        f"{r['model']} ({r['params'] / 1e6:.1f}M params, {r['device']}, {r['dtype']}), "
        f"{r['tokens_per_step']} tokens/step, context {r['context_length']}",
        f"  KV cache      p50 {c['p50_ms']:8.2f} ms  p99 {c['p99_ms']:8.2f} ms  mean {c['mean_ms']:8.2f} ms"
        f"  (n={c['n']}, {c['trims']} trims, tokenize p50 {c['tokenize_p50_ms']:.2f} ms)",
    ]
    a = r.get("kv_cache_trim_ahead")
    if a is not None:
        lines.append(
            f"  KV, trim ahead p50 {a['p50_ms']:7.2f} ms  p99 {a['p99_ms']:8.2f} ms"
            f"  mean {a['mean_ms']:8.2f} ms"
            f"  (trims done between steps, longest {a['trim_ahead_max_ms'] or 0:.1f} ms; p99 ratio "
            f"{a['p99_ms'] / c['p99_ms']:.2f} of trimming in the step, {a['p99_ms'] / r['period_ms']:.2f} "
            "of the control period)"
        )
    g = r.get("cuda_graph_check")
    for key, label, note in (
        ("kv_cache_without_cuda_graphs", "KV, no graphs", "no CUDA graphs; with them: p99 ratio"),
        ("kv_cache_action_token_graph_only", "KV, prefill eager", "action tokens graphed; all: p99 ratio"),
    ):
        other = r.get(key)
        if other is not None:
            lines.append(
                f"  {label:<17} p50 {other['p50_ms']:6.2f} ms  p99 {other['p99_ms']:8.2f} ms"
                f"  mean {other['mean_ms']:8.2f} ms  ({note} {c['p99_ms'] / other['p99_ms']:.2f})"
            )
    if g is not None:
        lines.append(
            f"  CUDA graph vs eager over {g['steps']} steps: same action ids {g['same_action_ids']}, "
            f"max logit difference {g['max_logit_diff']:.3g}"
        )
    if f is not None:
        lines.append(
            f"  full forward  p50 {f['p50_ms']:8.2f} ms  p99 {f['p99_ms']:8.2f} ms"
            f"  mean {f['mean_ms']:8.2f} ms"
            f"  (n={f['n']})   speed-up p50 x{f['p50_ms'] / c['p50_ms']:.1f}"
        )
    return "\n".join(lines)


def profile_steps(cfg: Any, device: torch.device, dtype: torch.dtype, steps: int) -> str:
    """A torch.profiler table of `steps` warmed-up KV-cached control steps (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    tokenizer = ObservationTokenizer(cfg)
    model = build_for_benchmark(cfg, tokenizer.vocab_size, device, dtype)
    rng = np.random.default_rng(0)
    observations = [synthetic_observation(observation_shapes(cfg), rng) for _ in range(4)]
    decoder = ActionDecoder(model, tokenizer, cfg)
    decoder.warmup(observations[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            decoder.step(observations[i % len(observations)])
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=20)]
    if device.type == "cuda":
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=15))
    return "\n".join(tables)


def load_any_config(overrides: list[str]) -> Any:
    """Hydra's config, or (where hydra is not installed, e.g. a bare GPU box) gpu_check's YAML reader."""
    try:
        from gato_ros.config import load_config
    except ImportError:
        from gpu_check import compose_config_without_hydra

        return compose_config_without_hydra(overrides)
    return load_config(overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], help="model configs (config/model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=40, help="timed control steps with the KV cache")
    parser.add_argument("--full-steps", type=int, default=15, help="timed steps without cache (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--profile", type=int, default=0, help="print a profiler table of N cached steps")
    parser.add_argument("--json", type=Path, help="also write the figures here (benchmarks/docs_page.py)")
    parser.add_argument(
        "overrides", nargs="*", help="hydra overrides, e.g. policy.decoder.trim_keep_fraction=1"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    results = []
    with torch.inference_mode():
        for name in args.models:
            cfg = load_any_config([f"model={name}", *args.overrides])
            t0 = time.perf_counter()
            result = run_model(
                cfg, torch.device(args.device), DTYPES[args.dtype], args.steps, args.full_steps
            )
            print(format_result(result), f"\n  ({time.perf_counter() - t0:.1f} s)")
            results.append({**result, "threads": torch.get_num_threads()})
            if args.profile:
                print(
                    profile_steps(cfg, torch.device(args.device), DTYPES[args.dtype], args.profile),
                    flush=True,
                )
    if args.json:
        from docs_page import run_record

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run_record("decode", results), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
