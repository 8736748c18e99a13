"""`gato-ros train [key=value ...]`: train a Gato policy on recorded episodes.

Everything comes from the config (`training.*` for the optimiser and run directory, `training.data.*` for
the episode mixture, `model=` for the size). Under `torchrun --nproc-per-node N -m gato_ros.cli train ...`
the same command trains with DistributedDataParallel.
"""

from __future__ import annotations

from gato_ros.config import load_config
from gato_ros.gato.train import DistContext, train


def main(argv: list[str]) -> int:
    cfg = load_config(argv)
    result = train(cfg)
    if DistContext.from_env().is_main:
        last = result.losses[-1] if result.losses else float("nan")
        print(f"trained {cfg.model.name} to step {result.step}: last loss {last:.4f}")
        print(f"  throughput {result.tokens_per_s:,.0f} tokens/s (padded batch tokens, all ranks)")
        if result.checkpoint is not None:
            print(f"  checkpoint {result.checkpoint}")
        print(f"  log {cfg.training.out_dir}/log.jsonl")
    return 0
