"""`gato-ros demo [overrides]`: the scripted expert stacking on the twin, with a video of the cameras.

Runs `twin.demo_episodes` seeded episodes (seeds `seed`, `seed`+1, ...), prints the outcome of each, and
writes `demo.mp4` (both policy cameras side by side) and `demo_strip.png` into `twin.demo_output_dir`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """MP4 through PyAV (H.264, else MPEG-4 part 2); returns the path written."""
    import imageio.v3 as iio

    for codec in ("libx264", "mpeg4"):
        try:
            iio.imwrite(path, np.stack(frames), plugin="pyav", codec=codec, fps=fps)
            return path
        except Exception as err:  # codec missing from this ffmpeg build: try the next one
            last_error = err
    raise RuntimeError(f"could not encode {path}: {last_error}")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from gato_ros.config import load_config
    from gato_ros.twin import ScriptedExpert, StackingTwin
    from gato_ros.twin.rollout import run_episode

    cfg = load_config(list(sys.argv[1:] if argv is None else argv))
    twin_cfg = cfg.twin
    output_dir = Path(str(twin_cfg.demo_output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    cameras = [f"{name}/pixels" for name in cfg.cameras.policy_cameras]
    expert = ScriptedExpert(cfg)
    frames: list[np.ndarray] = []

    def record(observation: dict[str, np.ndarray], action: np.ndarray, step: object) -> None:
        del action, step
        frames.append(np.hstack([observation[key] for key in cameras]))

    def policy(twin: StackingTwin, observation: dict[str, np.ndarray]) -> np.ndarray:
        del observation
        return expert.act(twin)

    episodes = int(twin_cfg.demo_episodes)
    successes = 0
    with StackingTwin(cfg, render=True) as twin:
        for episode in range(episodes):
            seed = int(cfg.seed) + episode
            expert.reset()
            start = time.perf_counter()
            result = run_episode(twin, policy, seed, observer=record)
            successes += result.success
            outcome = f"stacked at {result.time_to_success:.1f} s" if result.success else "not stacked"
            if result.physics_unstable:
                outcome += " (physics diverged)"
            print(
                f"episode {episode} seed {seed} objects {'/'.join(result.object_ids)}: {outcome} "
                f"[{result.steps} steps, {time.perf_counter() - start:.1f} s wall]",
                flush=True,
            )
    print(f"success: {successes}/{episodes}")
    if frames:
        video = _write_video(output_dir / "demo.mp4", frames, int(twin_cfg.demo_video_fps))
        picks = np.linspace(0, len(frames) - 1, num=min(6, len(frames))).astype(int)
        import imageio.v3 as iio

        strip = output_dir / "demo_strip.png"
        iio.imwrite(strip, np.vstack([frames[i] for i in picks]))
        print(f"wrote {video} ({len(frames)} frames) and {strip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
