"""`gato-ros eval`: episodes through the whole ROS 2 stack (twin, policy and command node as processes),
success per group with Wilson intervals, the paper-style table, JSON rows, plots, and reproducible seeds.

The ROS-free parts (attribution of statuses, latency and diagnostics to episodes; the config as node
overrides; seed shares) are tested on their own; the stack runs short episodes
(``control.episode_seconds=1.5``) of a randomly initialised tiny checkpoint and both baselines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gato_ros.config import load_config
from gato_ros.evaluation.overrides import config_overrides, merge_overrides
from gato_ros.evaluation.report import table_columns
from gato_ros.evaluation.tracker import EpisodeTracker, interventions
from gato_ros.gato.checkpoint import save_checkpoint
from gato_ros.gato.model import build_model
from gato_ros.ros.launcher import ROS_DOMAIN_ID_RANGE
from gato_ros.tools.eval import eval_domain_id, evaluate, plan_jobs, worker_seeds
from gato_ros.tools.launch import wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELL = re.compile(r"^(\d+\.\d) % \((\d+\.\d)–(\d+\.\d)\), n=(\d+)$")
ROW_FIELDS = {
    "policy",
    "group",
    "seed",
    "objects",
    "success",
    "time_to_success_s",
    "steps",
    "sim_time",
    "clamps",
    "holds",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_mean_ms",
    "latency_samples",
    "error",
}
EPISODES = 2
PERIOD = 0.05  # control period of the synthetic statuses (s)
GROUPS = [1, "train"]


# -- ROS-free parts --------------------------------------------------------------------------------------
def test_wilson_interval_is_shared_with_launch() -> None:
    from gato_ros.evaluation.stats import wilson_interval as shared

    assert wilson_interval is shared
    for n in range(1, 60):
        for wins in range(n + 1):
            low, high = shared(wins, n)
            assert 0.0 <= low <= wins / n <= high <= 1.0, (wins, n)
    assert shared(36, 50) == pytest.approx((0.5833, 0.8253), abs=1e-4)  # the paper-style example cell


def test_worker_shares_partition_the_seeds() -> None:
    for episodes, workers in [(1, 1), (2, 2), (7, 3), (20, 2)]:
        shares = [worker_seeds(10, episodes, w, workers) for w in range(workers)]
        flat = [s for share in shares for s in share]
        assert sorted(flat) == list(range(10, 10 + episodes)) and len(set(flat)) == len(flat)
        for w, share in enumerate(shares):  # what the twin runs: seed + k * stride
            assert list(share) == [10 + w + k * workers for k in range(len(share))]


def test_domain_ids_differ_per_slot_and_stay_in_range() -> None:
    low, high = ROS_DOMAIN_ID_RANGE
    for pid in (0, 12345, 99):
        ids = [eval_domain_id(slot, pid, env={}) for slot in range(8)]
        assert len(set(ids)) == len(ids) and all(low <= i <= high for i in ids)


def test_a_domain_id_the_user_set_is_respected() -> None:
    """Slot 0 runs on the user's ROS_DOMAIN_ID, the others on the ids after it; nonsense is one error."""
    assert [eval_domain_id(slot, 77, env={"ROS_DOMAIN_ID": "42"}) for slot in range(3)] == [42, 43, 44]
    with pytest.raises(ValueError, match="not a ROS 2 domain id"):
        eval_domain_id(0, env={"ROS_DOMAIN_ID": "abc"})
    with pytest.raises(ValueError, match="no domain id for job slot 1"):
        eval_domain_id(1, env={"ROS_DOMAIN_ID": "232"})


def test_config_becomes_node_overrides_that_compose_back() -> None:
    cfg = load_config(["model=small", "seed=3", "twin.triplets.1=[r3,s0,b2]", "policy.device='true'"])
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, "control.episode_seconds", 1.5)
    OmegaConf.update(cfg, "policy.checkpoint", "/a b/it's ${seed}")  # quoting; interpolation kept
    OmegaConf.update(cfg, "twin.visual_primitives", {"extra/geom": "box"}, merge=True)  # `/` in a key
    OmegaConf.update(cfg, "brand_new", {"x": [1, None, "y"]})
    overrides = config_overrides(cfg)
    assert config_overrides(load_config([])) == []
    back = load_config(overrides)
    assert OmegaConf.to_container(back) == OmegaConf.to_container(cfg)
    assert back.policy.checkpoint == "/a b/it's 3" and isinstance(back.policy.device, str)
    assert load_config(merge_overrides(overrides, ["seed=4"])).policy.checkpoint == "/a b/it's 4"


def test_job_plan_runs_each_share_with_its_seed_stride_and_group(tmp_path) -> None:
    cfg = load_config(
        [
            "evaluation.checkpoint=null",  # baselines only (the default is the shipped policy)
            "evaluation.baselines=[expert]",
            "evaluation.groups=[2,heldout]",
            "evaluation.episodes_per_group=5",
        ]
    )
    jobs = plan_jobs(cfg)
    assert [(j.group, j.worker, j.seeds) for j in jobs] == [
        (2, 0, (0, 2, 4)),
        (2, 1, (1, 3)),
        ("heldout", 0, (0, 2, 4)),
        ("heldout", 1, (1, 3)),
    ]
    for job in jobs:
        assert [spec.name for spec in job.plan] == ["twin", "command_node"]  # the twin acts: no policy node
        node_cfg = load_config(job.plan[0].args)
        assert node_cfg.seed == job.seeds[0] and node_cfg.ros.twin.seed_stride == 2
        assert node_cfg.ros.twin.action_source == "expert" and node_cfg.ros.twin.realtime_factor == 0.0
        assert node_cfg.ros.use_sim_time and node_cfg.safety.start_enabled
        if job.group == 2:
            assert node_cfg.twin.objects == "triplet" and node_cfg.twin.triplet == 2
        else:
            assert node_cfg.twin.objects == "heldout"
    with pytest.raises(ValueError, match="unknown group"):
        plan_jobs(load_config(["evaluation.baselines=[expert]", "evaluation.groups=[9]"]))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        plan_jobs(load_config(["evaluation.checkpoint=null"]))
    (shipped,) = [
        job.policy for job in plan_jobs(load_config(["evaluation.groups=[1]", "evaluation.workers=1"]))
    ]
    assert shipped.name == "default" and shipped.source == "policy"  # policy.checkpoint's default
    with pytest.raises(FileNotFoundError):
        plan_jobs(load_config([f"evaluation.checkpoint={tmp_path}"]))


def test_table_columns_follow_the_paper() -> None:
    assert table_columns([1, 2, 3, 4, 5, "train"]) == [
        *(f"Group {g}" for g in range(1, 6)),
        "Average",
        "train",
    ]
    assert table_columns(["train", 3]) == ["Group 3", "Average", "train"]
    assert table_columns(["heldout"]) == ["heldout"]


def status(episode: int, step: int, clock: float, done: bool = False, success: bool = False) -> dict:
    return {
        "episode": episode,
        "seed": 10 + 2 * episode,
        "step": step,
        "sim_time": PERIOD * step,
        "clock": clock,
        "success": success,
        "done": done,
        "time_limit": done and not success,
        "triplet": 1,
        "objects": ["r3", "s0", "b2"],
    }


def test_tracker_attributes_latency_and_counters_to_the_episode_in_progress() -> None:
    tracker = EpisodeTracker([10, 12], PERIOD)
    tracker.on_diagnostics(0.05, {"hold_no_action": 5})
    tracker.on_status(status(0, 0, 0.05), 1.0)  # the first episode's start, world held ...
    tracker.on_latency(0.5)  # ... a policy answer to a held observation: startup
    tracker.on_status(status(0, 0, 0.10), 2.0)  # held again: the episode starts here
    tracker.on_diagnostics(0.10, {"hold_no_action": 6})
    tracker.on_latency(0.02)  # the answer to the observation the episode starts from
    tracker.on_status(status(0, 1, 0.15), 2.1)
    assert tracker.started
    tracker.on_latency(0.03)
    tracker.on_diagnostics(
        0.20, {"hold_no_action": 6, "velocity_limit": 2, "ramp_in": 3}
    )  # before its status
    finished = tracker.on_status(status(0, 2, 0.20, done=True, success=True), 2.5)
    assert finished is not None and finished.seed == 10 and finished.success
    assert tracker.settled() and tracker.finished_count() == 1
    tracker.on_latency(0.9)  # between the done status and the next episode's first: dropped
    tracker.on_status(status(1, 0, 0.25), 2.6)
    tracker.on_latency(0.04)
    tracker.on_status(status(1, 1, 0.30), 2.7)
    tracker.on_diagnostics(
        0.30, {"hold_no_action": 6, "hold_stale_action": 2, "velocity_limit": 3, "ramp_in": 3}
    )
    tracker.on_status({**status(1, 2, 0.35, done=True), "lockstep_timeouts": 2}, 3.0)
    assert not tracker.settled()  # no diagnostics stamped at the second episode's end yet
    tracker.on_status(status(2, 0, 0.40), 3.1)  # a third episode: not this job's seed
    tracker.on_status(status(2, 5, 0.65, done=True, success=True), 3.5)
    tracker.on_diagnostics(
        0.35, {"hold_no_action": 6, "hold_stale_action": 4, "velocity_limit": 3, "ramp_in": 3}
    )
    assert tracker.settled() and tracker.finished_count() == 2 and tracker.missing_seeds() == []
    first, second = tracker.episodes()
    assert (first.lockstep_timeouts, second.lockstep_timeouts) == (0, 2)  # from the twin's status
    assert first.latencies_s == [0.02, 0.03] and second.latencies_s == [0.04]
    assert first.wall_s == pytest.approx(0.5) and first.steps == 2 and first.objects == ["r3", "s0", "b2"]
    assert interventions(first.safety) == (2, 0)  # the ramp-in is not a clamp; startup holds are not counted
    assert interventions(second.safety) == (1, 4)
    assert not second.success and second.time_limit


def test_tracker_times_an_episode_from_any_of_its_statuses() -> None:
    """A monitor that joined mid-episode still places the episode on the clock (clock - steps x period),
    and the twin's repeats of the done status (its clock runs on while it holds the end) change nothing."""
    tracker = EpisodeTracker([4], PERIOD)
    for stamp, velocity in [(1.00, 1), (1.05, 1), (1.20, 4), (1.30, 7)]:
        tracker.on_diagnostics(stamp, {"velocity_limit": velocity})
    tracker.on_status(status(0, 3, 1.20) | {"seed": 4}, 0.0)  # started at 1.20 - 3 * 0.05 = 1.05
    tracker.on_latency(0.01)
    finished = tracker.on_status(status(0, 4, 1.25, done=True) | {"seed": 4}, 0.1)
    assert finished is not None and not finished.start_heard
    assert finished.start_clock == pytest.approx(1.05) and finished.end_clock == pytest.approx(1.25)
    assert tracker.on_status(status(0, 4, 1.30, done=True) | {"seed": 4}, 0.2) is None  # held end
    assert tracker.done_episode() == 0 and tracker.settled()
    (episode,) = tracker.episodes()
    assert episode.latencies_s == [0.01] and interventions(episode.safety) == (3, 0)


def test_tracker_reports_missing_seeds() -> None:
    tracker = EpisodeTracker([0, 2], PERIOD)
    tracker.on_status(status(0, 0, 0.05) | {"seed": 0}, 0.0)
    assert tracker.heard and not tracker.started and tracker.missing_seeds() == [0, 2]
    assert tracker.episodes() == []


# -- through the stack -------------------------------------------------------------------------------------
def eval_config(out_dir: Path, *overrides: str):
    return load_config(
        [
            "control.episode_seconds=1.5",
            f"evaluation.groups=[{','.join(map(str, GROUPS))}]",
            f"evaluation.episodes_per_group={EPISODES}",
            "evaluation.workers=2",
            "evaluation.device=cpu",
            f"evaluation.out_dir={out_dir}",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(["model=tiny"])
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_random", build_model(cfg).eval(), cfg)


@pytest.fixture(scope="module")
def first_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_a")
    cfg = eval_config(out, f"evaluation.checkpoint={tiny_checkpoint}", "evaluation.baselines=[expert,random]")
    return evaluate(cfg), out


def rows_by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["policy"], r["group"], r["seed"]): r for r in rows}


@pytest.mark.slow
def test_eval_table_rows_and_plots(first_run) -> None:
    report, out = first_run
    assert report.ok, [j["error"] for j in report.jobs]
    policies = ["tiny_random", "expert", "random"]
    assert report.policies == policies

    table = report.markdown().split("\n\n")[0].splitlines()
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["policy", "Group 1", "Average", "train"]
    assert [line.split("|")[1].strip() for line in table[2:]] == policies
    for line in table[2:]:
        for cell in (c.strip() for c in line.strip("|").split("|")[1:]):
            rate, low, high, n = CELL.match(cell).groups()
            assert float(low) <= float(rate) <= float(high) and int(n) == EPISODES
    for policy in policies:
        for column in ["Group 1", "Average", "train"]:
            cell = report.summary[policy][column]
            assert cell["n"] == EPISODES and cell["errors"] == 0
            assert 0.0 <= cell["ci_low"] <= cell["rate"] <= cell["ci_high"] <= 1.0
            assert cell["successes"] == round(cell["rate"] * cell["n"])

    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["evaluation"]["episodes_per_group"] == EPISODES
    assert saved["summary"] == json.loads(json.dumps(report.summary))
    rows = saved["episodes"]
    assert len(rows) == len(policies) * len(GROUPS) * EPISODES
    triplet_1 = list(load_config([]).twin.triplets["1"])
    first_of_job = {
        key: min(r["seed"] for r in rows if (r["policy"], r["group"], r["worker"]) == key)
        for key in {(r["policy"], r["group"], r["worker"]) for r in rows}
    }
    for row in rows:
        assert set(row) >= ROW_FIELDS and row["error"] is None
        assert row["seed"] in range(EPISODES) and row["steps"] >= 1 and row["sim_time"] > 0
        # Null only where eval.py documents it: a baseline job's first episode can start before this
        # process has heard the command node's diagnostics (no counter snapshot from before its start).
        unmeasurable = (
            row["policy"] != "tiny_random"
            and row["seed"] == first_of_job[(row["policy"], row["group"], row["worker"])]
        )
        if not (unmeasurable and row["clamps"] is None):
            assert isinstance(row["clamps"], int) and isinstance(row["holds"], int), row
            assert row["clamps"] >= 0 and row["holds"] >= 0
        if row["group"] == 1:
            assert row["objects"] == triplet_1
        assert (row["time_to_success_s"] is not None) == row["success"]
        if row["policy"] == "tiny_random":  # the policy node's latency, one sample per control step or so
            assert row["latency_samples"] >= 1 and row["latency_p50_ms"] <= row["latency_p99_ms"]
        else:
            assert row["latency_samples"] == 0 and row["latency_p50_ms"] is None
    by_key = rows_by_key(rows)
    for group in GROUPS:  # every policy saw the same objects for a seed
        for seed in range(EPISODES):
            objects = {tuple(by_key[(p, group, seed)]["objects"]) for p in policies}
            assert len(objects) == 1, (group, seed, objects)

    assert (out / "results.md").read_text() == report.markdown()
    for name in ("success.png", "latency.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > len(PNG_MAGIC)
    assert report.per_policy["tiny_random"]["latency_samples"] == sum(
        r["latency_samples"] for r in rows if r["policy"] == "tiny_random"
    )


@pytest.mark.slow
def test_eval_seeds_reproduce(first_run, tmp_path) -> None:
    """A second run, with one worker instead of two: the same seed runs the same objects and outcome."""
    report, _ = first_run
    cfg = eval_config(tmp_path, "evaluation.checkpoint=null", "evaluation.baselines=[expert]")
    cfg.evaluation.workers = 1
    again = evaluate(cfg)
    assert again.ok and again.policies == ["expert"] and len(again.jobs) == len(GROUPS)
    before = {k: r for k, r in rows_by_key(report.rows).items() if k[0] == "expert"}
    after = rows_by_key(again.rows)
    assert before.keys() == after.keys()
    for key, row in after.items():
        for field in ("objects", "success", "time_to_success_s", "steps", "physics_unstable"):
            assert row[field] == before[key][field], (key, field)


@pytest.mark.slow
def test_a_dead_node_ends_its_job_with_errors(tmp_path) -> None:
    # the command node refuses a non-positive limit at startup; the twin keeps running without it
    cfg = eval_config(
        tmp_path,
        "evaluation.checkpoint=null",
        "evaluation.baselines=[expert]",
        "evaluation.groups=[train]",
        "evaluation.episodes_per_group=1",
        "safety.velocity_fraction=-1",
    )
    report = evaluate(cfg)
    assert not report.ok and report.errors == 1
    (row,) = report.rows
    assert row["success"] is None and "command_node exited" in row["error"]
    (job,) = report.jobs
    assert job["exit_codes"]["command_node"] != 0 and set(job["exit_codes"]) == {"twin", "command_node"}
    assert "did not run to the end" in report.markdown()
    assert report.summary["expert"]["train"]["n"] == 0 and report.summary["expert"]["train"]["errors"] == 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["errors"] == 1 and saved["episodes"][0]["error"]
