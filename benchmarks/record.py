"""Recording overhead: `gato-ros record` beside the stack on the twin, in real time, both policy cameras.

Starts the twin (the scripted expert publishing the actions) and the command node as processes, then the
recorder as a process of its own (its own ROS domain, `--takes` takes of `--seconds` s each, raw MCAP log on),
and prints, from the takes' own metadata and files: steps recorded against the control periods, periods
dropped and why, camera frames repeated, the stamp skew, the recorder's sampling cost per step and its CPU
time, and the size of a take on disk (episode file and raw log, per second of recording).

    .venv/bin/python benchmarks/record.py [--takes 3] [--seconds 10] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset
from gato_ros.ros.launcher import NodeProcesses, isolated_domain_id, launch_overrides, ros_domain, stack_plan


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--takes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args, extra = parser.parse_known_args()
    overrides = launch_overrides(True, None, None, ["ros.twin.action_source=expert", *extra])
    cfg = load_config(overrides)
    out = Path(tempfile.mkdtemp(prefix="gato_record_bench_")) / "takes"
    recorder = [
        sys.executable, "-m", "gato_ros.ros.record_node", *overrides, f"record.out_dir={out}",
        "record.auto_start=true", "record.reset_seconds=0.5", f"record.max_seconds={args.seconds}",
        f"record.episodes={args.takes}", "record.keyboard=false",
    ]  # fmt: skip
    print(f"cpu cores visible: {os.cpu_count()}; cameras {list(cfg.cameras.policy_cameras)} "
          f"{cfg.cameras.width}x{cfg.cameras.height} at {cfg.control.rate_hz:g} Hz, real time")  # fmt: skip
    with ros_domain(isolated_domain_id()):
        processes = NodeProcesses(env=dict(os.environ), output=open(os.devnull, "w"))  # noqa: SIM115
        for spec in stack_plan(cfg, True, overrides):
            processes.start(spec)
        try:
            start = time.monotonic()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = subprocess.run(recorder, env=dict(os.environ), capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.monotonic() - start
        finally:
            processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:])
        return 1
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    dataset = EpisodeDataset(out)
    periods = round(args.seconds * float(cfg.control.rate_hz)) - 1
    print(f"{len(dataset)} takes of {args.seconds:g} s ({periods + 1} control periods each); recorder CPU "
          f"{cpu:.1f} s over {wall:.1f} s wall = {100 * cpu / wall:.0f} % of one core")  # fmt: skip
    for i in range(len(dataset)):
        meta = dataset.metadata[i]
        steps = int(meta["num_steps"])
        dropped = meta.get("dropped_steps") or {}
        repeated = meta.get("repeated_frames") or {}
        skew = meta.get("stamp_skew_ms") or {}
        cost = meta.get("sample_cost_ms") or {}
        episode = dataset.paths[i]
        raw = out / (meta.get("raw_log") or {}).get("file", "")
        seconds = max(steps / float(cfg.control.rate_hz), 1e-9)
        print(
            f"  take {i}: {steps} steps, dropped {sum(dropped.values())} {dict(dropped) or ''}, repeated "
            f"frames {dict(repeated) or 0}, skew mean/max {skew.get('mean', 0):.1f}/{skew.get('max', 0):.1f}"
            f" ms, sampling mean/max {cost.get('mean', 0):.2f}/{cost.get('max', 0):.2f} ms, episode "
            f"{episode.stat().st_size / seconds / 1e3:.0f} kB/s, raw log "
            f"{(raw.stat().st_size if raw.is_file() else 0) / seconds / 1e3:.0f} kB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
