"""Calibration boards: their corner geometry in the board frame and their detection in an image.

Board frame, for every board type: look at the printed face with the pattern upright; the origin is
the outer bottom-left corner of the square grid, x to the right, y up, z out of the printed face. The
board's world pose in the config (`calibration.board.position/quaternion_wxyz`) is this frame's.

A plain checkerboard is read by OpenCV in an order that depends on how it appears in the image (either
reading direction, or mirrored). For extrinsics against a board at a known world pose the order must name
the same physical corner every time, so `Checkerboard.detect` normalises it: first the handedness (the
board frame's z must face the camera), then the half-turn ambiguity, resolved by the square colours
(inner corners columns + rows odd makes the two readings differ; the bottom-left square is black). A
ChArUco board names its corners by its markers' ids, so it needs none of this and may be partly hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
from omegaconf import DictConfig

BOARD_TYPES = ("checkerboard", "charuco")
MIN_PNP_CORNERS = 6  # fewest corners a view must have to constrain a pose (and an intrinsics view)


@dataclass(frozen=True)
class DetectionSettings:
    subpixel_window_px: int = 5
    subpixel_iterations: int = 50
    subpixel_epsilon_px: float = 0.001
    colour_sample_fraction: float = 0.25
    colour_sample_grid: int = 5

    @classmethod
    def from_config(cls, detection: DictConfig) -> DetectionSettings:
        return cls(
            subpixel_window_px=int(detection.subpixel_window_px),
            subpixel_iterations=int(detection.subpixel_iterations),
            subpixel_epsilon_px=float(detection.subpixel_epsilon_px),
            colour_sample_fraction=float(detection.colour_sample_fraction),
            colour_sample_grid=int(detection.colour_sample_grid),
        )

    @property
    def subpixel_criteria(self) -> tuple[int, int, float]:
        return (
            cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER,
            self.subpixel_iterations,
            self.subpixel_epsilon_px,
        )


@dataclass(frozen=True)
class BoardObservation:
    """Corners found in one image: `ids` index the board's `corner_points()`."""

    ids: np.ndarray  # (N,) int
    image_points: np.ndarray  # (N, 2) float32, pixels (OpenCV convention: pixel centres at integers)


class Board(Protocol):
    """What intrinsics and extrinsics need from a board."""

    def corner_points(self) -> np.ndarray: ...  # (M, 3) float32, board frame

    def detect(
        self, image: np.ndarray, settings: DetectionSettings | None = None
    ) -> BoardObservation | None: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Checkerboard:
    """`columns` x `rows` inner corners, `square_size_m` apart; the bottom-left (origin) square is black."""

    columns: int
    rows: int
    square_size_m: float

    def __post_init__(self) -> None:
        if self.columns < 2 or self.rows < 2:
            raise ValueError(
                f"a checkerboard needs 2 x 2 inner corners or more, got {self.columns} x {self.rows}"
            )
        if (self.columns + self.rows) % 2 == 0:
            raise ValueError(
                f"checkerboard {self.columns} x {self.rows}: columns + rows of inner corners must be odd, "
                "or the board reads the same turned by half a turn and its origin is ambiguous"
            )
        if not self.square_size_m > 0:
            raise ValueError(f"square size must be positive, got {self.square_size_m}")

    @property
    def pattern_size(self) -> tuple[int, int]:
        return self.columns, self.rows

    def corner_points(self) -> np.ndarray:
        """(N, 3) float32 inner corners in the board frame, row by row from the bottom, x fastest."""
        j, i = np.mgrid[1 : self.rows + 1, 1 : self.columns + 1]
        points = np.stack([i.ravel(), j.ravel(), np.zeros(i.size)], axis=1) * self.square_size_m
        return points.astype(np.float32)

    def describe(self) -> str:
        size_mm = self.square_size_m * 1000
        return f"checkerboard {self.columns}x{self.rows} inner corners, {size_mm:g} mm squares"

    def detect(self, image: np.ndarray, settings: DetectionSettings | None = None) -> BoardObservation | None:
        """Every inner corner (sub-pixel) in `corner_points` order; None unless the whole board is seen."""
        settings = settings or DetectionSettings()
        gray = to_gray(image)
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
        found, corners = cv2.findChessboardCorners(gray, self.pattern_size, flags=flags)
        if found:
            window = (settings.subpixel_window_px, settings.subpixel_window_px)
            corners = cv2.cornerSubPix(gray, corners, window, (-1, -1), settings.subpixel_criteria)
        else:  # the sector-based detector copes with blur and uneven light
            found, corners = cv2.findChessboardCornersSB(
                gray, self.pattern_size, flags=cv2.CALIB_CB_EXHAUSTIVE
            )
            if not found:
                return None
        grid = corners.reshape(self.rows, self.columns, 2).astype(np.float64)
        grid = self._normalise_order(gray, grid, settings)
        points = grid.reshape(-1, 2).astype(np.float32)
        return BoardObservation(np.arange(len(points)), points)

    def _normalise_order(self, gray: np.ndarray, grid: np.ndarray, settings: DetectionSettings) -> np.ndarray:
        # Handedness: with z towards the camera, board x right in the image means board y up, so the
        # image-plane cross product of the x and y directions (image y points down) is negative.
        along_x = grid[0, -1] - grid[0, 0]
        along_y = grid[-1, 0] - grid[0, 0]
        if along_x[0] * along_y[1] - along_x[1] * along_y[0] > 0:
            grid = grid[:, ::-1]
        # Half turn: the interior square whose lower-left corner is inner corner (i, j) is black for
        # i + j even (it shares its colour with the black origin square diagonally below it).
        if self._even_squares_brightness_margin(gray, grid, settings) > 0:
            grid = grid[::-1, ::-1]
        return np.ascontiguousarray(grid)

    def _even_squares_brightness_margin(
        self, gray: np.ndarray, grid: np.ndarray, settings: DetectionSettings
    ) -> float:
        """Mean brightness of the interior squares with i + j even minus that of the odd ones."""
        board_xy = self.corner_points()[:, :2].astype(np.float64)
        homography, _ = cv2.findHomography(board_xy, grid.reshape(-1, 2))
        if homography is None:
            return 0.0
        n = settings.colour_sample_grid
        offsets = np.linspace(-settings.colour_sample_fraction, settings.colour_sample_fraction, n)
        dx, dy = np.meshgrid(offsets, offsets)
        j, i = np.mgrid[0 : self.rows - 1, 0 : self.columns - 1]
        centres_x = (i.ravel()[:, None] + 1.5 + dx.ravel()[None]) * self.square_size_m
        centres_y = (j.ravel()[:, None] + 1.5 + dy.ravel()[None]) * self.square_size_m
        samples = np.stack([centres_x.ravel(), centres_y.ravel()], axis=1).reshape(-1, 1, 2)
        pixels = cv2.perspectiveTransform(samples, homography).reshape(-1, 2)
        columns = np.clip(np.rint(pixels[:, 0]).astype(int), 0, gray.shape[1] - 1)
        rows = np.clip(np.rint(pixels[:, 1]).astype(int), 0, gray.shape[0] - 1)
        brightness = gray[rows, columns].astype(np.float64).reshape(-1, n * n).mean(axis=1)
        even = ((i + j).ravel() % 2) == 0
        return float(brightness[even].mean() - brightness[~even].mean())


class CharucoBoard:
    """A ChArUco board: `squares` = (columns, rows) of squares, ArUco markers in the white ones.

    OpenCV's board frame has y down and z into the print; ours (see the module docstring) is that frame
    turned half a turn about x and moved to the bottom-left corner: (x, y, z) -> (x, H - y, -z).
    """

    def __init__(
        self,
        squares: tuple[int, int],
        square_size_m: float,
        marker_size_m: float,
        dictionary: str,
        legacy_pattern: bool = False,
        min_corners: int = MIN_PNP_CORNERS,
    ) -> None:
        if not 0 < marker_size_m < square_size_m:
            raise ValueError(f"marker size {marker_size_m} must be positive and below the square size")
        dictionary_id = getattr(cv2.aruco, dictionary, None)
        if not dictionary.startswith("DICT_") or dictionary_id is None:
            raise ValueError(f"unknown ArUco dictionary {dictionary!r} (e.g. DICT_4X4_50)")
        self.squares = (int(squares[0]), int(squares[1]))
        self.square_size_m, self.marker_size_m, self.dictionary = square_size_m, marker_size_m, dictionary
        self.min_corners = max(int(min_corners), MIN_PNP_CORNERS)
        self.board = cv2.aruco.CharucoBoard(
            self.squares, square_size_m, marker_size_m, cv2.aruco.getPredefinedDictionary(dictionary_id)
        )
        self.board.setLegacyPattern(bool(legacy_pattern))
        self._detector = cv2.aruco.CharucoDetector(self.board)

    def to_board_frame(self, opencv_points: np.ndarray) -> np.ndarray:
        """Points in OpenCV's ChArUco frame -> our board frame."""
        points = np.asarray(opencv_points, dtype=np.float64).reshape(-1, 3)
        height = self.squares[1] * self.square_size_m
        return np.stack([points[:, 0], height - points[:, 1], -points[:, 2]], axis=1)

    def corner_points(self) -> np.ndarray:
        return self.to_board_frame(self.board.getChessboardCorners()).astype(np.float32)

    def describe(self) -> str:
        return (
            f"charuco {self.squares[0]}x{self.squares[1]} squares of {self.square_size_m * 1000:g} mm, "
            f"{self.marker_size_m * 1000:g} mm {self.dictionary} markers"
        )

    def detect(self, image: np.ndarray, settings: DetectionSettings | None = None) -> BoardObservation | None:
        """The corners seen (by id), or None when fewer than `min_corners` or all on one line."""
        corners, ids, _, _ = self._detector.detectBoard(to_gray(image))
        if ids is None or len(ids) < self.min_corners:
            return None
        if self.board.checkCharucoCornersCollinear(ids):
            return None
        return BoardObservation(ids.ravel().astype(int), corners.reshape(-1, 2).astype(np.float32))


def board_from_config(board: DictConfig) -> Checkerboard | CharucoBoard:
    kind = str(board.type)
    if kind == "checkerboard":
        columns, rows = (int(n) for n in board.inner_corners)
        return Checkerboard(columns, rows, float(board.square_size_m))
    if kind == "charuco":
        charuco = board.charuco
        columns, rows = (int(n) for n in charuco.squares)
        return CharucoBoard(
            (columns, rows),
            float(board.square_size_m),
            float(charuco.marker_size_m),
            str(charuco.dictionary),
            bool(charuco.legacy_pattern),
            int(charuco.min_corners),
        )
    raise ValueError(f"unknown board type {kind!r}; one of {', '.join(BOARD_TYPES)}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """8-bit grayscale of a gray, BGR or BGRA image (channel order does not matter for the corners)."""
    if image.ndim == 2:
        gray = image
    elif image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    else:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if gray.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit image, got {gray.dtype}")
    return gray
