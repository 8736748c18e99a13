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
from gato_ros.twin.expert import ScriptedExpert, wrap_angle
from gato_ros.twin.scene import body_vertices
from gato_ros.twin.shape import (
    FEATURES_PER_OBJECT,
    SHAPE_KEY,
    SHAPE_VERSION,
    object_geometry,
    objects_shape,
    shape_features,
    shape_track,
    shape_version,
)

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


def closing_direction(features: np.ndarray) -> float:
    """The closing direction a (mod pi) from an object's cos 2a, sin 2a."""
    return 0.5 * float(np.arctan2(features[3], features[2]))


def test_version_2_points_where_the_expert_grasps_triplet_1s_prism_and_version_1_did_not() -> None:
    """Triplet 1's red r3 is a prism: its narrowest width (version 1) runs across slanted faces the expert
    will not squeeze, so it grasps 90 degrees from there; version 2 scores the directions as the expert does
    and points where it closes. (Under version 1 every student turned to the wrong yaw on triplet 1.)"""
    cfg = load_config(["twin.render=false", "twin.objects=triplet", "twin.triplet=1"])
    env = StackingTwin(cfg, render=False)
    expert = ScriptedExpert(cfg)
    agree = {1: 0, 2: 0}
    try:
        for seed in range(12):
            env.reset(seed=seed)
            expert.reset()
            expert.act(env)
            if expert.grasp_yaw is None:  # a tip-over plan first
                continue
            closing = expert.grasp_yaw - np.pi / 2  # the fingers close along the tool y axis
            geometries = tuple(object_geometry(i) for i in env.object_ids)
            by_version = {v: objects_shape(geometries, env.object_poses(), v) for v in (1, 2)}
            for version, features in by_version.items():
                off = abs(wrap_angle(2.0 * (closing - closing_direction(features[:FEATURES_PER_OBJECT])))) / 2
                agree[version] += off < np.radians(15.0)
            np.testing.assert_allclose(by_version[1][:2], by_version[2][:2])  # heights: the same in both
            np.testing.assert_allclose(by_version[1][7:10], by_version[2][7:10])  # and the top face
    finally:
        env.close()
    assert agree[2] >= 10 and agree[1] <= 3, agree  # measured: 11 and 2 of 12


def test_version_3_gives_reds_grasp_as_the_expert_plans_it() -> None:
    """Version 3's red row is the expert's own plan (`plan_grasp`): its closing direction and centre match
    the expert's at the start of each episode, where version 2's (width and taper alone) do not always: it
    ignores red's centre of mass and the open fingers' clearance of green and blue. The other rows, and
    red's heights and top face, are version 2's."""
    cfg = load_config(["twin.render=false", "twin.objects=train"])
    env = StackingTwin(cfg, render=False)
    expert = ScriptedExpert(cfg)
    version_2_off = 0
    try:
        for seed in range(12):
            env.reset(seed=seed)
            scene = expert._scene(env)
            grasp_z = expert._grasp_height(scene.world_vertices(0))
            yaw, centre = expert._grasp_plan(scene, grasp_z, 0.0)
            geometries = tuple(object_geometry(i) for i in env.object_ids)
            poses = env.object_poses()
            v2, v3 = (objects_shape(geometries, poses, v).reshape(3, FEATURES_PER_OBJECT) for v in (2, 3))
            closing = yaw - np.pi / 2  # the fingers close along the tool y axis
            # within the wrist's reach the same direction; in its gap (+-pi/2) the reachable end, 0.07 rad off
            off = abs(wrap_angle(2.0 * (closing - closing_direction(v3[0])))) / 2
            assert off < 0.08, (seed, off)
            np.testing.assert_allclose(v3[0, 5:7] + poses[0, :2], centre, atol=1e-5)
            np.testing.assert_allclose(v3[1:], v2[1:])
            np.testing.assert_allclose(v3[0, [0, 1, 7, 8, 9]], v2[0, [0, 1, 7, 8, 9]])
            version_2_off += bool(np.linalg.norm(v2[0, 5:7] - v3[0, 5:7]) > 1e-3) or not np.allclose(
                v2[0, 2:4], v3[0, 2:4], atol=1e-3
            )
    finally:
        env.close()
    assert version_2_off >= 3, version_2_off  # measured: 5 of 12


def test_shape_version_of_a_config_and_of_an_older_checkpoints() -> None:
    assert shape_version(load_config()) == SHAPE_VERSION == 3
    assert shape_version({"twin": {"shape_observations": True}}) == 1  # a checkpoint from before the key
    assert shape_version({"twin": {"shape_version": 3}}) == 3
    with pytest.raises(ValueError, match="shape_version"):
        shape_version({"twin": {"shape_version": 4}})


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
    assert episode.metadata["shape_version"] == SHAPE_VERSION
    # an older version on request; a dataset that has the key gets it rewritten
    older = tmp_path / "v1"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "add_shape_features.py"),
            str(target),
            str(older),
            "--shape-version",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    episode_v1 = load_episode(older / "episode_000000.npz")
    assert episode_v1.metadata["shape_version"] == 1
    poses = np.asarray(episode.observations["objects/pose"])
    np.testing.assert_allclose(
        np.asarray(episode_v1.observations[SHAPE_KEY]), shape_track(twin.object_ids, poses, 1), atol=1e-6
    )
