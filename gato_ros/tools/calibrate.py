"""`gato-ros calibrate`: camera intrinsics and poses from checkerboard images, written to calibration/.

    gato-ros calibrate --images calib_images [--cameras basket_front_left ...] [--report] [key=value ...]
    gato-ros calibrate --capture --images calib_images --cameras basket_front_left   # live RealSense

Images: <images>/<camera>/intrinsics/* (board moved around) and <images>/<camera>/extrinsics/* (board
still at `calibration.board.position/quaternion_wxyz`). The file named by `cameras.calibration_file`
(or --output) gets the calibrated cameras' entries; every other camera's entry is kept. Nothing is
written when any camera fails or misses the quality gates (unless --force), or with --dry-run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from gato_ros.calibration.calibration_file import (
    camera_pose,
    read_calibration,
    updated_calibration,
    write_calibration,
)
from gato_ros.calibration.camera import (
    INTRINSICS_SOURCES,
    CalibrationError,
    CameraCalibration,
    calibrate_camera,
)
from gato_ros.calibration.geometry import pose_change
from gato_ros.config import load_config
from gato_ros.paths import calibration_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gato-ros calibrate",
        description="Calibrate the cell's cameras against a checkerboard at a known world pose.",
        epilog="Trailing key=value arguments are hydra overrides, e.g. calibration.board.square_size_m=0.025",
    )
    parser.add_argument("--images", type=Path, required=True, help="directory with one folder per camera")
    parser.add_argument("--cameras", nargs="+", help="cameras to calibrate (default: every camera folder)")
    parser.add_argument(
        "--intrinsics",
        choices=INTRINSICS_SOURCES,
        default="auto",
        help="images: calibrateCamera on the intrinsics views; factory: the RealSense's own (saved by "
        "--capture); keep: the previous file's; auto: images if enough views, else factory, else keep",
    )
    parser.add_argument(
        "--output", type=Path, help="calibration file (default: calibration/<cameras.calibration_file>)"
    )
    parser.add_argument(
        "--capture", action="store_true", help="first capture the images from live RealSense cameras"
    )
    parser.add_argument("--capture-only", action="store_true", help="capture the images, do not calibrate")
    parser.add_argument(
        "--report", action="store_true", help="print reprojection errors and pose changes in full"
    )
    parser.add_argument("--dry-run", action="store_true", help="calibrate and report, write nothing")
    parser.add_argument("--force", action="store_true", help="write even when a quality gate fails")
    return parser


def calibration_path(cfg: DictConfig, output: Path | None) -> Path:
    if output is not None:
        return output
    name = Path(str(cfg.cameras.calibration_file))
    return name if name.is_absolute() else calibration_dir() / name


def _camera_names(args: argparse.Namespace, cfg: DictConfig) -> list[str]:
    if args.cameras:
        return list(args.cameras)
    if args.capture or args.capture_only:
        return [str(c) for c in cfg.cameras.policy_cameras]
    extrinsics_dir = str(cfg.calibration.images.extrinsics_dir)
    if not args.images.is_dir():
        return []
    return sorted(p.name for p in args.images.iterdir() if (p / extrinsics_dir).is_dir())


def _capture(cameras: Sequence[str], images: Path, cfg: DictConfig) -> None:
    from gato_ros.calibration.capture import RealSenseColourSource, capture_camera

    stream = cfg.ros.camera
    for camera in cameras:
        serial = str(stream.devices.get(camera, "") or "")
        source = RealSenseColourSource(serial, int(stream.width), int(stream.height), int(stream.fps))
        try:
            capture_camera(camera, source, images / camera, cfg.calibration)
        finally:
            source.close()


def _format_vector(values: Sequence[float], decimals: int) -> str:
    return "[" + ", ".join(f"{v:.{decimals}f}" for v in values) + "]"


def report_lines(
    result: CameraCalibration, previous_entry: dict | None, cfg: DictConfig, full: bool
) -> list[str]:
    """The per-camera report: reprojection errors and the pose change versus the previous file."""
    intr, extr = result.intrinsics, result.extrinsics
    k = intr.intrinsics
    pose = extr.camera_in_world
    change = None
    if previous_entry and "position" in previous_entry and "quaternion_wxyz" in previous_entry:
        change = pose_change(camera_pose(previous_entry), pose)
    intr_rms = f"{intr.rms_px:.3f} px" if intr.rms_px is not None else f"n/a ({intr.source})"
    change_text = f"moved {change[0] * 1000:.1f} mm, turned {change[1]:.2f} deg" if change else "new camera"
    lines = [
        f"{result.camera}: reprojection RMS intrinsics {intr_rms}, extrinsics {extr.rms_px:.3f} px; "
        f"fovy {k.fovy_deg:.3f} deg; {change_text}"
    ]
    if change:
        quality = cfg.calibration.quality
        if change[0] > float(quality.warn_position_change_m) or change[1] > float(
            quality.warn_rotation_change_deg
        ):
            lines.append(
                f"  WARNING: large change versus the previous file (above {quality.warn_position_change_m} m "
                f"or {quality.warn_rotation_change_deg} deg): check the board pose in calibration.board"
            )
    if not full:
        return lines
    lines.append(
        f"  intrinsics ({intr.source}) at {k.width}x{k.height}: fx {k.fx:.2f} fy {k.fy:.2f} "
        f"cx {k.cx:.2f} cy {k.cy:.2f} px, distortion {_format_vector(k.distortion, 5)}"
    )
    offset_x, offset_y = k.cx - (k.width - 1) / 2.0, k.cy - (k.height - 1) / 2.0
    lines.append(
        f"  principal point {offset_x:+.1f}, {offset_y:+.1f} px from the image centre "
        "(the twin renders it centred)"
    )
    views = result.intrinsics_views
    if intr.source == "images" and views is not None:
        worst = max(range(len(intr.per_view_rms_px)), key=lambda i: intr.per_view_rms_px[i])
        lines.append(
            f"  intrinsics views: {len(views.used)} used, {len(views.missed)} without the board; worst view "
            f"{views.used[worst].name} at {intr.per_view_rms_px[worst]:.3f} px"
        )
        lines += [f"    board not found: {p.name}" for p in views.missed]
    ev = result.extrinsics_views
    lines.append(
        f"  extrinsics views: {len(ev.used)} used, {len(ev.missed)} without the board; corners move "
        f"{extr.corner_spread_px:.3f} px between them"
    )
    lines.append(
        f"  pose: position {_format_vector(pose.position, 4)} m, quaternion_wxyz "
        f"{_format_vector(pose.quaternion_wxyz, 4)}"
    )
    if previous_entry and change:
        before = camera_pose(previous_entry)
        delta = (pose.position - before.position) * 1000
        lines.append(
            f"  previous: position {_format_vector(before.position, 4)} m, quaternion_wxyz "
            f"{_format_vector(before.quaternion_wxyz, 4)}; change {_format_vector(delta, 1)} mm"
        )
    return lines


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    if args.cameras:  # `--cameras a b key=value`: nargs="+" also takes the overrides
        overrides += [c for c in args.cameras if "=" in c]
        args.cameras = [c for c in args.cameras if "=" not in c]
    unknown = [a for a in overrides if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    cfg = load_config(overrides)
    cameras = _camera_names(args, cfg)
    if not cameras:
        extrinsics_dir = cfg.calibration.images.extrinsics_dir
        print(f"gato-ros calibrate: no camera folders with {extrinsics_dir}/ in {args.images}")
        return 2
    if args.capture or args.capture_only:
        try:
            _capture(cameras, args.images, cfg)
        except (
            RuntimeError,
            OSError,
            EOFError,
            KeyboardInterrupt,
        ) as err:  # librealsense raises RuntimeError
            print(f"gato-ros calibrate: capture stopped: {err or type(err).__name__}", file=sys.stderr)
            return 1
        if args.capture_only:
            return 0
    path = calibration_path(cfg, args.output)
    previous = read_calibration(path)
    results: dict[str, CameraCalibration] = {}
    failed = False
    for camera in cameras:
        previous_entry = previous["cameras"].get(camera)
        try:
            result = calibrate_camera(
                camera, args.images / camera, cfg.calibration, args.intrinsics, previous_entry, args.force
            )
        except CalibrationError as err:
            print(f"{camera}: FAILED: {err}", file=sys.stderr)
            failed = True
            continue
        results[camera] = result
        print("\n".join(report_lines(result, previous_entry, cfg, args.report)))
    if failed:
        print(
            f"nothing written to {path}: fix the failed camera(s) or calibrate the others with --cameras",
            file=sys.stderr,
        )
        return 1
    if args.dry_run:
        print(f"dry run: {path} not changed")
        return 0
    write_calibration(path, updated_calibration(previous, {n: r.entry() for n, r in results.items()}))
    print(f"wrote {', '.join(results)} to {path}")
    return 0
