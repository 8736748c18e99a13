"""benchmarks/gpu_check.py works first time on a GPU machine: rehearsed here on the CPU with the tiny config
and with hydra, omegaconf, PyYAML and safetensors made unimportable (the GPU machine promises only torch +
numpy + this repository); its built-in config reader agrees with hydra."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from gato_ros.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
BLOCKED = ("hydra", "omegaconf", "yaml", "safetensors")


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_builtin_config_reader_agrees_with_hydra() -> None:
    gpu_check = load_script()
    for model in ("gato_1_18b", "tiny"):
        overrides = [f"model={model}", "policy.decoder.greedy=false"]
        ours = gpu_check.compose_config_without_hydra(overrides)
        reference = OmegaConf.to_container(load_config(overrides), resolve=True)
        for key in (*gpu_check.GROUPS_NEEDED, "control", "seed"):
            assert ours[key] == reference[key], key


def run_gpu_check(args: list[str], blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run the script as the GPU box does, in a fresh interpreter where `blocked` modules cannot import."""
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in blocked)
    run = f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    code = f"import runpy, sys; {block}; sys.argv = ['gpu_check.py', *{args!r}]; {run}"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_gpu_check_runs_on_cpu_with_only_torch_numpy_and_the_repo(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    args = [
        "--model", "tiny", "--device", "cpu", "--threads", "1", "--decode-steps", "8", "--full-steps", "2",
        "--train-steps", "3", "--batch-sizes", "2", "--out", str(out),
    ]  # fmt: skip
    proc = run_gpu_check(args, BLOCKED)
    assert "=== summary ===" in proc.stdout
    report = json.loads(out.read_text())
    assert report["config_source"].startswith("built-in")
    kv, full = report["decode"]["kv_cache"], report["decode"]["full_forward"]
    assert kv["n"] == 8 and kv["trims"] >= 1 and 0 < kv["p50_ms"] <= kv["p99_ms"]
    assert full["n"] == 2 and full["p50_ms"] > 0
    training = report["training"]
    assert training["batch_size"] == 2 and training["steps_timed"] == 3 and training["tokens_per_s"] > 0
    assert training["sequence_length"] == 1024
    assert "skipped" in report["trainer_smoke"]  # no safetensors here: checkpoints are not possible


def test_gpu_check_trainer_smoke_run_without_hydra(tmp_path) -> None:
    """The GPU box has safetensors but no hydra/omegaconf: the real trainer must still run and checkpoint."""
    out = tmp_path / "gpu_check.json"
    args = [
        "--model", "tiny", "--device", "cpu", "--threads", "1", "--decode-steps", "1", "--full-steps", "0",
        "--train-steps", "1", "--batch-sizes", "1", "--out", str(out),
    ]  # fmt: skip
    run_gpu_check(args, ("hydra", "omegaconf"))
    smoke = json.loads(out.read_text())["trainer_smoke"]
    assert smoke["steps"] == 6 and len(smoke["losses"]) == 6
    assert smoke["checkpoint_reloaded_on"] == "cpu"
    assert abs(smoke["reloaded_model_loss"] - smoke["losses"][-1]) < 0.5  # the trained weights came back


def test_the_decode_benchmark_offers_the_dtypes_a_policy_runs_in() -> None:
    """benchmarks/decode.py spells out policy.dtype's choices (it must import without safetensors)."""
    from gato_ros.gato.checkpoint import MODEL_DTYPES

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import decode
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert decode.DTYPES == MODEL_DTYPES
