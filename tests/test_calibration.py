"""Camera calibration against rendered images of a checkerboard with known geometry.

MuJoCo renders an ideal pinhole camera of known fovy at known poses looking at a board made of box geoms
at the configured world pose, so the truth is exact: the calibration must recover fx/fovy, the camera
position within 1 cm and its orientation within 1 degree, write a file the twin places the camera from,
and keep the other cameras' entries.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import mujoco
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from gato_ros.calibration import (
    BoardObservation,
    CharucoBoard,
    Checkerboard,
    Intrinsics,
    Pose,
    board_from_config,
    calibrate_intrinsics,
    optical_camera_pose,
    pose_change,
    read_calibration,
    solve_extrinsics,
)
from gato_ros.calibration.capture import capture_camera
from gato_ros.config import load_config
from gato_ros.paths import calibration_dir
from gato_ros.tools import calibrate as calibrate_tool
from gato_ros.twin.rendering import CameraRenderer

WIDTH, HEIGHT = 640, 480  # a RealSense colour stream
TRUE_FOVY_DEG = 42.5
CAMERA = "basket_front_left"
# The camera whose pose the extrinsics recover: DeepMind's basket_front_left (position, quaternion w x y z).
TRUE_CAMERA_POSE = ([0.970, -0.375, 0.2848], [0.7815, 0.4900, 0.2050, 0.3272])
BOARD_MARGIN_SQUARES = 1.0  # white border around the outer squares, as on a print
BLACK_SQUARE_THICKNESS_M = 1e-4  # black tiles' top face is the board plane; the white plate lies below


def look_at(position: np.ndarray, target: np.ndarray, roll_deg: float = 0.0) -> Pose:
    """A MuJoCo camera (looks along -z, +y up) at `position` looking at `target`, rolled about its axis."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    roll = Rotation.from_euler("z", roll_deg, degrees=True).as_matrix()
    return Pose(np.asarray(position, float), np.column_stack([right, up, -forward]) @ roll)


def black_rectangles(board: Checkerboard | CharucoBoard) -> list[tuple[float, float, float, float]]:
    """The print's black areas as (x_low, y_low, x_high, y_high) rectangles in the board frame."""
    s = board.square_size_m
    if isinstance(
        board, Checkerboard
    ):  # square (a, b) spans [as, (a+1)s] x [bs, (b+1)s], black for a + b even
        return [
            (a * s, b * s, (a + 1) * s, (b + 1) * s)
            for a in range(board.columns + 1)
            for b in range(board.rows + 1)
            if (a + b) % 2 == 0
        ]
    # ChArUco: squares without a marker are black; markers are drawn cell by cell from their bit images.
    marker_corners = [board.to_board_frame(c) for c in board.board.getObjPoints()]
    white_squares = {tuple((c[:, :2].mean(axis=0) // s).astype(int)) for c in marker_corners}
    columns, rows = board.squares
    rectangles = [
        (a * s, b * s, (a + 1) * s, (b + 1) * s)
        for a in range(columns)
        for b in range(rows)
        if (a, b) not in white_squares
    ]
    dictionary = board.board.getDictionary()
    cells = dictionary.markerSize + 2  # bits plus the black border
    for marker_id, corners in zip(board.board.getIds().ravel(), marker_corners, strict=True):
        bits = cv2.aruco.generateImageMarker(dictionary, int(marker_id), cells)
        top_left, right, down = (
            corners[0],
            (corners[1] - corners[0]) / cells,
            (corners[3] - corners[0]) / cells,
        )
        for r in range(cells):  # one rectangle per run of black cells along a row
            c = 0
            while c < cells:
                if bits[r, c] != 0:
                    c += 1
                    continue
                end = c
                while end < cells and bits[r, end] == 0:
                    end += 1
                a, b = top_left + c * right + r * down, top_left + end * right + (r + 1) * down
                rectangles.append((min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])))
                c = end
    return rectangles


def add_board(spec: mujoco.MjSpec, board: Checkerboard | CharucoBoard, board_in_world: Pose) -> None:
    """The board as geometry: black tiles whose top faces are the board plane, on a white plate just below."""
    s = board.square_size_m
    body = spec.worldbody.add_body(
        name="board", pos=board_in_world.position.tolist(), quat=board_in_world.quaternion_wxyz.tolist()
    )
    rectangles = np.array(black_rectangles(board))
    low = rectangles[:, :2].min(axis=0) - s * BOARD_MARGIN_SQUARES
    high = rectangles[:, 2:].max(axis=0) + s * BOARD_MARGIN_SQUARES
    half, centre = (high - low) / 2, (high + low) / 2
    plate_half_thickness = 0.002
    body.add_geom(
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=[half[0], half[1], plate_half_thickness],
        pos=[centre[0], centre[1], -BLACK_SQUARE_THICKNESS_M - plate_half_thickness],
        rgba=[1.0, 1.0, 1.0, 1.0],
    )
    for x_low, y_low, x_high, y_high in rectangles:
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[(x_high - x_low) / 2, (y_high - y_low) / 2, BLACK_SQUARE_THICKNESS_M / 2],
            pos=[(x_high + x_low) / 2, (y_high + y_low) / 2, -BLACK_SQUARE_THICKNESS_M / 2],
            rgba=[0.0, 0.0, 0.0, 1.0],
        )


def render_views(
    board: Checkerboard | CharucoBoard, board_in_world: Pose, cameras: list[Pose]
) -> list[np.ndarray]:
    """BGR images (as cv2.imread gives) of the board from each camera pose."""
    spec = mujoco.MjSpec()
    spec.visual.global_.offwidth, spec.visual.global_.offheight = WIDTH, HEIGHT
    add_board(spec, board, board_in_world)
    for k, pose in enumerate(cameras):
        spec.worldbody.add_camera(
            name=f"view{k}",
            pos=pose.position.tolist(),
            quat=pose.quaternion_wxyz.tolist(),
            fovy=TRUE_FOVY_DEG,
        )
    spec.worldbody.add_light(
        pos=[0.6, 0.0, 2.0],
        dir=[0.0, 0.0, -1.0],
        type=mujoco.mjtLightType.mjLIGHT_DIRECTIONAL,
        specular=[0, 0, 0],
    )
    model = spec.compile()
    model.vis.headlight.specular[:] = 0.0
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    renderer = CameraRenderer(model, WIDTH, HEIGHT)
    try:
        return [renderer.render(data, k)[:, :, ::-1].copy() for k in range(len(cameras))]
    finally:
        renderer.close()


def intrinsics_poses(board: Checkerboard | CharucoBoard, board_in_world: Pose) -> list[Pose]:
    """Varied views of the whole board: distances, tilts, azimuths and rolls, as a user would hold it."""
    centre = board_in_world.transform(board.corner_points().mean(axis=0))
    poses = []
    views = [  # (distance m, elevation deg, azimuth deg, roll deg, target offset x, y in m)
        (0.45, 89.0, 0.0, 0.0, 0.0, 0.0),
        (0.40, 60.0, 0.0, 10.0, 0.03, 0.0),
        (0.42, 55.0, 90.0, -15.0, 0.0, 0.03),
        (0.45, 50.0, 180.0, 25.0, -0.03, 0.0),
        (0.40, 55.0, 270.0, -30.0, 0.0, -0.03),
        (0.50, 65.0, 45.0, 90.0, 0.02, 0.02),
        (0.46, 70.0, 135.0, 5.0, -0.01, 0.01),
        (0.46, 45.0, 225.0, -10.0, 0.02, -0.02),
        (0.55, 75.0, 315.0, 45.0, 0.05, 0.03),
        (0.47, 80.0, 20.0, -40.0, -0.02, -0.01),
    ]
    for distance, elevation, azimuth, roll, dx, dy in views:
        el, az = math.radians(elevation), math.radians(azimuth)
        offset = distance * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        poses.append(look_at(centre + offset, centre + np.array([dx, dy, 0.0]), roll))
    return poses


def render_calibration_scene(overrides: tuple[str, ...] = ()) -> dict:
    """Intrinsics views, the still board seen by the true camera, and a view without the board."""
    cfg = load_config(list(overrides))
    board = board_from_config(cfg.calibration.board)
    board_in_world = Pose.from_wxyz(cfg.calibration.board.position, cfg.calibration.board.quaternion_wxyz)
    true_camera = Pose.from_wxyz(*TRUE_CAMERA_POSE)
    away = look_at(true_camera.position, true_camera.position + np.array([1.0, 0.0, 0.3]))
    centre = board_in_world.transform(board.corner_points().mean(axis=0))
    partial = look_at(centre + np.array([0.2, 0.0, 0.3]), centre + np.array([0.15, 0.0, 0.0]), roll_deg=10.0)
    poses = intrinsics_poses(board, board_in_world)
    images = render_views(board, board_in_world, [*poses, true_camera, away, partial])
    return {
        "cfg": cfg,
        "board": board,
        "board_in_world": board_in_world,
        "true_camera": true_camera,
        "intrinsics_images": images[: len(poses)],
        "extrinsics_image": images[len(poses)],
        "no_board_image": images[len(poses) + 1],
        "partial_board_image": images[len(poses) + 2],  # part of the board out of the image
    }


@pytest.fixture(scope="module")
def rendered() -> dict:
    """One render pass for the whole module."""
    return render_calibration_scene()


def write_camera_images(root: Path, data: dict, extrinsics_copies: int = 3) -> Path:
    camera_dir = root / CAMERA
    (camera_dir / "intrinsics").mkdir(parents=True)
    (camera_dir / "extrinsics").mkdir()
    for k, image in enumerate(data["intrinsics_images"]):
        cv2.imwrite(str(camera_dir / "intrinsics" / f"{k:03d}.png"), image)
    cv2.imwrite(str(camera_dir / "intrinsics" / "no_board.png"), data["no_board_image"])
    cv2.imwrite(str(camera_dir / "intrinsics" / "partial_board.png"), data["partial_board_image"])
    for k in range(extrinsics_copies):
        cv2.imwrite(str(camera_dir / "extrinsics" / f"{k:03d}.png"), data["extrinsics_image"])
    return camera_dir


def test_board_rejects_ambiguous_patterns_and_lays_out_corners() -> None:
    with pytest.raises(ValueError, match="must be odd"):
        Checkerboard(8, 6, 0.03)
    board = Checkerboard(9, 6, 0.03)
    points = board.corner_points()
    assert points.shape == (54, 3)
    assert np.allclose(points[0], [0.03, 0.03, 0.0])  # origin: the outer corner of the bottom-left square
    assert np.allclose(points[1] - points[0], [0.03, 0.0, 0.0])
    assert np.allclose(points[9] - points[0], [0.0, 0.03, 0.0])
    charuco = CharucoBoard((10, 7), 0.03, 0.022, "DICT_4X4_50")
    corners = charuco.corner_points()
    assert corners.shape == (54, 3) and np.allclose(corners.min(axis=0), [0.03, 0.03, 0.0])
    assert np.allclose(corners.max(axis=0), [0.27, 0.18, 0.0])
    with pytest.raises(ValueError, match="dictionary"):
        CharucoBoard((10, 7), 0.03, 0.022, "DICT_NOPE")


def test_camera_conventions_agree_with_mujoco() -> None:
    """A point on a MuJoCo camera's -z axis lies on the optical +z axis of the converted pose."""
    camera = look_at(np.array([1.0, -0.4, 0.3]), np.array([0.6, 0.0, 0.05]), roll_deg=17.0)
    optical = optical_camera_pose(camera)
    point_ahead = camera.transform(np.array([0.0, 0.0, -0.5]))
    point_above = camera.transform(np.array([0.0, 0.1, -0.5]))  # +y is up in MuJoCo ...
    in_optical = optical.inverse().transform(np.stack([point_ahead, point_above]))
    assert np.allclose(in_optical[0], [0.0, 0.0, 0.5])
    assert in_optical[1][1] < 0  # ... and up is -y (towards the top row) in the optical frame
    matrix = np.empty(9)
    mujoco.mju_quat2Mat(matrix, camera.quaternion_wxyz)
    assert np.allclose(matrix.reshape(3, 3), camera.rotation)


def test_detection_names_the_same_corner_whichever_way_the_image_is_turned(rendered: dict) -> None:
    board: Checkerboard = rendered["board"]
    image = rendered["intrinsics_images"][1]
    observation = board.detect(image)
    assert observation is not None and observation.image_points.shape == (54, 2)
    corners = observation.image_points
    height, width = image.shape[:2]
    for turns in (1, 2, 3):
        turned = np.ascontiguousarray(np.rot90(image, turns))
        found = board.detect(turned)
        assert found is not None and np.array_equal(found.ids, observation.ids)
        expected = corners.copy()
        for turn in range(turns):  # np.rot90 turns counter-clockwise: (u, v) -> (v, w - 1 - u)
            w = width if turn % 2 == 0 else height
            expected = np.stack([expected[:, 1], w - 1 - expected[:, 0]], axis=1)
        assert np.abs(found.image_points - expected).max() < 0.5, turns
    assert board.detect(rendered["no_board_image"]) is None


def test_intrinsics_from_rendered_views_recover_the_pinhole(rendered: dict) -> None:
    board: Checkerboard = rendered["board"]
    views = [board.detect(image) for image in rendered["intrinsics_images"]]
    assert all(v is not None for v in views)
    result = calibrate_intrinsics(views, board, (WIDTH, HEIGHT))
    truth = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
    k = result.intrinsics
    assert k.fx == pytest.approx(truth.fx, rel=5e-3)
    assert k.fy == pytest.approx(truth.fy, rel=5e-3)
    assert k.fovy_deg == pytest.approx(TRUE_FOVY_DEG, abs=0.1)
    assert abs(k.cx - truth.cx) < 2.0 and abs(k.cy - truth.cy) < 2.0
    assert np.abs(k.distortion_array).max() < 0.05
    assert result.rms_px < 0.3 and len(result.per_view_rms_px) == len(views)


def test_extrinsics_recover_the_camera_pose_in_the_world(rendered: dict) -> None:
    board: Checkerboard = rendered["board"]
    observation = board.detect(rendered["extrinsics_image"])
    assert observation is not None
    truth = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
    result = solve_extrinsics([observation], board, truth, rendered["board_in_world"])
    distance, angle = pose_change(rendered["true_camera"], result.camera_in_world)
    assert distance < 0.01 and angle < 1.0, (distance, angle)
    assert result.rms_px < 0.5


def test_extrinsics_chain_a_turned_and_tilted_board_pose() -> None:
    """A board not aligned with the world axes: the board's world rotation must enter the chain correctly."""
    board = Checkerboard(9, 6, 0.025)
    rotation = Rotation.from_euler("xyz", [12.0, -18.0, 120.0], degrees=True)
    board_in_world = Pose(np.array([0.55, 0.05, 0.10]), rotation.as_matrix())
    centre = board_in_world.transform(board.corner_points().mean(axis=0))
    camera = look_at(centre + np.array([0.25, -0.2, 0.3]), centre, roll_deg=-8.0)
    (image,) = render_views(board, board_in_world, [camera])
    observation = board.detect(image)
    assert observation is not None
    truth = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
    result = solve_extrinsics([observation], board, truth, board_in_world)
    distance, angle = pose_change(camera, result.camera_in_world)
    assert distance < 0.01 and angle < 1.0, (distance, angle)


def test_extrinsics_refuse_a_board_that_moved(rendered: dict) -> None:
    board: Checkerboard = rendered["board"]
    still = board.detect(rendered["extrinsics_image"])
    assert still is not None
    moved = BoardObservation(still.ids, still.image_points + 3.0)
    truth = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
    with pytest.raises(ValueError, match="moved"):
        solve_extrinsics([still, moved], board, truth, rendered["board_in_world"])


def test_calibrate_tool_writes_a_file_the_twin_places_the_camera_from(
    rendered: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = rendered["cfg"]
    images = tmp_path / "images"
    write_camera_images(images, rendered)
    output = tmp_path / "cell.yaml"
    shutil.copy(calibration_dir() / str(cfg.cameras.calibration_file), output)
    before = yaml.safe_load(output.read_text())

    assert calibrate_tool.main(["--images", str(images), "--output", str(output), "--report"]) == 0
    report = capsys.readouterr().out
    assert f"{CAMERA}: reprojection RMS intrinsics" in report
    assert "board not found: no_board.png" in report and "board not found: partial_board.png" in report
    assert "moved" in report and f"wrote {CAMERA}" in report

    after = read_calibration(output)
    for other in set(before["cameras"]) - {CAMERA}:  # every other camera's entry is kept as it was
        assert after["cameras"][other] == before["cameras"][other]
    entry = after["cameras"][CAMERA]
    assert entry["fovy_deg"] == pytest.approx(TRUE_FOVY_DEG, abs=0.1)
    assert entry["intrinsics"]["width"] == WIDTH and entry["intrinsics"]["height"] == HEIGHT
    assert entry["calibration"]["views"] == {"extrinsics": 3, "intrinsics": 10}

    # The twin's scene builder reads the file and places its camera where the rendering camera was.
    from gato_ros.twin import build_scene

    twin_cfg = load_config([f"cameras.calibration_file={output}"])
    model, index = build_scene(twin_cfg, tuple(twin_cfg.twin.triplets["1"]))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    cam = index.cameras[CAMERA]
    placed = Pose(data.cam_xpos[cam].copy(), data.cam_xmat[cam].reshape(3, 3).copy())
    distance, angle = pose_change(rendered["true_camera"], placed)
    assert distance < 0.01 and angle < 1.0, (distance, angle)
    assert model.cam_fovy[cam] == pytest.approx(TRUE_FOVY_DEG, abs=0.1)

    # The camera node's CameraInfo uses the measured intrinsics.
    from gato_ros.ros.messages import camera_intrinsics

    info = camera_intrinsics(after, CAMERA, WIDTH, HEIGHT)
    assert info.fx == pytest.approx(entry["intrinsics"]["fx"]) and info.cx == pytest.approx(
        entry["intrinsics"]["cx"]
    )


def test_calibrate_tool_writes_nothing_when_a_quality_gate_fails(rendered: dict, tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_camera_images(images, rendered, extrinsics_copies=1)
    output = tmp_path / "cell.yaml"
    shutil.copy(calibration_dir() / "rgb_stacking_cell.yaml", output)
    original = output.read_text()
    strict = "calibration.quality.max_reprojection_error_px=0.0001"
    assert calibrate_tool.main(["--images", str(images), "--output", str(output), strict]) == 1
    assert output.read_text() == original
    # --force writes it anyway; --dry-run never writes.
    assert (
        calibrate_tool.main(
            ["--images", str(images), "--output", str(output), strict, "--dry-run", "--force"]
        )
        == 0
    )
    assert output.read_text() == original
    assert calibrate_tool.main(["--images", str(images), "--output", str(output), strict, "--force"]) == 0
    assert read_calibration(output)["cameras"][CAMERA]["calibration"]["intrinsics_source"] == "images"


def test_factory_and_kept_intrinsics_give_the_same_pose(rendered: dict, tmp_path: Path) -> None:
    """With RealSense factory intrinsics (as --capture saves them), no intrinsics views are needed."""
    cfg = rendered["cfg"]
    images = tmp_path / "images"
    camera_dir = write_camera_images(images, rendered, extrinsics_copies=2)
    shutil.rmtree(camera_dir / "intrinsics")
    truth = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
    factory = {
        "width": WIDTH,
        "height": HEIGHT,
        "fx": truth.fx,
        "fy": truth.fy,
        "ppx": truth.cx,
        "ppy": truth.cy,
    }
    factory |= {"model": "inverse_brown_conrady", "coeffs": [0.0] * 5}
    (camera_dir / str(cfg.calibration.images.factory_intrinsics_file)).write_text(yaml.safe_dump(factory))
    output = tmp_path / "cell.yaml"
    assert calibrate_tool.main(["--images", str(images), "--output", str(output)]) == 0
    entry = read_calibration(output)["cameras"][CAMERA]
    assert entry["calibration"]["intrinsics_source"] == "factory"
    assert entry["intrinsics"]["fx"] == pytest.approx(truth.fx, abs=1e-3)
    distance, angle = pose_change(
        rendered["true_camera"], Pose.from_wxyz(entry["position"], entry["quaternion_wxyz"])
    )
    assert distance < 0.01 and angle < 1.0, (distance, angle)

    # Re-run the extrinsics only (a bumped camera), keeping the intrinsics already in the file.
    (camera_dir / str(cfg.calibration.images.factory_intrinsics_file)).unlink()
    assert (
        calibrate_tool.main(["--images", str(images), "--output", str(output), "--intrinsics", "keep"]) == 0
    )
    again = read_calibration(output)["cameras"][CAMERA]
    assert again["calibration"]["intrinsics_source"] == "kept"
    assert again["intrinsics"] == entry["intrinsics"] and again["position"] == entry["position"]
    # Distortion RealSense cannot express as plumb_bob is refused, not silently dropped.
    factory |= {"coeffs": [0.1, 0.0, 0.0, 0.0, 0.0]}
    (camera_dir / str(cfg.calibration.images.factory_intrinsics_file)).write_text(yaml.safe_dump(factory))
    assert (
        calibrate_tool.main(["--images", str(images), "--output", str(output), "--intrinsics", "factory"])
        == 1
    )


class RenderedColourSource:
    """A simulated RealSense colour stream: replays rendered RGB frames and reports the renderer's pinhole."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.index = 0

    def wait(self, timeout_s: float) -> np.ndarray | None:
        frame = self.frames[min(self.index, len(self.frames) - 1)]
        self.index += 1
        return frame

    def factory_intrinsics(self) -> dict:
        k = Intrinsics.ideal(WIDTH, HEIGHT, TRUE_FOVY_DEG)
        return {"width": WIDTH, "height": HEIGHT, "fx": k.fx, "fy": k.fy, "ppx": k.cx, "ppy": k.cy}

    def close(self) -> None:
        pass


def test_capture_saves_views_and_skips_frames_without_the_board(rendered: dict, tmp_path: Path) -> None:
    capture_overrides = ["warmup_frames=2", "extrinsics_frames=3", "intrinsics_views=3"]
    cfg = load_config([f"calibration.capture.{item}" for item in capture_overrides]).calibration
    rgb = [image[:, :, ::-1].copy() for image in rendered["intrinsics_images"]]
    still = rendered["extrinsics_image"][:, :, ::-1].copy()
    frames = [still] * 5 + [rgb[0], rendered["no_board_image"][:, :, ::-1].copy(), rgb[1], rgb[2]]
    answers = iter(["", "", "", "", ""])
    lines: list[str] = []
    counts = capture_camera(
        CAMERA, RenderedColourSource(frames), tmp_path / CAMERA, cfg, lambda _: next(answers), lines.append
    )
    assert counts == (3, 3)
    assert len(list((tmp_path / CAMERA / "extrinsics").glob("*.png"))) == 3
    assert len(list((tmp_path / CAMERA / "intrinsics").glob("*.png"))) == 3
    assert any("board not found" in line for line in lines)
    saved = cv2.imread(str(tmp_path / CAMERA / "intrinsics" / "000.png"))
    assert np.array_equal(saved, rendered["intrinsics_images"][0])


@pytest.fixture(scope="module")
def rendered_charuco() -> dict:
    return render_calibration_scene(("calibration.board.type=charuco",))


def test_charuco_board_calibrates_from_partial_views_too(rendered_charuco: dict, tmp_path: Path) -> None:
    """A ChArUco board names its corners by marker: partly hidden views still count."""
    board = rendered_charuco["board"]
    assert isinstance(board, CharucoBoard)
    partial = board.detect(rendered_charuco["partial_board_image"])
    whole = board.detect(rendered_charuco["intrinsics_images"][0])
    assert partial is not None and whole is not None and 6 <= len(partial.ids) < len(whole.ids) == 54
    images = tmp_path / "images"
    write_camera_images(images, rendered_charuco)
    output = tmp_path / "cell.yaml"
    argv = ["--images", str(images), "--output", str(output), "calibration.board.type=charuco"]
    assert calibrate_tool.main(argv) == 0
    entry = read_calibration(output)["cameras"][CAMERA]
    assert entry["calibration"]["views"]["intrinsics"] == len(rendered_charuco["intrinsics_images"]) + 1
    assert entry["calibration"]["board"].startswith("charuco")
    assert entry["fovy_deg"] == pytest.approx(TRUE_FOVY_DEG, abs=0.1)
    placed = Pose.from_wxyz(entry["position"], entry["quaternion_wxyz"])
    distance, angle = pose_change(rendered_charuco["true_camera"], placed)
    assert distance < 0.01 and angle < 1.0, (distance, angle)
