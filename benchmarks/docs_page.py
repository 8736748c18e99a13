"""Write docs/BENCHMARKS.md from the JSON the benchmarks write: the figures of each run, its command, the
machine it ran on, and the ratios that travel between machines (against the naive baseline of the same
run and against the control period), so the page is regenerated, never hand-edited.

    .venv/bin/python benchmarks/decode.py --models tiny small medium --json docs/benchmarks/decode_cpu.json
    .venv/bin/python benchmarks/control_loop.py --json docs/benchmarks/control_loop_tiny.json
    .venv/bin/python benchmarks/control_loop.py --json docs/benchmarks/control_loop_tiny_timer.json \\
        safety.act_on_arrival=false
    .venv/bin/python benchmarks/docs_page.py docs/benchmarks/*.json          # -> docs/BENCHMARKS.md

`docs/benchmarks/before_after.json` keeps figures from before a change (they cannot be re-measured once
the code has changed), each with its command and source; the "after" of each row is read from a run's JSON
here (`file`, a `select` of the result row, a dotted `path`), or is a figure a tool printed, with its command;
a "before" can be read the same way where one run measures the old path beside the new.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def run_record(benchmark: str, results: Any) -> dict[str, Any]:
    """What a benchmark writes: its figures with the command and the machine that produced them."""
    return {
        "benchmark": benchmark,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(terse=True),
            "load_1min_at_start": os.getloadavg()[0],
        },
        "results": results,
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pair(stats: dict[str, Any] | None, p50: str, p99: str) -> str:
    return "–" if not stats else f"{_ms(stats.get(p50))} / {_ms(stats.get(p99))}"


def decode_rows(record: dict[str, Any]) -> list[str]:
    rows = []
    for r in record["results"]:
        cached, ahead, full = r["kv_cache"], r.get("kv_cache_trim_ahead"), r.get("full_forward")
        step = ahead or cached  # what the policy node runs (trims done between steps)
        speedup = full["p50_ms"] / step["p50_ms"] if full else None
        cells = [
            r["model"],
            f"{r['params'] / 1e6:.1f}M",
            f"{r['device']} {r['dtype']}, {r.get('threads', '?')} threads",
            str(r["tokens_per_step"]),
            _pair(cached, "p50_ms", "p99_ms"),
            _pair(step, "p50_ms", "p99_ms"),
            _ms(full["p50_ms"]) if full else "–",
            _ratio(speedup),
            _ratio(step["p99_ms"] / r["period_ms"]),
        ]
        rows.append(_row(cells))
    return rows


def control_loop_rows(record: dict[str, Any]) -> list[str]:
    f = record["results"]
    period_ms = 1e3 / f["configured_rate_hz"]
    obs = f.get("obs_to_command_ms")
    complete = f.get("complete_obs_to_command_ms")  # absent from runs before it was measured
    load = f.get("load_processes", 0)
    cpu = f.get("cpu_cores") or {}
    cells = [
        f"{f['model']} on {f['device']} ({' '.join(f.get('overrides', [])) or 'defaults'})",
        f"{load} busy loop{'s' if load != 1 else ''}" if load else "none",
        _pair(obs, "p50", "p99"),
        _ratio(obs["p99"] / period_ms if obs else None),
        _pair(complete, "p50", "p99"),
        _ratio(complete["p99"] / period_ms if complete else None),
        _pair(f.get("action_to_command_ms"), "p50", "p99"),
        _pair(f.get("policy_in_node_ms"), "p50", "p99"),
        f"{f['actions_per_sim_s']:.1f} / {f['commands_per_sim_s']:.1f} of {f['configured_rate_hz']:g}",
        f"{f['realtime_factor']:.2f}",
        ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.items()) or "–",
    ]
    return [_row(cells)]


TABLES = {
    "decode": (
        "Policy step (`benchmarks/decode.py`): tokenize one observation, decode the 5 action tokens",
        [
            "model", "params", "device", "tokens/step", "KV cache, trims in the step: p50 / p99 ms",
            "KV cache, trims between steps (the node): p50 / p99 ms", "no cache p50 ms",
            "speed-up vs no cache (p50)", "p99 / period",
        ],
        decode_rows,
    ),
    "control_loop": (
        "Observation → command through the live stack (`benchmarks/control_loop.py`: twin, policy and "
        "command nodes as processes)",
        [
            "run", "competing load", "joint state → command p50 / p99 ms", "p99 / period",
            "complete observation → command p50 / p99 ms", "p99 / period", "action → command p50 / p99 ms",
            "policy in node p50 / p99 ms", "actions / commands per sim s",
            "twin real-time factor", "CPU use (cores)",
        ],
        control_loop_rows,
    ),
}  # fmt: skip


def _lookup(records: dict[str, dict[str, Any]], ref: dict[str, Any]) -> float:
    """A figure of a run's JSON: `file` (its name), `select` (keys of the row, when results is a list),
    `path` (dotted keys inside it)."""
    results = records[ref["file"]]["results"]
    if isinstance(results, list):
        results = next(r for r in results if all(r.get(k) == v for k, v in ref.get("select", {}).items()))
    value: Any = results
    for key in ref["path"].split("."):
        value = value[key]
    return float(value)


def _figure_cell(records: dict[str, dict[str, Any]], cell: Any) -> str:
    """A literal (a figure a tool printed, with its command), or `format` filled from runs' JSON."""
    if isinstance(cell, str):
        return cell
    figures = [f"{_lookup(records, ref):.{ref.get('digits', 1)}f}" for ref in cell["figures"]]
    files = ", ".join(dict.fromkeys(f"`{ref['file']}`" for ref in cell["figures"]))
    return cell["format"].format(*figures) + f" ({files}: its command is in the runs above)"


def before_after_rows(record: dict[str, Any], by_file: dict[str, dict[str, Any]]) -> list[str]:
    """The before/after section: one row per figure, either side a literal or read from the runs."""
    lines = ["", f"## {record['title']}", "", record.get("note", ""), ""]
    lines += [_row(["figure", "before", "after"]), _row(["---"] * 3)]
    for row in record["rows"]:
        before, after = (_figure_cell(by_file, row[key]) for key in ("before", "after"))
        lines.append(_row([row["figure"], before, after]))
    return lines


def render(records: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/docs_page.py` from the JSON under `docs/benchmarks/` (not edited by",
        "hand). Times are wall clock on the machine named with each run; compare ratios measured in one run,",
        "not times across machines.",
    ]
    for kind, (title, columns, rows) in TABLES.items():
        runs = [r for r in records if r.get("benchmark") == kind]
        if not runs:
            continue
        lines += ["", f"## {title}", "", _row(columns), _row(["---"] * len(columns))]
        for record in runs:
            lines += rows(record)
        lines += ["", "Runs:"]
        for record in runs:
            m = record["machine"]
            lines.append(
                f"- `{record['command']}` ({record['date_utc']} UTC, {m['cpus']} CPUs, {m['platform']}, "
                f"1-min load {m['load_1min_at_start']:.2f} at start)"
            )
    by_file = {r["file"]: r for r in records if "file" in r}
    for record in records:
        if record.get("benchmark") == "before_after":
            lines += before_after_rows(record, by_file)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="benchmark JSON files")
    parser.add_argument("--out", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    records = [{**json.loads(path.read_text()), "file": path.name} for path in sorted(args.json)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(records))
    print(f"wrote {args.out} from {len(records)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
