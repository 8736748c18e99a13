"""Training curves: `log.jsonl` of a run (one JSON record per logged step) -> a PNG of loss and learning rate;
`success.jsonl` (the in-training success check, gato_ros/evaluation/success_check.py) -> success against
steps; several runs' success logs -> best success against training-data size.

The trainer redraws the PNGs at every checkpoint, so a long run can be watched with an image viewer; a
finished (or running) run can be redrawn with `python -m gato_ros.gato.curves <run_dir>`, and runs on
data subsets (``training.data.max_episodes``) compared with
`python -m gato_ros.gato.curves --data-size <run_dir> <run_dir> ... [-o success_vs_data.png]`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LOG_NAME = "log.jsonl"
PLOT_NAME = "loss.png"
SUCCESS_LOG_NAME = "success.jsonl"
SUCCESS_PLOT_NAME = "success.png"
DATA_PLOT_NAME = "success_vs_data.png"
SMOOTHING_WINDOW = 10  # logged points in the running mean drawn over the raw loss


def read_log(path: str | Path) -> list[dict]:
    """Records of a log.jsonl; a line cut short by a crash is skipped. A resumed run appends records for
    steps it repeats: the newest record of a step wins."""
    records: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
            records[int(record["step"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    return [records[step] for step in sorted(records)]


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` points (same length as `values`)."""
    if len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumulative[idx] - cumulative[start]) / (idx - start)


def plot_training_log(log_path: str | Path, png_path: str | Path | None = None, title: str = "") -> Path:
    """Draw the loss (raw and smoothed, log scale) and the learning rate over steps; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_path = Path(log_path)
    png = Path(png_path) if png_path is not None else log_path.with_name(PLOT_NAME)
    records = read_log(log_path)
    if not records:
        raise ValueError(f"{log_path} holds no training records")
    steps = np.array([r["step"] for r in records], dtype=float)
    loss = np.array([r["loss"] for r in records], dtype=float)
    lr = np.array([r.get("lr", np.nan) for r in records], dtype=float)
    fig, (ax_loss, ax_lr) = plt.subplots(
        2, 1, figsize=(7.0, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss (logged steps)")
    ax_loss.plot(steps, running_mean(loss, SMOOTHING_WINDOW), color="tab:blue", label="running mean")
    if np.all(loss > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("masked NLL (nats / target token)")
    ax_loss.grid(True, which="both", alpha=0.3)
    ax_loss.legend(loc="upper right")
    last = records[-1]
    summary = f"step {int(last['step'])}: loss {last['loss']:.4f}"
    if "tokens_per_s" in last:
        summary += f", {last['tokens_per_s']:,.0f} tokens/s"
    ax_loss.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    ax_lr.plot(steps, lr, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(True, alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rate_and_errors(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    rate = np.array([r["success_rate"] for r in records], dtype=float)
    lo = np.array([r.get("interval", [r["success_rate"]] * 2)[0] for r in records], dtype=float)
    hi = np.array([r.get("interval", [r["success_rate"]] * 2)[1] for r in records], dtype=float)
    return 100 * rate, 100 * np.stack([rate - lo, hi - rate])


def plot_success_log(log_path: str | Path, png_path: str | Path | None = None, title: str = "") -> Path:
    """Success rate of each in-training check over steps, with its Wilson 95 % interval."""
    log_path = Path(log_path)
    png = Path(png_path) if png_path is not None else log_path.with_name(SUCCESS_PLOT_NAME)
    records = sorted(read_log(log_path), key=lambda r: r["step"])
    if not records:
        raise ValueError(f"{log_path} holds no success checks")
    plt = _pyplot()
    steps = np.array([r["step"] for r in records], dtype=float)
    rate, errors = _rate_and_errors(records)
    fig, ax = plt.subplots(figsize=(7.0, 3.5))
    ax.errorbar(steps, rate, yerr=errors, marker="o", capsize=3, color="tab:green")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("success (%)")
    ax.grid(True, alpha=0.3)
    last = records[-1]
    seeds = last.get("seeds") or [0]
    summary = (
        f"{last['episodes']} twin episodes per check ({last.get('objects', '?')} objects, seeds "
        f"{seeds[0]}..{seeds[-1]}); best {max(rate):.0f} %"
    )
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_success_vs_data(run_dirs: list[str | Path], png_path: str | Path) -> Path:
    """Best checked success of each run against the number of training episodes it saw."""
    points = []
    for run in run_dirs:
        records = read_log(Path(run) / SUCCESS_LOG_NAME)
        sized = [r for r in records if r.get("data_episodes")]
        if not sized:
            raise ValueError(f"{run}: no success check with a recorded data size")
        best = max(sized, key=lambda r: (r["success_rate"], r["step"]))
        points.append((int(best["data_episodes"]), best, Path(run).name))
    points.sort(key=lambda p: p[0])
    plt = _pyplot()
    sizes = np.array([p[0] for p in points], dtype=float)
    rate, errors = _rate_and_errors([p[1] for p in points])
    fig, ax = plt.subplots(figsize=(7.0, 3.5))
    ax.errorbar(sizes, rate, yerr=errors, marker="o", capsize=3, color="tab:purple")
    for size, r, (_, _, name) in zip(sizes, rate, points, strict=True):
        ax.annotate(name, (size, r), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training episodes")
    ax.set_ylabel("best checked success (%)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m gato_ros.gato.curves <run_dir | log.jsonl>\n"
        "       python -m gato_ros.gato.curves --data-size <run_dir> [<run_dir> ...] [-o out.png]"
    )
    if args and args[0] == "--data-size":
        runs, out = args[1:], DATA_PLOT_NAME
        if "-o" in runs:
            i = runs.index("-o")
            if i + 1 >= len(runs):
                print(usage, file=sys.stderr)
                return 2
            out = runs[i + 1]
            runs = runs[:i] + runs[i + 2 :]
        if not runs:
            print(usage, file=sys.stderr)
            return 2
        print(plot_success_vs_data(runs, out))
        return 0
    if len(args) != 1:
        print(usage, file=sys.stderr)
        return 2
    path = Path(args[0])
    log = path / LOG_NAME if path.is_dir() else path
    print(plot_training_log(log, title=log.parent.name))
    success = log.with_name(SUCCESS_LOG_NAME)
    if success.is_file():
        print(plot_success_log(success, title=log.parent.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
