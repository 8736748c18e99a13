"""Camera-frame storage and the training sampler: what each codec costs and whether decoding keeps up.

Renders the twin's two policy cameras along a scripted-expert episode, then prints
  1. per codec (raw, png, jpeg at two qualities): bytes per frame, encode and decode time per frame, the
     loss (mean and max absolute error in grey levels) and what 1,000 full (400-step) episodes take;
  2. sampler throughput (training batches of the image-policy preset, `+experiment=image_policy`) from
     episode files of each codec, with and without augmentation, and from a state-only dataset, next to
     the training step's own throughput on this machine (forward + backward of `model=medium`): the
     sampler keeps up when its tokens/s exceed the trainer's. Ratios, measured in one run.

    python benchmarks/frames.py [--steps 200] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeWriter, FrameCodec

CODECS = [("raw", FrameCodec("raw")), ("png", FrameCodec("png")), ("jpeg95", FrameCodec("jpeg", 95))]
CODECS += [("jpeg90", FrameCodec("jpeg", 90))]
FULL_EPISODE_STEPS = 400


def render_episode(steps: int, seed: int) -> list[dict[str, np.ndarray]]:
    from gato_ros.twin import ScriptedExpert, StackingTwin

    cfg = load_config(["twin.render=true", "twin.episode.mode=benchmark"])
    twin, expert = StackingTwin(cfg), ScriptedExpert(cfg)
    observation = twin.reset(seed=seed)
    expert.reset()
    observations = []
    for _ in range(steps):
        observations.append(observation)
        observation = twin.step(expert.act(twin)).observation
    twin.close()
    return observations


def codec_table(frames: np.ndarray, cameras: int) -> None:
    print(f"\n1. codecs on {len(frames)} rendered {frames.shape[1]}x{frames.shape[2]} frames")
    print(
        f"{'codec':8s} {'kB/frame':>9s} {'encode ms':>10s} {'decode ms':>10s} {'mean err':>9s} "
        f"{'max err':>8s} {'MB/episode':>11s} {'GB/1000 ep':>11s}"
    )
    for name, codec in CODECS:
        if codec.name == "raw":
            size, enc_ms, dec_ms, mean_err, max_err = frames[0].nbytes, 0.0, 0.0, 0.0, 0
        else:
            t0 = time.perf_counter()
            blobs = [codec.encode(f) for f in frames]
            enc_ms = 1e3 * (time.perf_counter() - t0) / len(frames)
            t0 = time.perf_counter()
            decoded = np.stack([FrameCodec.decode(b, frames.shape[1:]) for b in blobs])
            dec_ms = 1e3 * (time.perf_counter() - t0) / len(frames)
            size = float(np.mean([len(b) for b in blobs]))
            error = np.abs(decoded.astype(np.int16) - frames.astype(np.int16))
            mean_err, max_err = float(error.mean()), int(error.max())
        episode_mb = size * cameras * FULL_EPISODE_STEPS / 1e6
        print(
            f"{name:8s} {size / 1e3:9.1f} {enc_ms:10.3f} {dec_ms:10.3f} {mean_err:9.2f} {max_err:8d} "
            f"{episode_mb:11.1f} {episode_mb:11.2f}"
        )


def write_dataset(directory: Path, observations: list[dict], codec: FrameCodec, episodes: int, state: bool):
    rng = np.random.default_rng(0)
    keys = [k for k in observations[0] if not (state and k.endswith("/pixels"))]
    with EpisodeWriter(directory, 20.0, "benchmark", background=False, image_codec=codec) as writer:
        for _ in range(episodes):
            writer.begin_episode(task="stack red on blue")
            for t, obs in enumerate(observations):
                writer.add_step({k: obs[k] for k in keys}, rng.uniform(-1, 1, 5), timestamp=0.05 * t)
            writer.end_episode(success=True)
    return sum(p.stat().st_size for p in directory.glob("episode_*.npz")) / episodes


def sampler_rate(root: Path, name: str, overrides: list[str], batches: int) -> tuple[float, float]:
    """(sequences/s, tokens/s) of the sampler over dataset `name`, batches of the preset's size."""
    from gato_ros.gato.dataset import SequenceSampler

    cfg = load_config(
        [
            "+experiment=image_policy",
            f"training.data.root={root}",
            f"training.data.mixture.rgb_stacking_sim.path={name}",
            *overrides,
        ]
    )
    sampler = SequenceSampler(cfg)
    batch_size = int(cfg.training.batch_size)
    sampler.batch(0, batch_size=batch_size)  # open the files
    t0 = time.perf_counter()
    tokens = 0
    for step in range(1, batches + 1):
        batch = sampler.batch(step, batch_size=batch_size)
        tokens += int(batch.lengths.sum())
    wall = time.perf_counter() - t0
    return batches * batch_size / wall, tokens / wall


def trainer_rate(root: Path, name: str, steps: int) -> float:
    """Tokens/s of forward + backward + AdamW of the image preset's model (model=medium) on its batches."""
    import torch

    from gato_ros.gato.dataset import SequenceSampler
    from gato_ros.gato.model import build_model
    from gato_ros.gato.train import masked_nll

    cfg = load_config(
        [
            "+experiment=image_policy",
            "model=medium",
            f"training.data.root={root}",
            f"training.data.mixture.rgb_stacking_sim.path={name}",
        ]
    )
    batch = SequenceSampler(cfg).batch(0, batch_size=int(cfg.training.batch_size))
    model = build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss, _ = masked_nll(model, batch)  # warm up
    loss.backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = masked_nll(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * int(batch.lengths.sum()) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="rendered steps (frames per camera)")
    parser.add_argument("--episodes", type=int, default=8, help="episode files per sampler dataset")
    parser.add_argument("--batches", type=int, default=20, help="timed sampler batches per row")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    observations = render_episode(args.steps, args.seed)
    cameras = [k for k in observations[0] if k.endswith("/pixels")]
    frames = np.stack([obs[k] for obs in observations for k in cameras])
    codec_table(frames, len(cameras))

    print(f"\n2. sampler, image-policy batches, {args.episodes} episodes of {args.steps} steps per dataset")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for name, codec in CODECS[:3]:
            size = write_dataset(root / name, observations, codec, args.episodes, state=False)
            rows.append((name, size, []))
            rows.append((f"{name} +aug", size, []))
            rows[-2][2].extend(sampler_rate(root, name, ["training.data.augmentation=null"], args.batches))
            rows[-1][2].extend(sampler_rate(root, name, [], args.batches))
        size = write_dataset(root / "state", observations, FrameCodec("raw"), args.episodes, state=True)
        state_rate = sampler_rate(
            root,
            "state",
            ["tokenizer.observation.image_keys=[]", "training.data.augmentation=null"],
            args.batches,
        )
        rows.append(("no frames", size, list(state_rate)))
        train_tokens = trainer_rate(root, "png", 3)
        print(f"{'data':12s} {'MB/file':>8s} {'seq/s':>8s} {'tokens/s':>10s} {'x trainer':>10s}")
        for name, size, (seqs, tokens) in rows:
            print(f"{name:12s} {size / 1e6:8.2f} {seqs:8.1f} {tokens:10,.0f} {tokens / train_tokens:10.1f}")
        print(f"trainer (model=medium, forward+backward+AdamW): {train_tokens:,.0f} tokens/s")


if __name__ == "__main__":
    main()
