"""`gato-ros check [key=value ...]`: success rates of checkpoints (and the scripted expert) in lock-step twin
episodes, in-process, without ROS: the quick counterpart of `gato-ros eval` for comparing training runs.

It reads the same ``evaluation.*`` keys (groups, episodes_per_group, first_seed, workers, baselines) and
``twin.episode`` rule, so its seeds and success definition match the ROS evaluation; what it leaves out is
the ROS transport, the command node's limits and real-time pacing (the decoded action goes straight to
the twin, which clips it to the action bounds). Use `gato-ros eval` for numbers that go in a model card.

    gato-ros check +experiment=state_policy check.checkpoints=[runs/bc/checkpoints/best,runs/dart/...] \\
        evaluation.baselines=[expert] evaluation.groups=[1,2,3,4,5,train] evaluation.episodes_per_group=20

``check.expert_dims=[0,1,2,3]`` lets a shadow scripted expert supply those action dimensions (x, y, z, yaw,
gripper) while the checkpoint supplies the rest: which parts of the behaviour keep a policy from stacking.
``check.explain=true`` has the shadow expert read every failed episode: its stage runs, the first setback
(lost red, the stack came apart, or the stage the time ran out in) and the mean |action - expert label| per
dimension, printed and kept in ``check.json`` (``failures``), with the setbacks counted per policy.

Prints a Markdown table (Wilson 95 % intervals) and writes ``check.json`` and ``check.md`` to
``check.out_dir``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gato_ros.config import load_config
from gato_ros.evaluation.report import format_rate, group_label, table_columns
from gato_ros.evaluation.stats import success_summary
from gato_ros.tools.eval import parse_group, worker_seeds
from gato_ros.tools.workers import die_with_parent

EXPERT = "expert"
AVERAGE_COLUMN = "Average"


def _run_job(
    plain_cfg: dict[str, Any],
    checkpoint: str | None,
    group: Any,
    seeds: list[int],
    expert_dims: list[int],
    explain: bool = False,
) -> dict:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from gato_ros.evaluation.success_check import CheckpointRunner

    torch.set_num_threads(1)  # one process per core
    cfg = OmegaConf.create(plain_cfg)
    # The expert row ignores expert_dims.
    runner = CheckpointRunner(cfg, checkpoint, group, expert_dims, explain=explain)
    try:
        outcomes, errors = runner.episodes(seeds, str(cfg.twin.episode.mode))
    finally:
        runner.close()
    failures = [e.record() for e in runner.explanations if not e.success]
    return {"group": group, "seeds": seeds, "outcomes": outcomes, "errors": errors, "failures": failures}


def policy_name(path: Any) -> str:
    """A row name: ``run/best`` for ``run/checkpoints/best``, the directory's name otherwise."""
    path = Path(str(path))
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def parse_groups(cfg: DictConfig) -> list[int | str]:
    """`evaluation.groups`, validated as `gato-ros eval` does (an unknown group is a one-line error)."""
    return [parse_group(g, cfg) for g in cfg.evaluation.groups]


def check(cfg: DictConfig) -> dict[str, Any]:
    """Run every (policy, group) job; returns {policy: {column: summary}} plus the raw outcomes."""
    expert_dims = [int(d) for d in cfg.check.get("expert_dims") or []]
    explain = bool(cfg.check.get("explain", False))
    suffix = f" + expert {expert_dims}" if expert_dims else ""
    policies: list[tuple[str, str | None]] = [
        (policy_name(p) + suffix, str(p)) for p in cfg.check.checkpoints or []
    ]
    if EXPERT in [str(b) for b in cfg.evaluation.baselines]:
        policies.append((EXPERT, None))
    if not policies:
        raise ValueError("nothing to check: set check.checkpoints=[...] and/or evaluation.baselines=[expert]")
    groups = parse_groups(cfg)
    episodes, first = int(cfg.evaluation.episodes_per_group), int(cfg.evaluation.first_seed)
    workers = int(cfg.evaluation.workers)
    if episodes < 1 or workers < 1 or first < 0:
        raise ValueError(
            "evaluation.episodes_per_group and evaluation.workers must be >= 1 and evaluation.first_seed "
            f">= 0, got {episodes}, {workers}, {first}"
        )
    plain = OmegaConf.to_container(cfg, resolve=True)
    jobs = []
    for name, checkpoint in policies:
        for group in groups:
            for w in range(workers):  # seeds split across workers as eval splits them, rejoined in order
                share = list(worker_seeds(first, episodes, w, workers))
                if share:
                    jobs.append((name, checkpoint, group, share))
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # no torch/MuJoCo state forked into the workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=die_with_parent) as pool:
        futures = [
            (name, pool.submit(_run_job, plain, ckpt, group, seeds, expert_dims, explain))
            for name, ckpt, group, seeds in jobs
        ]
        results = [(name, future.result()) for name, future in futures]
    outcomes: dict[str, dict[str, dict[int, bool]]] = {}
    errors: dict[str, int] = {}
    failures: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name, result in results:
        label = group_label(result["group"])
        per_group = outcomes.setdefault(name, {}).setdefault(label, {})
        per_group.update(zip(result["seeds"], result["outcomes"], strict=True))
        errors[name] = errors.get(name, 0) + int(result["errors"])
        if explain:
            failures.setdefault(name, {}).setdefault(label, []).extend(result["failures"])
    summary: dict[str, dict[str, Any]] = {}
    triplets = [group_label(g) for g in groups if isinstance(g, int)]
    for name, per_group in outcomes.items():
        cells = {col: success_summary(sum(v.values()), len(v)) for col, v in per_group.items()}
        if triplets:
            pooled = [ok for col in triplets for ok in per_group.get(col, {}).values()]
            cells[AVERAGE_COLUMN] = success_summary(sum(pooled), len(pooled))
        summary[name] = cells
    return {
        "policies": {name: ckpt for name, ckpt in policies},
        "groups": [str(g) for g in groups],
        "seeds": [first, first + episodes - 1],
        "episode_mode": str(cfg.twin.episode.mode),
        "summary": summary,
        "outcomes": {
            n: {c: {str(s): ok for s, ok in v.items()} for c, v in g.items()} for n, g in outcomes.items()
        },
        "decoder_errors": errors,
        "expert_dims": expert_dims,
        **({"failures": failures} if explain else {}),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def markdown(result: dict[str, Any], groups: list[int | str]) -> str:
    columns = table_columns(groups)
    lines = [
        f"In-process twin check (`gato-ros check`, no ROS), seeds {result['seeds'][0]}..{result['seeds'][1]} "
        f"per group, episode rule `{result['episode_mode']}`; success % (Wilson 95 % interval), n.",
        "",
        "| policy | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, cells in result["summary"].items():
        lines.append(f"| {name} | " + " | ".join(format_rate(cells.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def explanation_lines(result: dict[str, Any]) -> list[str]:
    """Per policy: each failed episode (group, seed, first setback, |action - label| per dimension, stage
    runs), then the failures counted by first setback."""
    lines = []
    for name, per_group in result.get("failures", {}).items():
        lines.append(f"{name}: failed episodes: group, seed, setback, |action - expert label|, stage runs")
        reasons: Counter[str] = Counter()
        for group, failed in per_group.items():
            for episode in failed:
                reasons[episode["setback"]] += 1
                error = " ".join(f"{e:.3g}" for e in episode["action_error"])
                where = f"{group} seed {episode['seed']} ({episode['setback']})"
                lines.append(f"  {where} [{error}]: {episode['stage_runs']}")
        lines.extend(f"  {count:3d} x {reason}" for reason, count in reasons.most_common())
    return lines


def main(argv: list[str]) -> int:
    cfg = load_config(argv)
    try:
        result = check(cfg)
    except ValueError as err:
        print(f"gato-ros check: {err}")
        return 2
    out_dir = Path(str(cfg.check.out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(result, parse_groups(cfg))
    (out_dir / "check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "check.md").write_text(table)
    print(table)
    for line in explanation_lines(result):
        print(line)
    print(f"{result['wall_seconds']:.0f} s; {out_dir / 'check.json'}, {out_dir / 'check.md'}")
    return 0
