"""The benchmark page is generated from what the benchmarks write: a short decode run's JSON becomes a
table row with its ratios and the command that produced it (timings are not asserted: noisy machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
