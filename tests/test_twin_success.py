"""The benchmark's sparse reward on constructed configurations, judged after the physics settles (the
episode-level rules of each `twin.episode.mode` are pinned in test_twin_fidelity.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.twin import ScriptedExpert, StackingTwin, Stage
from gato_ros.twin.scene import body_vertices

RED, GREEN, BLUE = 0, 1, 2
UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0])
ON_ITS_SIDE = np.array([np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0])  # 90 deg about x


@pytest.fixture(scope="module")
def twin() -> StackingTwin:
    # Triplet 5: blue is the cube s0, red the prism r2.
    cfg = load_config(["twin.triplet=5", "twin.render=false"])
    twin = StackingTwin(cfg)
    yield twin
    twin.close()


def _extent(twin: StackingTwin, obj: int) -> tuple[float, float]:
    """(depth below centre, height above centre) of an upright object."""
    z = body_vertices(twin.model, twin.index.object_bodies[obj])[:, 2]
    return float(-z.min()), float(z.max())


def _settle(twin: StackingTwin, poses: np.ndarray, steps: int = 10) -> None:
    twin.set_object_poses(poses)
    for _ in range(steps):  # 0.5 s with the arm holding still, gripper open, high above
        step = twin.step_joint_velocity(np.zeros(7), -1.0)
    return step


FLOOR = 0.0498
GAP = 0.0005


def _on_floor(twin: StackingTwin, obj: int, x: float, y: float, quat: np.ndarray = UPRIGHT) -> np.ndarray:
    return np.array([x, y, FLOOR + _extent(twin, obj)[0] + GAP, *quat])


def test_stacked_red_on_blue_is_success(twin: StackingTwin) -> None:
    twin.reset(seed=0)
    blue = _on_floor(twin, BLUE, 0.6, 0.0)
    red = blue.copy()
    red[2] = blue[2] + _extent(twin, BLUE)[1] + _extent(twin, RED)[0] + GAP
    step = _settle(twin, np.stack([red, _on_floor(twin, GREEN, 0.52, -0.09), blue]))
    check = step.info["stack_check"]
    assert check.touches_blue and not check.touches_support and not check.touches_robot
    assert step.info["stacked"] and twin.is_stacked()
    assert not step.done  # benchmark mode: the episode runs on to its last step


def test_adjacent_objects_are_not_success(twin: StackingTwin) -> None:
    twin.reset(seed=0)
    poses = np.stack(
        [
            _on_floor(twin, RED, 0.6, 0.065),
            _on_floor(twin, GREEN, 0.52, -0.09),
            _on_floor(twin, BLUE, 0.6, 0.0),
        ]
    )
    step = _settle(twin, poses)
    assert not step.info["stacked"]
    assert step.info["stack_check"].touches_support


def test_red_toppled_against_blue_is_not_success(twin: StackingTwin) -> None:
    twin.reset(seed=0)
    blue = _on_floor(twin, BLUE, 0.6, 0.0)
    vertices = body_vertices(twin.model, twin.index.object_bodies[RED])
    lying_depth = float(-vertices[:, 1].min())  # on its side, body y points down
    red = np.array(
        [0.6, 0.0 + 0.025 + float(vertices[:, 2].max()) + 0.002, FLOOR + lying_depth + GAP, *ON_ITS_SIDE]
    )
    step = _settle(twin, np.stack([red, _on_floor(twin, GREEN, 0.52, -0.09), blue]))
    check = step.info["stack_check"]
    assert not step.info["stacked"]
    assert check.touches_support and not check.height_ok


def test_red_held_by_the_gripper_above_blue_is_not_success() -> None:
    """Run the expert until it lowers red over blue: while the gripper holds red it must never count."""
    cfg = load_config(["twin.triplet=5", "twin.render=false"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=1)
        expert.reset()
        held_over_blue = 0
        for _ in range(twin.max_steps):
            action = expert.act(twin)
            step = twin.step(action)
            if expert.stage is Stage.RELEASE:
                break
            check = step.info["stack_check"]
            if expert.stage is Stage.LOWER and check.horizontal_ok and check.height_ok:
                held_over_blue += 1
                assert check.touches_robot and not step.info["stacked"]
        assert held_over_blue > 0
