"""Twin speed and scripted-expert success, measured (not asserted).

    .venv/bin/python benchmarks/twin.py                       # speed + 50 episodes per triplet, 2 workers
    .venv/bin/python benchmarks/twin.py --episodes 5          # quick
    .venv/bin/python benchmarks/twin.py --skip-speed --triplets 1,2,3,4,5,train --episodes 100  # the table
    .venv/bin/python benchmarks/twin.py --skip-speed --triplets 3 --episodes 100 twin.expert.max_attempts=5

Speed: simulated seconds per wall-clock second of `StackingTwin.step` while the expert works (contacts,
grasps), with and without rendering both policy cameras. Success: the episode rule of `twin.episode.mode`
(default: the benchmark's, the sparse reward at the last of 400 steps), seeds 0..episodes-1 per triplet,
with a Wilson 95 % interval; time to success is when the successful stack first stood. Divergences: episodes
MuJoCo reset for a bad acceleration (never a success). Trailing key=value arguments are hydra overrides.

`--explain` also prints, per failed episode, the objects and the expert's stages as runs (`CARRY:13` = 13
control steps in CARRY), and counts the failures by their first setback: red lost while grasped or carried
(`lost red after LIFT`), the stack coming apart after the release, or no setback at all (time ran out, named
by the stage the episode ended in). That is where to look when improving the expert.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gato_ros.config import load_config
from gato_ros.evaluation.setbacks import first_setback, format_runs, stage_runs
from gato_ros.evaluation.stats import wilson_interval
from gato_ros.twin import EXPERT_VERSION, TWIN_VERSION, ScriptedExpert, StackingTwin


def measure_speed(overrides: list[str], render: bool, steps: int, seed: int) -> float:
    """Simulated seconds per wall second of twin.step (expert actions; resets excluded)."""
    cfg = load_config(overrides)
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg, render=render) as twin:
        twin.reset(seed=seed)
        expert.reset()
        twin.step([0.0] * 5)  # first render creates the GL context: not part of the rate
        wall, simulated = 0.0, 0.0
        for _ in range(steps):
            action = expert.act(twin)
            start = time.perf_counter()
            result = twin.step(action)
            wall += time.perf_counter() - start
            simulated += twin.control_period
            if result.done:
                seed += 1
                twin.reset(seed=seed)
                expert.reset()
    return simulated / wall


def run_episode(job: tuple[list[str], str, int]) -> dict:
    overrides, triplet, seed = job
    objects = ["twin.objects=train"] if triplet == "train" else [f"twin.triplet={triplet}"]
    cfg = load_config([*overrides, *objects, "twin.render=false"])
    expert = ScriptedExpert(cfg)
    start = time.perf_counter()
    with StackingTwin(cfg) as twin:
        twin.reset(seed=seed)
        expert.reset()
        result = None
        stages = []
        for _ in range(twin.max_steps):
            result = twin.step(expert.act(twin))
            stages.append(expert.stage.name)
            if result.done:
                break
    return {
        "triplet": triplet,
        "seed": seed,
        "success": bool(result.success),
        "seconds": result.info["stacked_since"] if result.success else None,
        "attempts": min(expert.attempts, int(cfg.twin.expert.max_attempts)),
        "unstable": bool(result.info["physics_unstable"]),
        "wall": time.perf_counter() - start,
        "objects": list(twin.object_ids or ()),
        "stage_runs": stage_runs(stages),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=50, help="seeded episodes per triplet")
    parser.add_argument("--triplets", default="1,2,3,4,5", help="test triplets; train: training objects")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speed-steps", type=int, default=400, help="control steps per speed measurement")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-expert", action="store_true")
    parser.add_argument("--explain", action="store_true", help="stage runs and setbacks of failed episodes")
    args, overrides = parser.parse_known_args(argv)
    print(f"cpu cores visible: {os.cpu_count()}  (other processes may share them)")
    cfg = load_config(overrides)
    print(
        f"twin {TWIN_VERSION}, expert {EXPERT_VERSION}: episode mode {cfg.twin.episode.mode}, "
        f"{cfg.control.episode_seconds:g} s episodes, noslip iterations "
        f"{cfg.twin.physics.noslip_iterations}, timestep {cfg.twin.physics.timestep:g} s"
    )

    if not args.skip_speed:
        for render in (False, True):
            rate = measure_speed(overrides, render, args.speed_steps, seed=0)
            label = "with both policy cameras rendered" if render else "physics + controller, no rendering"
            print(f"twin speed, {label}: {rate:.2f} simulated s per wall s")

    if not args.skip_expert:
        triplets = [t.strip() for t in args.triplets.split(",") if t.strip()]
        jobs = [(overrides, t, seed) for t in triplets for seed in range(args.episodes)]
        start = time.perf_counter()
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.map(run_episode, jobs, chunksize=1)
        wall = time.perf_counter() - start
        print(
            f"scripted expert, seeds 0..{args.episodes - 1} per triplet "
            f"({args.workers} workers, {wall:.0f} s):"
        )
        total = 0
        for triplet in triplets:
            rows = [r for r in results if r["triplet"] == triplet]
            wins = sum(r["success"] for r in rows)
            total += wins
            low, high = wilson_interval(wins, len(rows))
            mean_time = sum(r["seconds"] for r in rows if r["success"]) / max(wins, 1)
            unstable = sum(r["unstable"] for r in rows)
            failed = [r["seed"] for r in rows if not r["success"]]
            print(
                f"  triplet {triplet}: {wins}/{len(rows)} = {100 * wins / len(rows):.1f} % "
                f"(95 % CI {100 * low:.1f}-{100 * high:.1f}), mean time to success {mean_time:.1f} s, "
                f"divergences {unstable}, failed seeds {failed[:12]}{' ...' if len(failed) > 12 else ''}"
            )
        if args.explain:
            explain(results)
        n = len(results)
        low, high = wilson_interval(total, n)
        divergences = sum(r["unstable"] for r in results)
        print(
            f"  all: {total}/{n} = {100 * total / n:.1f} % (95 % CI {100 * low:.1f}-{100 * high:.1f}), "
            f"physics divergences {divergences}/{n}"
        )
    return 0


def explain(results: list[dict]) -> None:
    """Each failed episode's stage runs, then the failures counted by their first setback."""
    failed = [r for r in results if not r["success"]]
    print(f"  failed episodes ({len(failed)}): triplet, seed, red/green/blue, stage runs")
    reasons: Counter[str] = Counter()
    for r in failed:
        runs = r["stage_runs"]
        reason = first_setback(runs)
        reasons[reason] += 1
        print(f"    {r['triplet']} seed {r['seed']} {'/'.join(r['objects'])} ({reason}): {format_runs(runs)}")
    for reason, count in reasons.most_common():
        print(f"  {count:3d} x {reason}")


if __name__ == "__main__":
    sys.exit(main())
