"""The evaluation's outputs from its episode rows: per-group success with Wilson intervals, the paper-style
Markdown table, results.json and the two plots (ROS-free)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gato_ros.evaluation.stats import MS_PER_S, latency_summary, success_summary

AVERAGE = "Average"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SUCCESS_PNG = "success.png"
LATENCY_PNG = "latency.png"
PERCENT = 100.0
NO_VALUE = "—"
PLOT_DPI = 120
LATENCY_BINS = 40
Y_HEADROOM = 1.08  # success axis up to 108 %: the value labels of 100 % bars stay inside the plot
LEGEND_COLUMNS = 4


def group_label(group: int | str) -> str:
    """The table column of a group: ``Group 3`` for test triplet 3, the distribution's name otherwise."""
    return f"Group {group}" if isinstance(group, int) else str(group)


def table_columns(groups: Sequence[int | str]) -> list[str]:
    """The paper's layout: triplet groups, their average, then any other group (``train``, ``heldout``)."""
    triplets = [group_label(g) for g in groups if isinstance(g, int)]
    others = [group_label(g) for g in groups if not isinstance(g, int)]
    return triplets + ([AVERAGE] if triplets else []) + others


def format_rate(cell: dict[str, Any] | None) -> str:
    """``72.0 % (58.3–82.5), n=50``."""
    if not cell or not cell["n"]:
        return NO_VALUE
    return (
        f"{PERCENT * cell['rate']:.1f} % ({PERCENT * cell['ci_low']:.1f}–{PERCENT * cell['ci_high']:.1f}), "
        f"n={cell['n']}"
    )


def _number(value: float | None, digits: int = 1) -> str:
    return NO_VALUE if value is None else f"{value:.{digits}f}"


@dataclass
class EvalReport:
    """What `gato-ros eval` found. `summary[policy][column]`: successes, n, rate, ci_low, ci_high, errors."""

    config: dict[str, Any]
    policies: list[str]
    groups: list[int | str]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, Any]]]
    per_policy: dict[str, dict[str, Any]]  # latency over all its samples, interventions per episode
    jobs: list[dict[str, Any]] = field(default_factory=list)
    latency_samples_ms: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return table_columns(self.groups)

    @property
    def errors(self) -> int:
        return sum(row["error"] is not None for row in self.rows)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and bool(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "policies": self.policies,
            "groups": self.groups,
            "columns": self.columns,
            "summary": self.summary,
            "per_policy": self.per_policy,
            "errors": self.errors,
            "wall_s": self.wall_s,
            "jobs": self.jobs,
            "episodes": self.rows,
        }

    def markdown(self) -> str:
        columns = self.columns
        lines = [
            "| policy | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for policy in self.policies:
            cells = [format_rate(self.summary[policy].get(c)) for c in columns]
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| policy | latency p50 (ms) | latency p99 (ms) | clamps / episode | holds / episode |",
            "|---|---|---|---|---|",
        ]
        for policy in self.policies:
            p = self.per_policy[policy]
            lines.append(
                f"| {policy} | {_number(p['latency_p50_ms'])} | {_number(p['latency_p99_ms'])} | "
                f"{_number(p['clamps_per_episode'])} | {_number(p['holds_per_episode'])} |"
            )
        if self.errors:
            failed = sorted({(r["policy"], group_label(r["group"])) for r in self.rows if r["error"]})
            where = ", ".join(f"{p} / {g}" for p, g in failed)
            lines += ["", f"**{self.errors} episodes did not run to the end** ({where}); see results.json."]
        return "\n".join(lines) + "\n"


def summarize(
    policies: Sequence[str],
    groups: Sequence[int | str],
    rows: Sequence[dict[str, Any]],
    latency_samples_ms: dict[str, list[float]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Per policy: success per group column (+ the pooled average over triplet groups) and the latency and
    intervention figures. Errored episodes count in `errors`, not in n."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    per_policy: dict[str, dict[str, Any]] = {}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        cells: dict[str, dict[str, Any]] = {}
        for group in groups:
            cells[group_label(group)] = _cell([r for r in mine if r["group"] == group])
        triplet_rows = [r for r in mine if isinstance(r["group"], int)]
        if any(isinstance(g, int) for g in groups):
            cells[AVERAGE] = _cell(triplet_rows)
        summary[policy] = cells
        done = [r for r in mine if r["error"] is None]
        measured = [r for r in done if r["clamps"] is not None]
        per_policy[policy] = {
            **latency_summary(np.asarray(latency_samples_ms.get(policy, []), dtype=float) / MS_PER_S),
            "episodes": len(done),
            "clamps_per_episode": float(np.mean([r["clamps"] for r in measured])) if measured else None,
            "holds_per_episode": float(np.mean([r["holds"] for r in measured])) if measured else None,
        }
    return summary, per_policy


def _cell(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["error"] is None]
    cell = success_summary(sum(bool(r["success"]) for r in done), len(done))
    cell["errors"] = len(rows) - len(done)
    return cell


def write_outputs(report: EvalReport, out_dir: Path) -> dict[str, str]:
    """results.json, results.md, success.png and latency.png into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / RESULTS_JSON,
        "markdown": out_dir / RESULTS_MD,
        "success_plot": out_dir / SUCCESS_PNG,
        "latency_plot": out_dir / LATENCY_PNG,
    }
    report.paths = {k: str(v) for k, v in paths.items()}
    _write_text(paths["json"], json.dumps(report.to_json(), indent=2) + "\n")
    _write_text(paths["markdown"], report.markdown())
    for key, plot in (("success_plot", plot_success), ("latency_plot", plot_latency)):
        try:
            plot(report, paths[key])
        except Exception as err:  # a plotting problem must not cost the results written above
            print(f"warning: could not plot {paths[key]}: {err!r}", file=sys.stderr)
            report.paths.pop(key)
    return report.paths


def _write_text(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(report: EvalReport, path: Path) -> None:
    """Grouped bars: success per group column, one colour per policy, Wilson 95% intervals as error bars."""
    plt = _pyplot()
    columns = report.columns
    count = max(1, len(report.policies))
    width = 0.8 / count
    x = np.arange(len(columns))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(columns) * max(1.0, count / 2)), 4.2))
    for i, policy in enumerate(report.policies):
        cells = [report.summary[policy].get(c) for c in columns]
        rates = np.array([PERCENT * (c["rate"] or 0.0) if c and c["n"] else np.nan for c in cells])
        low = np.array([PERCENT * c["ci_low"] if c and c["n"] else np.nan for c in cells])
        high = np.array([PERCENT * c["ci_high"] if c and c["n"] else np.nan for c in cells])
        offsets = x - 0.4 + width * (i + 0.5)
        ax.bar(offsets, rates, width, label=policy, color=f"C{i % 10}")
        yerr = np.clip([rates - low, high - rates], 0.0, None)  # (the interval contains the rate)
        ax.errorbar(offsets, rates, yerr=yerr, fmt="none", ecolor="black", capsize=3, lw=1)
        for offset, rate in zip(offsets, rates, strict=True):  # a 0 % bar is otherwise invisible
            if np.isfinite(rate):
                ax.text(offset, rate, f"{rate:.0f}", ha="center", va="bottom", fontsize="x-small")
    if AVERAGE in columns:  # the average is not a group of its own
        ax.axvline(columns.index(AVERAGE) - 0.5, color="grey", lw=0.8, ls="--")
        ax.axvline(columns.index(AVERAGE) + 0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, columns)
    ax.set_xlim(-0.5, len(columns) - 0.5)
    ax.set_ylim(0, PERCENT * Y_HEADROOM)  # room for the labels of full bars
    ax.set_yticks(np.linspace(0, PERCENT, 6))
    ax.set_ylabel("success (%)")
    groups = [group_label(g) for g in report.groups]
    n = {report.summary[p][g]["n"] for p in report.policies for g in groups if report.summary[p][g]["n"]}
    per_group = f"n = {n.pop()} per group" if len(n) == 1 else "n varies"
    ax.set_title(f"Success per object group (Wilson 95% interval, {per_group})")
    columns_in_legend = min(count, LEGEND_COLUMNS)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=columns_in_legend, fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def plot_latency(report: EvalReport, path: Path) -> None:
    """Histogram of the policy node's observation-to-action latency per policy that published any."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    with_samples = [(i, p) for i, p in enumerate(report.policies) if report.latency_samples_ms.get(p)]
    if with_samples:
        every = np.concatenate([np.asarray(report.latency_samples_ms[p]) for _, p in with_samples])
        bins = np.linspace(0.0, float(np.max(every)) * 1.05 + 1e-9, LATENCY_BINS + 1)
        for i, policy in with_samples:
            samples = np.asarray(report.latency_samples_ms[policy])
            p50, p99 = np.percentile(samples, [50, 99])
            label = f"{policy}: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            ax.hist(samples, bins=bins, alpha=0.6, label=label, color=f"C{i % 10}")
        ax.set_xlabel("policy step latency, observation to action (ms)")
        ax.set_ylabel("control steps")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no policy latency samples\n(baselines act in the twin)", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Policy step latency")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
