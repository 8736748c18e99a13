"""`gato-ros train [key=value ...]`: train a Gato policy on recorded episodes.

Everything comes from the config (`training.*` for the optimiser and run directory, `training.data.*` for
the episode mixture, `model=` for the size, `+experiment=` for a preset). The run directory gets
`log.jsonl`, `loss.png` (redrawn at every checkpoint) and `checkpoints/`; with `training.success_check.every`
> 0 (the default) also `success.jsonl`, `success.png` and `checkpoints/best`, the checkpoint that stacked
most often in the in-process twin check. With `training.eval_at_end=true`
the final checkpoint is evaluated through the ROS 2 stack (`gato-ros eval`, config `evaluation.*`, output in
`<out_dir>/eval` unless `evaluation.out_dir` is given); `gato-ros eval evaluation.checkpoint=DIR` does the
same on demand. Under `torchrun --nproc-per-node N -m gato_ros.cli train ...` the same command trains with
DistributedDataParallel.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gato_ros.config import load_config
from gato_ros.gato.train import DistContext, adopt_init_architecture, check_training_config, train

DEFAULT_EVAL_DIR = "outputs/eval"  # evaluation.out_dir's default: redirected into the run directory


def evaluate_checkpoint(cfg: DictConfig, checkpoint: Path) -> bool:
    """`gato-ros eval` of a freshly trained checkpoint; returns whether every episode ran."""
    from gato_ros.tools.eval import evaluate

    cfg = cfg.copy()
    OmegaConf.update(cfg, "evaluation.checkpoint", str(checkpoint))
    if str(cfg.evaluation.out_dir) == DEFAULT_EVAL_DIR:
        OmegaConf.update(cfg, "evaluation.out_dir", str(Path(str(cfg.training.out_dir)) / "eval"))
    report = evaluate(cfg)
    print(f"evaluation of {checkpoint} in {cfg.evaluation.out_dir} ({'ok' if report.ok else 'with errors'})")
    return bool(report.ok)


def success_check_hook(cfg: DictConfig):
    """The in-training success check of `training.success_check` (None when it is off or on a rank
    other than 0), told the size of the training data for success-vs-data curves."""
    from gato_ros.evaluation.success_check import SuccessCheck, check_settings
    from gato_ros.gato.dataset import mixture_size

    if check_settings(cfg.training) is None or not DistContext.from_env().is_main:
        return None
    episodes, steps = mixture_size(cfg)
    return SuccessCheck(cfg, data_episodes=episodes, data_steps=steps)


def check_shape_versions(cfg: DictConfig) -> None:
    """Refuse episodes whose `objects/shape` has another version than the run's `twin.shape_version`: the
    policy would learn from features it is never fed (scripts/add_shape_features.py rewrites them). `cfg`
    is the run's: with `training.init_from`, after `adopt_init_architecture` (its tokenizer decides)."""
    from gato_ros.gato.dataset import mixture_sources, source_dataset
    from gato_ros.gato.tokenizer import ObservationTokenizer
    from gato_ros.twin.shape import SHAPE_KEY, episode_shape_version, shape_version

    if SHAPE_KEY not in ObservationTokenizer(cfg).observation_keys:
        return
    wanted = shape_version(cfg)
    for source in mixture_sources(cfg):
        found = sorted({episode_shape_version(m) for m in source_dataset(source).metadata} - {wanted})
        if found:
            raise ValueError(
                f"training.data.mixture.{source.name} ({source.path}) holds {SHAPE_KEY} of version {found}, "
                f"the run twin.shape_version={wanted}: rewrite them (python scripts/add_shape_features.py "
                f"SRC DST --shape-version {wanted}) or train with twin.shape_version={found[0]}"
            )


def main(argv: list[str]) -> int:
    cfg = load_config(argv)
    check_training_config(cfg.training)  # before any dataset is opened
    if cfg.training.get("init_from"):
        # Once, here: train() adopting it again finds nothing left to change and says nothing.
        cfg = adopt_init_architecture(cfg)
    if DistContext.from_env().is_main:
        check_shape_versions(cfg)
    check = success_check_hook(cfg)
    try:
        result = train(cfg, on_checkpoint=check)
    finally:
        if check is not None:
            check.close()
    if not DistContext.from_env().is_main:
        return 0
    last = result.losses[-1] if result.losses else float("nan")
    name = cfg.model.name
    if result.checkpoint is not None:  # the model trained (fine-tuning adopts init_from's)
        from gato_ros.gato.checkpoint import read_checkpoint_config

        name = read_checkpoint_config(result.checkpoint)["config"]["model"].get("name", name)
    print(f"trained {name} to step {result.step}: last loss {last:.4f}")
    print(f"  throughput {result.tokens_per_s:,.0f} tokens/s (padded batch tokens, all ranks)")
    if result.checkpoint is not None:
        print(f"  checkpoint {result.checkpoint}")
    print(f"  log {cfg.training.out_dir}/log.jsonl, curve {cfg.training.out_dir}/loss.png")
    if check is not None and check.best_rate >= 0:
        print(
            f"  best checked success {100 * check.best_rate:.0f} %: {cfg.training.out_dir}/checkpoints/best "
            f"(checks in success.jsonl, curve success.png)"
        )
    if bool(cfg.training.get("eval_at_end", False)) and result.checkpoint is not None:
        return 0 if evaluate_checkpoint(cfg, result.checkpoint) else 1
    return 0
