"""The users' loop on the twin, end to end, through the real nodes as separate processes: the stack runs the
shipped default policy; a scripted operator (the teleop node replaying an action file) takes over; the
recorder records the take with its raw log; the take is exported as a LeRobotDataset and imported back;
the policy is fine-tuned on both for a few steps from `policies/default`; the fine-tuned checkpoint drives
one evaluated episode. The raw log and the export are read back by independent readers (the mcap library
with its ROS 2 decoder, pyarrow), not the project's own code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gato_ros.config import load_config
from gato_ros.gato.data import EpisodeDataset
from gato_ros.ros.launcher import NodeProcesses, isolated_domain_id, launch_overrides, ros_domain, stack_plan

pytestmark = pytest.mark.slow

TAKE_SECONDS = 3.0
OPERATOR_SECONDS = 300.0
TAKEOVER_TIMEOUT_S = 180.0
TAKEN_OVER = "the command node obeys: teleop"  # the teleop node's log line once the switch is published


def gato(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gato_ros.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_teleop_record_finetune_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    takes = data / "recorded"
    # long enough to outlast the recorder's start and its take on a loaded machine; stopped by a signal
    operator = np.tile([0.0, 0.03, -0.03, 0.2, 1.0], (int(OPERATOR_SECONDS * 20), 1))
    np.save(tmp_path / "operator.npy", operator)
    stack = launch_overrides(True, "default", "cpu", ["ros.twin.realtime_factor=1.0"])
    cfg = load_config(stack)
    recorder = [
        sys.executable, "-m", "gato_ros.ros.record_node", *stack, f"record.out_dir={takes}",
        "record.object_shapes=true", "record.auto_start=true", "record.episodes=1",
        f"record.max_seconds={TAKE_SECONDS}", "record.keyboard=false",
    ]  # fmt: skip
    teleop = [
        sys.executable, "-m", "gato_ros.ros.teleop_node", *stack, "teleop.device=file",
        f"teleop.file={tmp_path / 'operator.npy'}", "teleop.take_over_on_start=true",
    ]  # fmt: skip
    with ros_domain(isolated_domain_id()):
        processes = NodeProcesses(env=dict(os.environ), output=open(os.devnull, "w"))  # noqa: SIM115
        for spec in stack_plan(cfg, True, stack):
            processes.start(spec)
        operator_process = None
        try:
            # the operator waits for the stack (its takeover waits for the command node), then drives; the
            # take starts once the command node obeys the operator (however slow the machine)
            operator_process = subprocess.Popen(
                teleop, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            operator_log: list[str] = []
            reader = threading.Thread(
                target=lambda: operator_log.extend(operator_process.stdout), daemon=True
            )
            reader.start()
            deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
            while not any(TAKEN_OVER in line for line in operator_log) and operator_process.poll() is None:
                assert time.monotonic() < deadline, "the operator never took over:\n" + "".join(operator_log)
                time.sleep(0.1)
            assert operator_process.poll() is None, "".join(operator_log)
            recorded = subprocess.run(recorder, capture_output=True, text=True, timeout=300)
            assert recorded.returncode == 0, recorded.stdout[-3000:] + recorded.stderr[-3000:]
            operator_process.send_signal(signal.SIGINT)  # hands back to the policy and exits
            assert operator_process.wait(timeout=120) == 0, "".join(operator_log)
            assert not processes.exited(), [n.spec.name for n in processes.exited()]
        finally:
            if operator_process is not None and operator_process.poll() is None:
                operator_process.kill()
            processes.stop(cfg.ros.launch.sigint_wait_s, cfg.ros.launch.sigterm_wait_s)

    # the take: the operator's steps, observations as the default (state + shapes) policy sees them
    dataset = EpisodeDataset(takes)
    assert len(dataset) == 1
    take = dataset[0]
    meta = take.metadata
    assert meta["source"] in ("twin/teleop", "twin/intervention"), meta["source"]
    assert meta["steps_by_source"]["teleop"] > 0
    assert {"objects/pose", "objects/shape", "sawyer/pinch/pose"} <= set(take.observations)
    assert meta["object_ids"] == meta["twin_end"]["objects"]  # the twin's objects gave the shapes
    operator_steps = [i for first, last in meta["operator_steps"] for i in range(first, last + 1)]
    np.testing.assert_allclose(take.action[operator_steps[-1]], operator[0], atol=1e-6)

    # its raw log, read by an independent reader: the operator's actions and the switch of source
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    heard: Counter[str] = Counter()
    sources = []
    with open(takes / meta["raw_log"]["file"], "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _schema, channel, _message, msg in reader.iter_decoded_messages(
            topics=["/teleop/action", "/safety/action_source", "/joint_velocity_controller/commands"]
        ):
            heard[channel.topic] += 1
            if channel.topic == "/safety/action_source":
                sources.append(msg.data)
    assert heard["/teleop/action"] > 0 and heard["/joint_velocity_controller/commands"] > 0
    assert "teleop" in sources

    # exported as a LeRobotDataset v3.0, checked by an independent reader (pyarrow), and imported back
    import pyarrow.parquet as pq

    exported = tmp_path / "lerobot"
    assert gato("export", "--format", "lerobot", "--out", str(exported), str(takes)).returncode == 0
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert (
        info["codebase_version"] == "v3.0"
        and info["total_episodes"] == 1
        and info["total_frames"] == len(take)
    )
    rows = pq.read_table(exported / "data" / "chunk-000" / "file-000.parquet").to_pylist()
    np.testing.assert_allclose([r["action"] for r in rows], take.action, atol=1e-6)
    imported = gato("import", "--format", "lerobot", "--out", str(data / "imported"), str(exported))
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]

    # fine-tuning from the shipped default policy on the take, the imported copy as the "replay" share
    run = tmp_path / "finetune"
    trained = gato(
        "train", "+experiment=finetune", f"training.data.root={data}",
        "training.data.mixture.recorded.path=recorded",
        "training.data.mixture.recorded.successful_only=false",
        "training.data.mixture.replay.path=imported",
        "training.data.mixture.replay.successful_only=false",
        "training.steps=2", "training.checkpoint_every=2",
        "training.batch_size=2", "training.success_check.every=0", "training.progress=false",
        "training.plot=false", f"training.out_dir={run}",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (run / "checkpoints" / "latest").exists()

    # one evaluated episode of the fine-tuned policy (in-process, lock-step, no ROS)
    checked = gato(
        "check", f"check.checkpoints=[{run / 'checkpoints' / 'latest'}]", "evaluation.groups=[1]",
        "evaluation.episodes_per_group=1", "evaluation.workers=1", "evaluation.baselines=[]",
        "control.episode_seconds=2", f"check.out_dir={tmp_path / 'check'}",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert (tmp_path / "check" / "check.json").exists()
