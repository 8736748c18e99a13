"""An MLP behaviour-cloning baseline on a state-policy data mixture, rolled out like `gato-ros check`.

    python scripts/mlp_baseline.py +experiment=state_policy training.data.root=data \\
        "evaluation.groups=[1,2,3,4,5,train]" evaluation.episodes_per_group=10

Trains on every mixture source of positive weight (gato_ros/evaluation/mlp_baseline.py says why this
exists: it tells a data limit from a model limit), then drives lock-step twin episodes on evaluation's
groups and seeds, the ones `gato-ros check` uses, and prints one Markdown row (Wilson 95 % intervals).
`--steps/--width/--layers/--seed` size the MLP; the rest are config overrides.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from gato_ros.config import load_config
from gato_ros.evaluation.mlp_baseline import MlpSettings, train_mlp
from gato_ros.evaluation.report import AVERAGE, format_rate, group_label, table_columns
from gato_ros.evaluation.stats import success_summary
from gato_ros.evaluation.success_check import CheckpointRunner
from gato_ros.tools.eval import parse_group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = MlpSettings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(overrides)
    settings = MlpSettings(width=args.width, layers=args.layers, steps=args.steps, seed=args.seed)
    start = time.perf_counter()
    policy, losses = train_mlp(cfg, settings)
    print(
        f"trained {settings} in {time.perf_counter() - start:.0f} s; loss "
        + ", ".join(f"{step}: {loss:.4f}" for step, loss in losses)
    )
    groups = [parse_group(g, cfg) for g in cfg.evaluation.groups]
    seeds = [int(cfg.evaluation.first_seed) + i for i in range(int(cfg.evaluation.episodes_per_group))]
    cells, triplet_successes, triplet_trials = {}, 0, 0
    for group in groups:
        runner = CheckpointRunner(cfg, None, group, policy=policy.act)
        try:
            outcomes, _ = runner.episodes(seeds, str(cfg.twin.episode.mode))
        finally:
            runner.close()
        cells[group_label(group)] = success_summary(sum(outcomes), len(outcomes))
        if isinstance(group, int):
            triplet_successes += sum(outcomes)
            triplet_trials += len(outcomes)
        print(f"{group_label(group)}: {sum(outcomes)}/{len(outcomes)}", flush=True)
    if triplet_trials:
        cells[AVERAGE] = success_summary(triplet_successes, triplet_trials)
    columns = table_columns(groups)
    print("| policy | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    print(
        f"| MLP baseline (seeds {seeds[0]}-{seeds[-1]}) | "
        + " | ".join(format_rate(cells.get(c)) for c in columns)
        + " |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
