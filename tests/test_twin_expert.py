"""The scripted expert stacks red on blue in seeded episodes (it generates the training data)."""

from __future__ import annotations

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.twin import ScriptedExpert, StackingTwin, Stage
from gato_ros.twin.expert import (
    BLUE,
    box_vertices,
    hull_facets,
    reachable_grasp_yaw,
    stack_anchor_offset,
    support_gap,
    top_support,
)


def test_the_grasp_yaw_depends_on_the_closing_direction_not_its_sign() -> None:
    # The fingers are symmetric: yaw and yaw + pi close alike, so they must give the same wrist target,
    # also in the wrist's gap near +-pi/2 where no equivalent is within the limits.
    limit = np.pi / 2 - 0.1
    for yaw in np.linspace(-np.pi, np.pi, 721):
        for current in (-1.2, -0.3, 0.4, 1.3):
            target = reachable_grasp_yaw(yaw, current, limit)
            assert -limit <= target <= limit
            assert target == pytest.approx(reachable_grasp_yaw(yaw + np.pi, current, limit))
            off = abs((target - yaw + np.pi / 2) % np.pi - np.pi / 2)  # from the direction, mod pi
            assert off <= np.pi - 2 * limit + 1e-9  # at most the gap's width


def test_in_the_wrists_gap_the_grasp_yaw_is_the_end_nearer_the_current_yaw() -> None:
    limit = np.pi / 2 - 0.1
    for yaw in (np.pi / 2 - 0.05, np.pi / 2 + 0.05, -np.pi / 2 + 0.05):
        assert reachable_grasp_yaw(yaw, -0.4, limit) == pytest.approx(-limit)
        assert reachable_grasp_yaw(yaw, 0.4, limit) == pytest.approx(limit)
    # Outside the gap there is one reachable equivalent, wherever the wrist is.
    assert reachable_grasp_yaw(1.3, -1.0, limit) == pytest.approx(1.3)
    assert reachable_grasp_yaw(1.3 + np.pi, 1.0, limit) == pytest.approx(1.3)


@pytest.mark.parametrize(("triplet", "seed"), [("1", 0), ("4", 3)])
def test_expert_stacks_in_a_seeded_episode(triplet: str, seed: int) -> None:
    # early_stop: the episode ends once the released stack has held (benchmark mode would run on to 20 s).
    cfg = load_config([f"twin.triplet={triplet}", "twin.render=false", "twin.episode.mode=early_stop"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=seed)
        expert.reset()
        stages = []
        for _ in range(twin.max_steps):
            action = expert.act(twin)
            assert action.shape == (5,)
            assert np.all(action >= np.asarray(cfg.control.action_low))
            assert np.all(action <= np.asarray(cfg.control.action_high))
            step = twin.step(action)
            if not stages or stages[-1] is not expert.stage:
                stages.append(expert.stage)
            if step.done:
                break
        assert step.success, f"stages: {[s.value for s in stages]}"
        assert not step.info["physics_unstable"]
        assert step.info["time"] < float(cfg.control.episode_seconds)
        assert Stage.CLOSE in stages and Stage.LOWER in stages


def finish_episode(twin: StackingTwin, expert: ScriptedExpert):
    """Step the expert until the episode ends; returns the last TwinStep."""
    step = None
    for _ in range(twin.max_steps):
        step = twin.step(expert.act(twin))
        if step.done:
            break
    assert step is not None
    return step


def blue_top_tilt_deg(expert: ScriptedExpert, twin: StackingTwin) -> float:
    """How far blue's most upward face is from level, in degrees."""
    facets = expert._scene(twin).world_facets(BLUE)
    return float(np.degrees(np.arccos(facets[:, 2].max())))


def test_expert_stacks_on_a_blue_whose_top_face_is_tilted() -> None:
    """Training objects, seed 1: blue (v38) rests on a slanted side, its top face tilted 11 degrees, only its
    upper edge inside the face band. Red placed over that edge slid off in every attempt; placed over the
    tilted face, at the height of blue's surface under it, it stays."""
    cfg = load_config(["twin.objects=train", "twin.render=false", "twin.episode.mode=early_stop"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=1)
        expert.reset()
        tilt = blue_top_tilt_deg(expert, twin)
        assert 5.0 < tilt < 20.0, tilt
        assert finish_episode(twin, expert).success
        assert expert.attempts == 1


@pytest.mark.parametrize("feedback", [False, True])
def test_expert_tips_over_a_blue_with_no_level_face_then_stacks(feedback: bool) -> None:
    """Triplet 2, seed 15: b3 (a trapezoidal prism) lies on a slanted side, its most upward face tilted 41
    degrees, past the friction angle: red cannot stay on it. The expert pushes blue near its top toward
    where that face leans, blue rolls onto a level face, and red is stacked on it (both modes)."""
    mode = f"twin.expert.feedback={str(feedback).lower()}"
    cfg = load_config(["twin.triplet=2", "twin.render=false", "twin.episode.mode=early_stop", mode])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=15)
        expert.reset()
        assert blue_top_tilt_deg(expert, twin) > float(cfg.twin.expert.tip_min_tilt_deg)
        scene = expert._scene(twin)
        top = scene.world_facets(BLUE)[np.argmax(scene.world_facets(BLUE)[:, 2])]
        path = expert._tip_plan(scene)
        assert path is not None
        start, end = path
        push = (end - start)[:2]
        assert np.dot(push, top[:2]) > 0.9 * np.linalg.norm(push) * np.linalg.norm(top[:2])  # where it leans
        stages = set()
        step = None
        for _ in range(twin.max_steps):
            step = twin.step(expert.act(twin))
            stages.add(expert.stage)
            if step.done:
                break
        assert step is not None and step.success
        assert Stage.TIP_PUSH in stages
        assert expert.tips >= 1 or feedback  # the staged expert counts its pushes
        assert blue_top_tilt_deg(expert, twin) < float(cfg.twin.expert.tip_min_tilt_deg)


def test_feedback_expert_pushes_blue_from_the_workspace_edge() -> None:
    """Triplet 2, seed 26: blue lies near the workspace's edge, so the push's start is beyond the tool's
    reach. The tool goes to the start clamped to the workspace and pushes from there; measured against the
    unclamped start it never "arrived" and hovered above it for the rest of the episode."""
    cfg = load_config(["twin.triplet=2", "twin.render=false", "twin.expert.feedback=true"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=26)
        expert.reset()
        path = expert._tip_plan(expert._scene(twin), budget=False)
        assert path is not None
        high = np.asarray(cfg.robot.cartesian_controller.workspace_high, dtype=float)
        low = np.asarray(cfg.robot.cartesian_controller.workspace_low, dtype=float)
        assert np.any(path[0] > high) or np.any(path[0] < low)  # the start is out of reach
        stages = []
        for _ in range(150):  # 7.5 s: the push is under way by ~4.5 s
            twin.step(expert.act(twin))
            stages.append(expert.stage)
        assert Stage.TIP_PUSH in stages
        assert blue_top_tilt_deg(expert, twin) < float(cfg.twin.expert.tip_min_tilt_deg)


def test_expert_never_tips_from_poses_alone() -> None:
    """From an observation dict the objects are assumed boxes: their faces say nothing about blue's, so the
    expert never plans a push from them."""
    cfg = load_config(["twin.triplet=2", "twin.render=false"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        observation = twin.reset(seed=15)
        expert.reset()
        assert expert._tip_plan(expert._scene(observation)) is None
        expert.act(observation)
        assert expert.stage is not Stage.TIP_APPROACH


def tilted_box(half_size: np.ndarray, tilt: float, centre: np.ndarray) -> np.ndarray:
    rotation = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]]
    )
    return box_vertices(half_size) @ rotation.T + centre


def test_the_top_support_of_a_tilted_blue_is_its_whole_top_face() -> None:
    """A 6 x 4 cm top tilted 15 degrees: the 4 mm band holds only its upper edge, the support the face."""
    blue = tilted_box(np.array([0.03, 0.02, 0.02]), np.radians(15.0), np.array([0.6, 0.0, 0.03]))
    facets = hull_facets(blue)
    support = top_support(blue, facets, band=0.004)
    top_face = blue[[1, 3, 5, 7]]  # the +z corners of the box before tilting
    assert len(support) == 4
    assert np.allclose(np.sort(support, axis=0), np.sort(top_face[:, :2], axis=0))
    flat = tilted_box(np.array([0.03, 0.02, 0.02]), 0.0, np.array([0.6, 0.0, 0.03]))
    assert len(top_support(flat, hull_facets(flat), band=0.004)) == 4
    # Red's centre of mass goes over the face's middle, not over its upper edge.
    red = box_vertices(np.array([0.015, 0.015, 0.02])) + np.array([0.5, 0.1, 0.2])
    offset = stack_anchor_offset(red, red[:, :2].mean(axis=0), blue, 0.004, blue_facets=facets)
    face_middle = top_face[:, :2].mean(axis=0)
    assert np.linalg.norm(red[:, :2].mean(axis=0) + offset - face_middle) < 0.003


def test_the_support_gap_is_to_blues_surface_under_red() -> None:
    """Red (flat bottom) over a tilted blue: the gap is to the highest point of blue's surface under red's
    footprint, exact for planes; none where the outlines do not overlap."""
    tilt = np.radians(15.0)
    blue = tilted_box(np.array([0.03, 0.03, 0.02]), tilt, np.array([0.6, 0.0, 0.03]))
    blue_facets = hull_facets(blue)
    red_half = np.array([0.01, 0.01, 0.02])
    red = box_vertices(red_half) + np.array([0.6, 0.0, 0.15])
    red_facets = hull_facets(red)
    # Blue's top plane through its centre's top point; under red's footprint its highest point is at y=+0.01.
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])
    top_point = np.array([0.6, 0.0, 0.03]) + 0.02 * normal
    surface_z = top_point[2] - (0.01 - top_point[1]) * normal[1] / normal[2]
    gap = support_gap(red, red_facets, blue_facets)
    assert gap is not None
    assert abs(gap - (0.15 - 0.02 - surface_z)) < 1e-6
    shifted = support_gap(red, red_facets, blue_facets, shift=np.array([0.0, -0.01]))
    assert shifted is not None and shifted > gap  # moved downhill: more air
    assert support_gap(red, red_facets, blue_facets, shift=np.array([0.3, 0.0])) is None


def test_expert_acts_from_privileged_observations() -> None:
    """Without the twin (observation dict only) it still heads for red and opens the gripper."""
    cfg = load_config(["twin.render=false"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        obs = twin.reset(seed=4)
        red = obs["objects/pose"][:3]
        pinch = obs["sawyer/pinch/pose"][:3]
        action = expert.act(obs)
    assert action[4] < 0.0
    horizontal = action[:2]
    if np.linalg.norm(red[:2] - pinch[:2]) > 0.01:
        assert np.dot(horizontal, red[:2] - pinch[:2]) > 0.0


def run_to(twin: StackingTwin, expert: ScriptedExpert, stage: Stage, max_steps: int) -> int:
    """Step the expert's own episode until it enters `stage`; returns the steps taken."""
    for step in range(max_steps):
        twin.step(expert.act(twin))
        if expert.stage is stage:
            return step + 1
    raise AssertionError(f"the expert never reached {stage.value}")


def test_a_fresh_expert_carries_on_with_red_already_in_the_fingers() -> None:
    """The staged expert's feedback where the state contradicts its plan: a state it did not reach itself
    (here: red held above the floor, as a DAgger learner might leave it) gets the action that continues
    from it: keep the fingers closed and carry, not a new approach that opens them and drops red. From
    there it stacks. (A fresh staged expert restarts its plan at the lift; the feedback expert is tested
    on every visited state below.)"""
    staged = "twin.expert.feedback=false"
    cfg = load_config(["twin.triplet=1", "twin.render=false", "twin.episode.mode=early_stop", staged])
    expert, fresh = ScriptedExpert(cfg), ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        expert.reset()
        run_to(twin, expert, Stage.CARRY, twin.max_steps)
        fresh.reset()
        stages, gripper = [], []  # the fresh expert's gripper commands until it releases red
        step = None
        while twin.step_count < twin.max_steps:
            action = fresh.act(twin)
            stages.append(fresh.stage)
            if Stage.RELEASE not in stages:
                gripper.append(action[4])
            step = twin.step(action)
            if step.done:
                break
        assert step is not None and step.success, [s.value for s in stages]
    assert stages[0] is Stage.LIFT
    assert gripper and all(g > 0.0 for g in gripper)  # closed on red until it was placed


def test_a_fresh_expert_retreats_from_a_stack_it_did_not_build() -> None:
    """Feedback: red standing on blue with the fingers open means retreat and hold, not grasp red off the
    stack (which a fresh, plan-following expert did)."""
    cfg = load_config(["twin.triplet=1", "twin.render=false"])
    expert, fresh = ScriptedExpert(cfg), ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        expert.reset()
        run_to(twin, expert, Stage.DONE, twin.max_steps)
        assert twin.is_stacked()
        fresh.reset()
        actions = []
        for _ in range(40):
            actions.append(fresh.act(twin))
            twin.step(actions[-1])
        assert fresh.stage is Stage.DONE and twin.is_stacked()
    assert all(a[4] < 0.0 for a in actions)  # the fingers stay open


def test_the_stack_anchor_puts_reds_centre_of_mass_deep_inside_a_narrow_top() -> None:
    """Blue's top is 2 cm wide; red is sheared, its centre of mass 1 cm beside its bottom face's centre.
    The midpoint rule alone left the centre of mass 5 mm off the top's middle line (5 mm from its edge);
    the anchor puts it on that line, as far from every edge as the top allows."""
    corners = np.array([[sx, sy] for sx in (-1, 1) for sy in (-1, 1)], dtype=float)
    blue_bottom = np.column_stack([0.6 + 0.03 * corners[:, 0], 0.02 * corners[:, 1], np.zeros(4)])
    blue_top = np.column_stack([0.6 + 0.01 * corners[:, 0], 0.02 * corners[:, 1], np.full(4, 0.05)])
    blue = np.concatenate([blue_bottom, blue_top])
    red_bottom = np.column_stack([0.02 * corners, np.full(4, 0.2)])
    red_top = np.column_stack([0.02 * corners[:, 0] + 0.02, 0.02 * corners[:, 1], np.full(4, 0.24)])
    red = np.concatenate([red_bottom, red_top])
    centre_of_mass = np.array([0.01, 0.0])
    offset = stack_anchor_offset(red, centre_of_mass, blue, band=0.004)
    placed = centre_of_mass + offset
    assert abs(placed[0] - 0.6) <= 0.0015 and abs(placed[1]) <= 0.0015, placed


# -- feedback mode: the stage read off the state at every step -----------------------------------------------
FEEDBACK = ["twin.expert.feedback=true", "twin.render=false", "twin.episode.mode=early_stop"]


def test_a_feedback_experts_action_is_a_function_of_the_state_alone() -> None:
    """`twin.expert.feedback=true`: the expert that drove the episode so far and a fresh one give the same
    action at every state it visits, through every stage, and it stacks. The staged expert's stage and
    timers are memory: a fresh staged expert disagrees with a running one (the control for this test)."""
    for feedback in (True, False):
        cfg = load_config([f"twin.expert.feedback={str(feedback).lower()}", *FEEDBACK[1:], "twin.triplet=1"])
        expert, fresh = ScriptedExpert(cfg), ScriptedExpert(cfg)
        disagreements, stages = 0, set()
        with StackingTwin(cfg) as twin:
            twin.reset(seed=0)
            expert.reset()
            step = None
            for _ in range(twin.max_steps):
                action = expert.act(twin)
                stages.add(expert.stage)
                fresh.reset()
                disagreements += int(not np.array_equal(action, fresh.act(twin)))
                step = twin.step(action)
                if step.done:
                    break
        assert step is not None and step.success, (feedback, sorted(s.value for s in stages))
        if feedback:
            assert disagreements == 0
            assert {
                Stage.APPROACH,
                Stage.DESCEND,
                Stage.CLOSE,
                Stage.LIFT,
                Stage.LOWER,
                Stage.RELEASE,
            } <= stages
        else:
            assert disagreements > 0


def test_a_feedback_expert_picks_red_up_again_after_it_is_knocked_out_of_the_fingers() -> None:
    """Pushed off its path (the fingers forced open while red is carried: red falls), the feedback expert
    reads the new state, grasps red again and stacks, with no attempt budget or timer involved."""
    cfg = load_config([*FEEDBACK, "twin.triplet=1"])
    expert = ScriptedExpert(cfg)
    with StackingTwin(cfg) as twin:
        twin.reset(seed=0)
        expert.reset()
        run_to(twin, expert, Stage.CARRY, twin.max_steps)
        for _ in range(20):  # an operator (or a DAgger learner) opens the fingers for a second
            twin.step(np.array([0.0, 0.0, 0.0, 0.0, -1.0]))
        scene = expert._scene(twin)
        assert scene.gripper < float(cfg.twin.expert.open_gripper_threshold)
        assert not expert._holding_red(scene)
        stages = []
        step = None
        while twin.step_count < twin.max_steps:
            action = expert.act(twin)
            stages.append(expert.stage)
            step = twin.step(action)
            if step.done:
                break
        assert step is not None and step.success, [s.value for s in stages]
    assert Stage.CLOSE in stages and Stage.LIFT in stages  # grasped again
