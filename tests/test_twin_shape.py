"""`objects/shape`: the features of gato_ros/twin/shape.py, online (the twin) and from a recording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeWriter, load_episode
from gato_ros.twin.env import StackingTwin
from gato_ros.twin.scene import body_vertices
from gato_ros.twin.shape import FEATURES_PER_OBJECT, SHAPE_KEY, object_geometry, shape_features, shape_track

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def twin():
    cfg = load_config(
        ["twin.render=false", "twin.shape_observations=true", "twin.objects=triplet", "twin.triplet=2"]
    )
    env = StackingTwin(cfg, render=False)
    env.reset(seed=4)
    yield env
    env.close()


def test_geometry_is_the_twins_compiled_mesh(twin) -> None:
    for body, object_id in zip(twin.index.object_bodies, twin.object_ids, strict=True):
        np.testing.assert_array_equal(object_geometry(object_id).vertices, body_vertices(twin.model, body))


def test_twin_observation_has_the_shapes_a_recording_gives(twin) -> None:
    obs = twin.observation()
    shape = obs[SHAPE_KEY]
    assert shape.dtype == np.float32 and shape.shape == (3 * FEATURES_PER_OBJECT,)
    assert np.all(np.isfinite(shape))
    recorded = shape_track(twin.object_ids, obs["objects/pose"][None])
    np.testing.assert_allclose(recorded[0], shape, atol=1e-6)
    twin.cfg.twin.shape_observations = False
    try:
        assert SHAPE_KEY not in twin.observation()
    finally:
        twin.cfg.twin.shape_observations = True


def test_features_turn_with_the_object() -> None:
    """Yawing an object by t turns the section direction by t (its cos/sin of 2a by 2t), the section
    centre and the top face's normal by t; heights and width stay."""
    geometry = object_geometry("r5")
    tilt = np.array([np.cos(0.2), np.sin(0.2), 0.0, 0.0])  # tilted about x, so the top face leans
    position = np.array([0.1, -0.05, 0.3])
    base = shape_features(geometry, np.concatenate([position, tilt]))
    t = np.radians(30.0)  # a multiple of the 5 degree search step
    yaw = np.array([np.cos(t / 2), 0.0, 0.0, np.sin(t / 2)])
    quat = np.empty(4)
    mujoco.mju_mulQuat(quat, yaw, tilt)
    turned = shape_features(geometry, np.concatenate([position, quat]))

    def rotate(xy: np.ndarray, angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        return np.array([c * xy[0] - s * xy[1], s * xy[0] + c * xy[1]])

    np.testing.assert_allclose(turned[[0, 1, 4, 9]], base[[0, 1, 4, 9]], atol=1e-5)  # bottom, top, width, nz
    np.testing.assert_allclose(turned[2:4], rotate(base[2:4], 2 * t), atol=1e-5)
    np.testing.assert_allclose(turned[5:7], rotate(base[5:7], t), atol=1e-5)
    np.testing.assert_allclose(turned[7:9], rotate(base[7:9], t), atol=1e-5)
    assert base[9] < 0.999  # the tilt shows in the top face's normal


def test_upright_box_features() -> None:
    """s0 upright at the origin: its own heights, a level top, the section centred on the body."""
    geometry = object_geometry("s0")
    features = shape_features(geometry, np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    z = geometry.vertices[:, 2]
    np.testing.assert_allclose(features[:2], [z.min(), z.max()], atol=1e-6)
    np.testing.assert_allclose(features[7:], [0.0, 0.0, 1.0], atol=1e-6)
    xy = geometry.vertices[:, :2]
    assert features[4] <= np.ptp(xy, axis=0).min() + 1e-6


def test_add_shape_features_script_adds_the_key(tmp_path, twin) -> None:
    """A recording without shapes gains the same features the twin publishes, from its poses and ids."""
    source, target = tmp_path / "src", tmp_path / "dst"
    twin.reset(seed=4)
    cfg = twin.cfg
    shapes = []
    with EpisodeWriter(source, cfg.control.rate_hz, source="test", background=False) as writer:
        writer.begin_episode(task="stack", object_ids=list(twin.object_ids))
        for _ in range(3):
            obs = twin.observation()
            shapes.append(obs.pop(SHAPE_KEY))
            writer.add_step(obs, np.zeros(5, np.float32), timestamp=twin.time)
            twin.step(np.array([0.05, 0.0, 0.0, 0.0, -1.0]))
        writer.end_episode(success=False)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "add_shape_features.py"), str(source), str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "1 episodes written" in result.stdout
    episode = load_episode(target / "episode_000000.npz")
    np.testing.assert_allclose(np.asarray(episode.observations[SHAPE_KEY]), np.stack(shapes), atol=1e-6)
    assert SHAPE_KEY in episode.metadata["observation_keys"]
    assert SHAPE_KEY not in load_episode(source / "episode_000000.npz").observations  # the source stays
    rerun = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "add_shape_features.py"), str(source), str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "0 episodes written" in rerun.stdout  # resumable: what exists is kept
    assert episode.metadata["object_ids"] == list(twin.object_ids)
