"""Training curves: `log.jsonl` of a run (one JSON record per logged step) -> a PNG of loss and learning rate.

The trainer redraws the PNG at every checkpoint, so a long run can be watched with an image viewer; a
finished (or running) run can be redrawn with `python -m gato_ros.gato.curves <run_dir>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

LOG_NAME = "log.jsonl"
PLOT_NAME = "loss.png"
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


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m gato_ros.gato.curves <run_dir | log.jsonl>", file=sys.stderr)
        return 2
    path = Path(args[0])
    log = path / LOG_NAME if path.is_dir() else path
    print(plot_training_log(log, title=log.parent.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
