"""Object poses from the cameras (gato_ros/perception/object_poses.py): geometry, segmentation, and the
estimator on the twin's own renderings against the twin's true poses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gato_ros.calibration.calibration_file import load_cell_calibration
from gato_ros.calibration.geometry import Pose
from gato_ros.calibration.intrinsics import Intrinsics
from gato_ros.config import load_config
from gato_ros.perception.object_poses import (
    ObjectPoseEstimator,
    PerceptionSettings,
    ProjectiveCamera,
    colour_masks,
    distinct_starts,
    mesh_distance,
    resting_rotations,
    triangulate,
)
from gato_ros.twin.env import StackingTwin
from gato_ros.twin.scene import posed_vertices
from gato_ros.twin.shape import ObjectGeometry

CFG = load_config(["twin.objects=train"])
SETTINGS = PerceptionSettings.from_config(CFG.perception)


def box(size: tuple[float, float, float], com: tuple[float, float, float] | None = None) -> ObjectGeometry:
    half = np.asarray(size) / 2.0
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float) * half
    return ObjectGeometry.from_vertices(corners, None if com is None else np.asarray(com, dtype=float))


def vertex_distance(geometry: ObjectGeometry, pose_a: np.ndarray, pose_b: np.ndarray) -> float:
    return mesh_distance(geometry.vertices, pose_a, pose_b)


@pytest.mark.parametrize("distortion", [(0.0,) * 5, (-0.05, 0.02, 0.001, -0.001, 0.0)])
def test_a_pixels_ray_projects_back_onto_that_pixel(distortion: tuple[float, ...]) -> None:
    calibration = load_cell_calibration(CFG.cameras)
    camera = ProjectiveCamera.from_calibration(calibration, "basket_front_left", 128, 128)
    k = camera.intrinsics
    camera = ProjectiveCamera(
        camera.name,
        Intrinsics(k.width, k.height, k.fx, k.fy, k.cx, k.cy, distortion),
        camera.world_to_optical,
    )
    for pixel in ([10.0, 20.0], [64.0, 64.0], [120.5, 3.25]):
        origin, direction = camera.ray(np.array(pixel))
        np.testing.assert_allclose(np.linalg.norm(direction), 1.0)
        points = origin + np.outer([0.3, 1.0], direction)
        np.testing.assert_allclose(camera.project(points), [pixel, pixel], atol=1e-3)
    # A body pose given separately projects as the posed points do.
    body = Pose.from_wxyz([0.6, 0.0, 0.1], [0.9, 0.1, -0.2, 0.3])
    local = np.array([[0.01, 0.02, -0.03], [0.0, 0.0, 0.0], [-0.02, 0.01, 0.04]])
    np.testing.assert_allclose(
        camera.project(local, body.rotation, body.position), camera.project(body.transform(local)), atol=1e-9
    )


def test_colour_masks_take_each_dominant_channel_and_never_the_grey_basket() -> None:
    image = np.full((8, 8, 3), 110, dtype=np.uint8)  # grey basket
    image[0, 0] = (200, 20, 30)  # lit red face
    image[0, 1] = (90, 0, 0)  # shadowed red face
    image[1, 0] = (10, 180, 40)
    image[2, 0] = (0, 30, 140)
    image[3, 0] = (130, 120, 118)  # a warm grey: not an object
    image[4, 0] = (30, 0, 0)  # too dark to tell
    masks = colour_masks(image, SETTINGS)
    assert masks.shape == (3, 8, 8)
    assert set(zip(*np.nonzero(masks[0]), strict=True)) == {(0, 0), (0, 1)}
    assert set(zip(*np.nonzero(masks[1]), strict=True)) == {(1, 0)}
    assert set(zip(*np.nonzero(masks[2]), strict=True)) == {(2, 0)}


def test_triangulate_finds_the_point_two_rays_pass_through() -> None:
    point = np.array([0.6, -0.05, 0.08])
    origins = [np.array([1.0, -0.4, 0.3]), np.array([1.0, 0.4, 0.3])]
    rays = [(o, (point - o) / np.linalg.norm(point - o)) for o in origins]
    np.testing.assert_allclose(triangulate(rays), point, atol=1e-9)


def test_resting_rotations_put_a_face_down_where_the_centre_of_mass_stands_over_it() -> None:
    cube = box((0.04, 0.05, 0.06))
    rotations = resting_rotations(cube)
    assert len(rotations) == 6  # every face of a uniform box holds it
    for rotation in rotations:
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        down = cube.vertices @ rotation.T
        assert np.sum(np.isclose(down[:, 2], down[:, 2].min(), atol=1e-9)) == 4  # a whole face on the floor
    # A centre of mass 3 cm up, beyond the top face: it stands over the top and bottom faces only.
    top_heavy = box((0.02, 0.05, 0.05), com=(0.0, 0.0, 0.03))
    rotations = resting_rotations(top_heavy)
    assert len(rotations) == 2
    for rotation in rotations:
        down = top_heavy.vertices @ rotation.T
        face = down[np.isclose(down[:, 2], down[:, 2].min(), atol=1e-9)]
        foot = rotation @ top_heavy.centre_of_mass
        assert np.all(face[:, :2].min(axis=0) - 1e-9 <= foot[:2])
        assert np.all(foot[:2] <= face[:, :2].max(axis=0) + 1e-9)


@pytest.fixture(scope="module")
def twin():
    cfg = load_config(["twin.objects=train", "cameras.width=128", "cameras.height=128"])
    env = StackingTwin(cfg, render=True)
    yield env
    env.close()


def images(twin: StackingTwin) -> list[np.ndarray]:
    return [twin.render(name) for name in twin.cfg.cameras.policy_cameras]


# Seeds 5 and 12: red (x23, h36) lies off the faces the search starts from (x23 tilted 8 degrees); when only
# the three best starts by their unrefined cost were refined, both fitted 90 degrees off (red's planned grasp
# turned 40 and 85 degrees), their pixel cost 5 and 1.7 times that of the true pose.
@pytest.mark.parametrize("seed", [0, 3, 5, 12])
def test_estimator_finds_every_object_of_a_twin_start_from_scratch(twin, seed: int) -> None:
    twin.reset(seed)
    truth, geometries = twin.object_poses(), twin.object_geometries()
    estimator = ObjectPoseEstimator.from_config(twin.cfg, geometries)
    poses = estimator.update(images(twin))
    assert poses is not None and poses.shape == (3, 7)
    np.testing.assert_allclose(np.linalg.norm(poses[:, 3:], axis=1), 1.0)
    assert np.all(poses[:, 3] >= 0.0)  # the objects' quaternion convention
    for geometry, estimate, true in zip(geometries, poses, truth, strict=True):
        # Where the object is (its vertices' mean) within 3 mm, its outline within 5 mm (seed 0: 0.2-0.7 mm
        # and 0.6-1.3 mm on this machine; seed 3: 0.4-1.9 mm and 0.8-4.4 mm).
        centre = geometry.vertices.mean(axis=0)
        moved = posed_vertices(centre[None], estimate[:3], estimate[3:]) - posed_vertices(
            centre[None], true[:3], true[3:]
        )
        assert np.linalg.norm(moved) < 0.003
        assert vertex_distance(geometry, estimate, true) < 0.005


def test_distinct_starts_skip_rotations_close_to_a_better_one() -> None:
    def start(cost: float, yaw_deg: float, tilt_deg: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
        rotation = Rotation.from_euler("zx", [yaw_deg, tilt_deg], degrees=True).as_matrix()
        return cost, np.zeros(3), rotation

    candidates = [start(0.1, 0), start(0.2, 15), start(0.3, 30), start(0.4, 0, 90), start(0.5, 90)]
    taken = distinct_starts(candidates, count=3, min_angle=np.radians(25))
    assert [cost for cost, _, _ in taken] == [0.1, 0.3, 0.4]  # 15 degrees from the best: the same start
    assert len(distinct_starts(candidates, count=10, min_angle=0.0)) == len(candidates)


def test_estimator_tracks_a_moved_object_and_keeps_one_out_of_sight(twin) -> None:
    twin.reset(0)
    geometries = twin.object_geometries()
    estimator = ObjectPoseEstimator.from_config(twin.cfg, geometries)
    assert estimator.update(images(twin)) is not None
    assert [t.searches for t in estimator.tracks] == [1, 1, 1]
    poses = twin.object_poses()
    poses[0, :2] += [0.006, -0.004]  # red slides 7 mm
    twin.set_object_poses(poses)
    tracked = estimator.update(images(twin))
    assert tracked is not None
    assert vertex_distance(geometries[0], tracked[0], poses[0]) < 0.004
    assert [t.searches for t in estimator.tracks] == [1, 1, 1]  # followed from the last pose, no new search
    # Red lifted out of both cameras' view: its last pose is kept.
    hidden = poses.copy()
    hidden[0, :3] = [0.0, 0.0, 2.0]
    twin.set_object_poses(hidden)
    kept = estimator.update(images(twin))
    assert kept is not None
    np.testing.assert_array_equal(kept[0], tracked[0])


def test_estimator_says_none_until_every_object_was_seen(twin) -> None:
    twin.reset(0)
    poses = twin.object_poses()
    poses[2, :3] = [0.0, 0.0, 2.0]  # blue far above the cell
    twin.set_object_poses(poses)
    estimator = ObjectPoseEstimator.from_config(twin.cfg, twin.object_geometries())
    assert estimator.update(images(twin)) is None
    assert estimator.tracks[0].pose is not None and estimator.tracks[2].pose is None
    with pytest.raises(ValueError, match="expected 2 images"):
        estimator.update(images(twin)[:1])


def test_assembler_fits_object_poses_to_the_camera_images(twin) -> None:
    """`policy.object_pose_source=cameras`: ``objects/pose`` (and the shapes) come from the policy cameras'
    frames, which the observation then waits for, with the objects' ids; reset per episode."""
    from gato_ros.control.kinematics import ArmKinematics
    from gato_ros.ros.observation import NOT_SEEN, ObservationAssembler
    from gato_ros.twin.shape import SHAPE_KEY, objects_shape

    cfg = twin.cfg
    with pytest.raises(ValueError, match="object_pose_source"):
        ObservationAssembler(cfg, [], ArmKinematics(cfg.robot), object_poses=True, object_pose_source="lidar")
    twin.reset(0)
    truth, frames, q = twin.object_poses(), images(twin), twin.joint_positions()
    assembler = ObservationAssembler(
        cfg, [], ArmKinematics(cfg.robot), object_shapes=True, object_pose_source="cameras"
    )
    assert assembler.sensor_cameras == ["basket_front_left", "basket_front_right"]
    assembler.add_joints(q, 0.0, stamp_s=1.0, received_s=0.0)
    assert assembler.assemble(now_s=1.0).startswith("no data yet from basket_front_left, basket_front_right")
    for name, frame in zip(assembler.sensor_cameras, frames, strict=True):
        assembler.add_image(name, frame, stamp_s=1.0, received_s=0.0)
    assert assembler.assemble(now_s=1.0) == "no data yet from object ids"
    assembler.follow_episode_status({"episode": 1, "objects": list(twin.object_ids)})
    observation = assembler.assemble(now_s=1.0)
    assert not isinstance(observation, str), observation
    poses = observation.values["objects/pose"].reshape(3, 7)
    assert not any(key.endswith("/pixels") for key in observation.values)  # a state policy's observation
    for geometry, estimate, true in zip(twin.object_geometries(), poses, truth, strict=True):
        assert vertex_distance(geometry, estimate.astype(float), true) < 0.005
    np.testing.assert_allclose(
        observation.values[SHAPE_KEY], objects_shape(twin.object_geometries(), poses, assembler.shape_version)
    )
    # A new episode with blue out of sight: nothing to act on until every object is seen again.
    assembler.reset()
    moved = truth.copy()
    moved[2, :3] = [0.0, 0.0, 2.0]
    twin.set_object_poses(moved)
    for name, frame in zip(assembler.sensor_cameras, images(twin), strict=True):
        assembler.add_image(name, frame, stamp_s=2.0, received_s=0.0)
    assembler.add_joints(q, 0.0, stamp_s=2.0, received_s=0.0)
    assert assembler.assemble(now_s=2.0) == NOT_SEEN
    # Frames the estimator cannot use (two sizes) are a reason to hold, never an exception in the node.
    assembler.add_image(
        assembler.sensor_cameras[0], np.zeros((64, 64, 3), np.uint8), stamp_s=3.0, received_s=0.0
    )
    assembler.add_image(assembler.sensor_cameras[1], frames[1], stamp_s=3.0, received_s=0.0)
    assembler.add_joints(q, 0.0, stamp_s=3.0, received_s=0.0)
    reason = assembler.assemble(now_s=3.0)
    assert isinstance(reason, str) and "object poses from the cameras failed" in reason


def test_gripper_silhouette_covers_the_gripper_where_the_twin_renders_it(twin) -> None:
    """The silhouette's parts, posed from the arm's joint angles and the finger driver's angle alone (the
    linkage as pads kept parallel), stand where the twin's constrained fingers are, open, closing and closed,
    and their outlines cover the gripper's pixels in the twin's own rendering (its geom ids per pixel)."""
    from gato_ros.perception.gripper import GripperSilhouette
    from gato_ros.twin.rendering import CameraRenderer

    twin.reset(0)
    calibration = load_cell_calibration(twin.cfg.cameras)
    names = [str(n) for n in twin.cfg.cameras.policy_cameras]
    cameras = [ProjectiveCamera.from_calibration(calibration, n, 128, 128) for n in names]
    silhouette = GripperSilhouette.from_config(twin.cfg, cameras)
    assert len(silhouette.geoms) >= 10  # base, and per finger driver, coupler, spring link, follower, pad
    model, data = twin.model, twin.data
    twin_geoms = [model.geom(silhouette.model.geom(g).name).id for g in silhouette.geoms]
    renderer = CameraRenderer(model, 128, 128, reflections=False)
    openings, seen, covered, nearer = set(), 0, 0, 0
    try:
        for step in range(100):  # down into the cameras' view, then the fingers close on nothing
            # (on an object the 2F-85's fingers adapt, and its driver angle no longer tells where they are)
            closing = step >= 70
            twin.step(
                np.array([0.0, 0.0, 0.0 if closing else -0.3, 0.0, 1.0 if closing else -1.0], np.float32)
            )
            if step % 5:
                continue
            driver = float(data.qpos[twin.index.gripper_driver_qpos])
            openings.add(round(driver, 1))
            parts = silhouette.pose(twin.joint_positions(), driver)
            for (rotation, position), geom in zip(parts, twin_geoms, strict=True):
                assert np.linalg.norm(position - data.geom_xpos[geom]) < 0.003, model.geom(geom).name
                turn = Rotation.from_matrix(rotation.T @ data.geom_xmat[geom].reshape(3, 3)).magnitude()
                assert turn < np.radians(3.0), model.geom(geom).name
            masks = silhouette.masks(twin.joint_positions(), driver)
            for name, mask in zip(names, masks, strict=True):
                truth = np.isin(renderer.geom_ids(data, model.camera(name).id), twin_geoms)
                seen += int(truth.sum())
                covered += int((truth & mask).sum())
                assert mask.sum() <= 1.5 * truth.sum() + 20  # hulls, not a loose box around the gripper
            # Only the parts nearer the camera than a point may hide it: of the fingers around the pinch
            # point, the near one.
            pinch = data.site_xpos[model.site("gripper/pinch_site").id]
            for full, near in zip(
                masks, silhouette.masks(twin.joint_positions(), driver, pinch), strict=True
            ):
                assert not np.any(near & ~full)
                if full.sum() > 100:
                    assert 0 < near.sum() < full.sum()
                    nearer += 1
    finally:
        renderer.close()
    assert len(openings) >= 3 and seen > 1000 and nearer >= 4  # open, closing, closed; the gripper in view
    assert covered >= 0.95 * seen  # 98-99.5 % on this machine


def test_estimator_with_the_gripper_silhouette_fits_from_the_joint_states(twin) -> None:
    """``perception.gripper_occludes=true``: `update` takes the arm's posture with the frames; the fit of a
    start (the arm above the objects) is the same as without."""
    from gato_ros.twin.observation_keys import ARM_ANGLES_KEY

    twin.reset(0)
    cfg = load_config(
        ["twin.objects=train", "cameras.width=128", "cameras.height=128", "perception.gripper_occludes=true"]
    )
    geometries = twin.object_geometries()
    with_gripper = ObjectPoseEstimator.from_config(cfg, geometries)
    without = ObjectPoseEstimator.from_config(twin.cfg, geometries)
    assert with_gripper.gripper is not None and without.gripper is None
    posture = (twin.observation()[ARM_ANGLES_KEY], float(twin.data.qpos[twin.index.gripper_driver_qpos]))
    fitted = with_gripper.update(images(twin), posture)
    assert fitted is not None
    np.testing.assert_allclose(fitted, without.update(images(twin), posture), atol=1e-6)
