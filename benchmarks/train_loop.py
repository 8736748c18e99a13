"""Training-loop throughput under two values of one setting, measured in one run, alternating, on the
episodes a user trains on: tokens per second of the whole loop (sampler + forward + backward + AdamW), and
the ratio. By default the setting is batch prefetching (``training.prefetch_batches``); ``--compare``
names another, e.g. bf16 autocast against fp32 on a CPU with AMX. The sampler's own rate against the
model's is `benchmarks/frames.py`; this is what a run gets end to end.

    .venv/bin/python benchmarks/train_loop.py --steps 12 --repeats 2 +experiment=image_policy_cpu \\
        training.data.root=DATA training.num_threads=2
    .venv/bin/python benchmarks/train_loop.py --compare training.precision=fp32,bf16 \\
        +experiment=state_policy training.data.root=DATA training.num_threads=2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gato_ros.config import load_config
from gato_ros.gato.train import train


def loop_rate(overrides: list[str], steps: int, setting: str, out_dir: Path) -> float:
    """Tokens/s of `steps` training steps after one warm-up step (a fresh run each time)."""
    common = [
        *overrides,
        f"training.steps={steps + 1}",
        "training.checkpoint_every=100000",
        "training.success_check.every=0",
        "training.progress=false",
        "training.plot=false",
        "training.log_every=1",
        f"training.out_dir={out_dir}",
        setting,
    ]
    cfg = load_config(common)
    train(cfg)
    log = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    # from the end of the warm-up step to the last: the loop's own rate
    first, last = log[0], log[-1]
    seconds = last["time"] - first["time"]
    tokens = int(cfg.training.batch_size) * int(cfg.training.sequence_length) * (len(log) - 1)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="baseline/candidate pairs, alternating")
    parser.add_argument(
        "--compare",
        default="training.prefetch_batches=false,true",
        help="KEY=BASELINE,CANDIDATE: the setting measured (default: prefetching off, on)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides (the preset, data root, threads)")
    args = parser.parse_args()
    key, _, values = args.compare.partition("=")
    labels = values.split(",")
    if not key or len(labels) != 2:
        parser.error(f"--compare wants KEY=BASELINE,CANDIDATE, not {args.compare!r}")
    rates: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory(prefix="gato_train_loop_") as tmp:
        for repeat in range(args.repeats):
            for index, label in enumerate(labels):
                out = Path(tmp) / f"r{repeat}_{index}"
                rate = loop_rate(args.overrides, args.steps, f"{key}={label}", out)
                rates[label].append(rate)
                print(f"{key}={label}: {rate:,.0f} tokens/s", flush=True)
    base, candidate = (float(np.median(rates[label])) for label in labels)
    print(
        f"median: {key}={labels[0]} {base:,.0f}, ={labels[1]} {candidate:,.0f} tokens/s"
        f" -> {candidate / base:.2f}x"
    )
    if args.json:
        from docs_page import run_record

        figures = {
            "setting": key,
            "baseline": labels[0],
            "candidate": labels[1],
            "tokens_per_s_baseline": base,
            "tokens_per_s_candidate": candidate,
            "ratio": candidate / base,
            "runs": rates,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run_record("train_loop", figures), indent=2))


if __name__ == "__main__":
    main()
