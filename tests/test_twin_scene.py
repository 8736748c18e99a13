"""The twin's scene builds from the wheels' assets for every object set; cameras render real images."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.twin import StackingTwin, build_scene
from gato_ros.twin.assets import object_meshes, select_objects
from gato_ros.twin.scene import STATIC


@pytest.mark.parametrize("triplet", ["1", "2", "3", "4", "5"])
def test_scene_builds_for_every_test_triplet(triplet: str) -> None:
    cfg = load_config([f"twin.triplet={triplet}"])
    ids = select_objects(cfg.twin, np.random.default_rng(0))
    assert list(ids) == list(cfg.twin.triplets[triplet])
    model, index = build_scene(cfg, ids)
    assert model.opt.timestep == pytest.approx(0.0005)
    assert model.nu == 8 and len(index.arm_qpos) == 7
    for body in index.object_bodies:
        assert model.body_mass[body] == pytest.approx(0.2)
    assert set(cfg.cameras.policy_cameras) <= set(index.cameras)
    # The robot never collides with itself: no robot geom pair can generate a contact.
    robot = sorted(index.robot_geoms)
    contype, conaffinity = model.geom_contype[robot], model.geom_conaffinity[robot]
    assert not np.any(np.bitwise_and.outer(contype, conaffinity))
    assert all(model.geom_contype[g] == STATIC for g in index.support_geoms)


@pytest.mark.parametrize("distribution", ["train", "heldout"])
def test_scene_builds_for_object_distributions(distribution: str) -> None:
    cfg = load_config([f"twin.objects={distribution}"])
    meshes = object_meshes(distribution)
    assert len(meshes) == {"train": 103, "heldout": 36}[distribution]
    ids = select_objects(cfg.twin, np.random.default_rng(3))
    assert len(set(ids)) == 3 and set(ids) <= set(meshes)
    model, _ = build_scene(cfg, ids)
    assert model.nmesh > 3


def test_reset_is_seeded_and_observation_has_the_contract_keys() -> None:
    cfg = load_config()
    with StackingTwin(cfg) as twin:
        first = twin.reset(seed=11)
        poses = twin.object_poses()
        again = twin.reset(seed=11)
        assert np.allclose(poses, twin.object_poses())
        other = twin.reset(seed=12)
    expected = {
        "basket_front_left/pixels": ((128, 128, 3), np.uint8),
        "basket_front_right/pixels": ((128, 128, 3), np.uint8),
        "gripper/joints/angle": ((1,), np.float32),
        "gripper/joints/velocity": ((1,), np.float32),
        "sawyer/joints/angle": ((7,), np.float32),
        "sawyer/pinch/pose": ((7,), np.float32),
        "sawyer/tcp/pose": ((7,), np.float32),
        "objects/pose": ((21,), np.float32),
    }
    assert set(first) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert first[key].shape == shape and first[key].dtype == dtype, key
        assert np.array_equal(first[key], again[key]), key
    assert not np.array_equal(first["objects/pose"], other["objects/pose"])
    reset = cfg.twin.reset
    pinch = first["sawyer/pinch/pose"]
    assert np.all(pinch[:3] >= np.asarray(reset.tool_low) - 2e-3)
    assert np.all(pinch[:3] <= np.asarray(reset.tool_high) + 2e-3)
    objects = first["objects/pose"].reshape(3, 7)
    assert np.all(objects[:, 2] > 0.0498)  # settled on the basket floor, not through it
    assert first["gripper/joints/angle"][0] < 5.0  # starts open


def test_cameras_render_non_blank_distinct_images() -> None:
    cfg = load_config(["twin.triplet=2"])
    with StackingTwin(cfg) as twin:
        obs = twin.reset(seed=0)
        left, right = obs["basket_front_left/pixels"], obs["basket_front_right/pixels"]
        back = twin.render("basket_back_left")
    for image in (left, right, back):
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert image.std() > 10.0  # not a blank frame
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 5.0
    # The three pure-coloured objects are in view of the policy cameras.
    for image in (left, right):
        pixels = image.reshape(-1, 3).astype(int)
        for channel in range(3):
            others = [c for c in range(3) if c != channel]
            dominant = (pixels[:, channel] > 100) & np.all(
                pixels[:, others] < 0.5 * pixels[:, [channel]], axis=1
            )
            assert dominant.sum() > 20, f"colour channel {channel} missing"


def test_train_distribution_draws_new_objects_per_episode() -> None:
    cfg = load_config(["twin.objects=train", "twin.render=false"])
    with StackingTwin(cfg) as twin:
        twin.reset(seed=1)
        first = twin.object_ids
        twin.reset(seed=2)
        second = twin.object_ids
        twin.reset(seed=1)
        assert twin.object_ids == first
    train = set(object_meshes("train"))
    assert set(first) <= train and set(second) <= train
    assert first != second
