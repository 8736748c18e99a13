"""The benchmark page is generated from what the benchmarks write: a short decode run's JSON becomes a
table row with its ratios and the command that produced it (timings are not asserted: noisy machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_a_decode_run_becomes_a_row_of_the_benchmarks_page(tmp_path) -> None:
    figures = tmp_path / "decode.json"
    command = [sys.executable, str(BENCHMARKS / "decode.py"), "--models", "tiny", "--steps", "3",
               "--full-steps", "2", "--json", str(figures)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(figures.read_text())
    assert record["benchmark"] == "decode" and "decode.py --models tiny" in record["command"]
    assert record["machine"]["cpus"] >= 1
    (result,) = record["results"]
    assert result["model"] == "tiny" and result["kv_cache"]["n"] == 3 and result["full_forward"]["n"] == 2

    page = tmp_path / "BENCHMARKS.md"
    made = subprocess.run(
        [sys.executable, str(BENCHMARKS / "docs_page.py"), str(figures), "--out", str(page)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    step_p99 = float(cells[5].split("/")[1])
    speedup, of_period = float(cells[7]), float(cells[8])
    assert abs(of_period - step_p99 / result["period_ms"]) < 0.01  # both rounded on the page
    assert speedup > 0 and "decode.py --models tiny" in text


def _benchmark_module(name: str):
    import importlib.util

    sys.path.insert(0, str(BENCHMARKS))  # control_loop imports docs_page as the scripts do
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_the_control_loop_measures_from_the_complete_observation_too() -> None:
    """An action answers the observation the policy held when its step began (POLICY_LATENCY starts at
    the receipt of its newest part): the complete-observation span leaves out the twin's rendering
    between the joint state and the frames, and a step longer than the gap to the next tick is charged
    to the observation it used, not to the younger one that came in meanwhile."""
    loop = _benchmark_module("control_loop")
    t = loop.Timeline()
    t.observations = [(0.000, 1.00), (0.050, 1.05), (0.100, 1.10)]  # (wall, stamp) of the joint states
    t.actions = [0.040, 0.160]
    t.policy_latency = [(0.0401, 0.008), (0.1601, 0.075)]  # the second step's observation was in at 0.085
    t.commands = [0.045, 0.170]
    latency = loop.loop_latencies(t, 0.0, 1.0)
    assert np.allclose(latency["obs_to_command"], [0.045, 0.120])  # from the joint states of 1.00 / 1.05
    assert np.allclose(latency["complete_obs_to_command"], [0.013, 0.085])
    assert np.allclose(latency["action_to_command"], [0.005, 0.010])
    t.policy_latency = [(0.0401, 0.008)]  # an action without its latency message is left out
    assert len(loop.loop_latencies(t, 0.0, 1.0)["obs_to_command"]) == 1


def test_a_control_loop_run_becomes_a_row_with_both_observation_spans() -> None:
    page = _benchmark_module("docs_page")
    figures = {
        "model": "tiny", "device": "cpu", "overrides": [], "load_processes": 2, "configured_rate_hz": 20.0,
        "obs_to_command_ms": {"p50": 40.0, "p99": 60.0},
        "complete_obs_to_command_ms": {"p50": 10.0, "p99": 25.0},
        "action_to_command_ms": {"p50": 1.0, "p99": 5.0}, "policy_in_node_ms": {"p50": 8.0, "p99": 17.0},
        "actions_per_sim_s": 20.0, "commands_per_sim_s": 20.1, "realtime_factor": 0.99,
        "cpu_cores": {"twin": 1.0},
    }  # fmt: skip
    (row,) = page.control_loop_rows({"results": figures})
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2 busy loops" and cells[2] == "40.0 / 60.0" and cells[3] == "1.20"
    assert cells[4] == "10.0 / 25.0" and cells[5] == "0.50"
    del figures["complete_obs_to_command_ms"]  # a run from before the span was measured
    (row,) = page.control_loop_rows({"results": figures})
    assert [c.strip() for c in row.strip("|").split("|")][4:6] == ["–", "–"]


def test_before_after_rows_read_their_figures_from_the_runs() -> None:
    """The page's before/after table fills its "after" (and a "before" measured in the same run) from the
    runs' JSON by file, row and path: a literal stays as written."""
    page = _benchmark_module("docs_page")
    results = [
        {"model": "tiny", "kv_cache": {"p99_ms": 40.0}},
        {"model": "large", "kv_cache": {"p99_ms": 50.25}, "kv_cache_trim_ahead": {"p99_ms": 24.31}},
    ]
    run = {**page.run_record("synthetic", results), "file": "decode_cpu.json"}  # no table of its own

    def figure(path: str) -> dict:
        ref = {"file": "decode_cpu.json", "select": {"model": "large"}, "path": path}
        return {"format": "{} ms", "figures": [ref]}

    rows = [
        {
            "figure": "large step p99",
            "before": figure("kv_cache.p99_ms"),
            "after": figure("kv_cache_trim_ahead.p99_ms"),
        },
        {"figure": "GPU", "before": "42.6 ms", "after": "not measured"},
    ]
    text = page.render([run, {"benchmark": "before_after", "title": "Headroom", "rows": rows}])
    large = next(line for line in text.splitlines() if line.startswith("| large step p99 |"))
    before, after = (c.strip() for c in large.strip("|").split("|")[1:])
    assert before.startswith("50.2 ms (`decode_cpu.json`") and after.startswith("24.3 ms (`decode_cpu.json`")
    assert "| GPU | 42.6 ms | not measured |" in text


def test_the_twin_benchmark_names_a_failed_episodes_first_setback() -> None:
    """`benchmarks/twin.py --explain`: stages collapse into runs; the first return to grasping after holding
    red is a lost grasp, after releasing it a stack that came apart, and without either the time ran out."""
    twin = _benchmark_module("twin")
    runs = twin.stage_runs(["APPROACH", "APPROACH", "DESCEND", "CLOSE", "LIFT", "LIFT", "CARRY", "RECOVER"])
    assert runs == [("APPROACH", 2), ("DESCEND", 1), ("CLOSE", 1), ("LIFT", 2), ("CARRY", 1), ("RECOVER", 1)]
    assert twin.first_setback(runs) == "lost red after CARRY"
    # A tip ends in RECOVER by design: not a setback; the stack falling after the release is one.
    placed = twin.stage_runs(
        ["TIP_PUSH", "RECOVER", "APPROACH", "CLOSE", "LOWER", "RELEASE", "RETREAT", "APPROACH"]
    )
    assert twin.first_setback(placed) == "stack came apart after the release"
    assert (
        twin.first_setback(twin.stage_runs(["TIP_APPROACH", "TIP_PUSH", "TIP_PUSH"]))
        == "time ran out in TIP_PUSH"
    )
    assert twin.first_setback([]) == "no steps"
    # Fingers closed by a tip push read as holding for a step or two: no grasp, no loss.
    blip = twin.stage_runs(["TIP_PUSH", "RECOVER", "LIFT", "RECOVER", "APPROACH", "CLOSE", "LIFT", "RECOVER"])
    assert twin.first_setback(blip) == "lost red after LIFT"
    assert twin.first_setback(blip[:5]) == "time ran out in APPROACH"
