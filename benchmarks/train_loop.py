"""Training-loop throughput with and without batch prefetching (``training.prefetch_batches``), measured
in one run, alternating, on the episodes a user trains on: tokens per second of the whole loop (sampler +
forward + backward + AdamW), and the ratio. The sampler's own rate against the model's is
`benchmarks/frames.py`; this is what a run gets end to end.

    .venv/bin/python benchmarks/train_loop.py --steps 12 --repeats 2 +experiment=image_policy_cpu \\
        training.data.root=DATA training.num_threads=2
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


def loop_rate(overrides: list[str], steps: int, prefetch: bool, out_dir: Path) -> float:
    """Tokens/s of `steps` training steps after one warm-up step (a fresh run each time)."""
    common = [
        *overrides,
        f"training.steps={steps + 1}",
        "training.checkpoint_every=100000",
        "training.success_check.every=0",
        "training.progress=false",
        "training.plot=false",
        "training.log_every=1",
        f"training.prefetch_batches={prefetch}",
        f"training.out_dir={out_dir}",
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
    parser.add_argument("--repeats", type=int, default=2, help="off/on pairs, alternating")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides (the preset, data root, threads)")
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="gato_train_loop_") as tmp:
        for repeat in range(args.repeats):
            for prefetch in (False, True):
                out = Path(tmp) / f"r{repeat}_{prefetch}"
                rate = loop_rate(args.overrides, args.steps, prefetch, out)
                rates[prefetch].append(rate)
                print(f"prefetch {'on ' if prefetch else 'off'}: {rate:,.0f} tokens/s", flush=True)
    off, on = float(np.median(rates[False])), float(np.median(rates[True]))
    print(f"median: off {off:,.0f}, on {on:,.0f} tokens/s -> {on / off:.2f}x with prefetching")
    if args.json:
        from docs_page import run_record

        figures = {"tokens_per_s_off": off, "tokens_per_s_on": on, "ratio": on / off, "runs": rates}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run_record("train_loop", figures), indent=2))


if __name__ == "__main__":
    main()
