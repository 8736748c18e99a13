"""Teleoperation: devices -> actions inside the bounds (ROS-free), and the teleop node taking over the
command node in-process (a scripted operator replaying an action file)."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor

from gato_ros import cli
from gato_ros.config import load_config
from gato_ros.control.teleop import (
    AXES,
    TAKEOVER,
    DeviceUnavailableError,
    FileDevice,
    KeyboardDevice,
    OperatorInput,
    TeleopMapper,
    open_device,
)
from gato_ros.ros import contract


def test_the_mapper_scales_inside_the_action_bounds_and_the_deadman_zeroes() -> None:
    cfg = load_config(["teleop.speed_fraction=0.5"])
    low, high = np.asarray(cfg.control.action_low), np.asarray(cfg.control.action_high)
    mapper = TeleopMapper(cfg)
    full = mapper.action(OperatorInput(np.ones(len(AXES)), deadman=True))
    np.testing.assert_allclose(full[:4], 0.5 * high[:4])
    assert full[4] == high[4]  # the gripper rate at full scale
    back = mapper.action(OperatorInput(-np.ones(len(AXES)), deadman=True))
    np.testing.assert_allclose(back[:4], 0.5 * low[:4])
    assert not mapper.action(OperatorInput(np.ones(len(AXES)), deadman=False)).any()
    wild = mapper.action(OperatorInput(np.array([np.nan, 7.0, -np.inf, 1e9, 2.0]), deadman=True))
    assert np.all(np.isfinite(wild)) and np.all(wild >= low) and np.all(wild <= high)
    raw = mapper.action(OperatorInput(deadman=True, raw_action=np.array([1.0, -1.0, 0.01, 9.0, -9.0])))
    np.testing.assert_allclose(raw, np.clip([1.0, -1.0, 0.01, 9.0, -9.0], low, high))
    with pytest.raises(ValueError, match="speed_fraction"):
        TeleopMapper(load_config(["teleop.speed_fraction=1.5"]))


def test_keys_move_while_pressed_and_stop_when_let_go() -> None:
    read, write = os.pipe()
    try:
        keyboard = KeyboardDevice(fd=read, hold_s=0.15)
        os.write(write, b"wq")
        pressed = keyboard.poll(10.0)
        assert pressed.deadman and pressed.axes[AXES.index("x")] == 1.0
        assert pressed.axes[AXES.index("yaw")] == 1.0 and pressed.events == ()
        assert keyboard.poll(10.1).deadman  # still held (auto-repeat would refresh it)
        released = keyboard.poll(10.2)
        assert not released.deadman and not released.axes.any()
        os.write(write, b"ws")  # opposite keys cancel
        assert keyboard.poll(11.0).axes[AXES.index("x")] == 0.0
        os.write(write, b"tC")  # the takeover key; upper case works too
        toggled = keyboard.poll(12.0)
        assert toggled.events == (TAKEOVER,) and toggled.axes[AXES.index("gripper")] == 1.0
        keyboard.close()
    finally:
        os.close(read)
        os.close(write)


def test_a_file_device_replays_its_actions_then_lets_go(tmp_path) -> None:
    actions = [[0.01, 0.0, 0.0, 0.0, 1.0], [0.0, 0.02, 0.0, 0.1, -1.0]]
    path = tmp_path / "actions.json"
    path.write_text(json.dumps(actions))
    device = FileDevice.from_path(str(path))
    polled = [device.poll(0.0), device.poll(0.05), device.poll(0.1)]
    np.testing.assert_allclose(polled[0].raw_action, actions[0])
    np.testing.assert_allclose(polled[1].raw_action, actions[1])
    assert device.finished and not polled[2].deadman
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[0.0, 1.0]]))
    with pytest.raises(DeviceUnavailableError, match="N x 5"):
        FileDevice.from_path(str(bad))


def test_a_missing_device_says_how_to_fix_it(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pyspacemouse", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "evdev", None)
    with pytest.raises(DeviceUnavailableError, match="pip install pyspacemouse"):
        open_device(load_config(["teleop.device=spacemouse"]))
    with pytest.raises(DeviceUnavailableError, match="pip install evdev"):
        open_device(load_config(["teleop.device=gamepad"]))
    with pytest.raises(DeviceUnavailableError, match="keyboard \\| spacemouse"):
        open_device(load_config(["teleop.device=joystick"]))
    assert cli.main(["teleop", "teleop.device=spacemouse"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install pyspacemouse" in err[0]


def test_a_scripted_operator_takes_over_drives_within_limits_and_hands_back(ros_context, tmp_path) -> None:
    """The teleop node replays an action file (the scripted operator) with take_over_on_start: the command
    node switches to it, its commands follow the operator inside the limits, and when the file is done
    the node hands control back to the policy and exits 0."""
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray
    from test_command_node import Cell, assert_commands_in_limits, posture

    from gato_ros.ros.command_node import CommandNode
    from gato_ros.ros.teleop_node import TeleopNode

    operator = np.tile([0.03, -0.02, 0.01, 0.3, 0.0], (30, 1))
    path = tmp_path / "operator.npy"
    np.save(path, operator)
    overrides = [
        "safety.start_enabled=true",
        "safety.ramp_in_seconds=0.1",
        "teleop.device=file",
        f"teleop.file={path}",
        "teleop.take_over_on_start=true",
    ]
    cfg = load_config(overrides)
    command = CommandNode(cfg, context=ros_context)
    teleop = TeleopNode(cfg, context=ros_context)
    cell = Cell(Node("test_cell", context=ros_context), cfg)  # joint states; the policy stays silent
    teleop_actions: list = []
    cell.node.create_subscription(
        Float64MultiArray, contract.TELEOP_ACTION.name, teleop_actions.append, contract.Qos.RELIABLE.profile()
    )
    executor = SingleThreadedExecutor(context=ros_context)
    for node in (command, teleop, cell.node):
        executor.add_node(node)
    expected = command.controller.joint_velocity(posture(), operator[0])
    followed = False
    deadline = time.monotonic() + 30.0
    while teleop.exit_code is None and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)
        if cell.velocity and command.action_source == "teleop":
            v = np.asarray(cell.velocity[-1].data)
            norm = np.linalg.norm(v) * np.linalg.norm(expected)
            followed = followed or bool(norm > 0 and v @ expected / norm > 0.99)
    assert teleop.exit_code == 0, "the teleop node did not finish its file"
    assert followed, "the commands never followed the operator"
    assert command.events["switches_to_teleop"] == 1 and command.events["switches_to_policy"] == 1
    assert command.action_source == "policy"
    assert len(teleop_actions) >= len(operator)
    assert_commands_in_limits(cell, command.limits)
    teleop.close()
    for node in (teleop, command, cell.node):
        node.destroy_node()


def test_replay_reads_a_recorded_episode_and_refuses_nonsense(tmp_path, capsys) -> None:
    from gato_ros.gato.data import EpisodeWriter, load_episode
    from gato_ros.tools.replay import episode_start

    actions = np.tile([0.01, 0.0, -0.01, 0.0, 1.0], (6, 1))
    with EpisodeWriter(tmp_path, 20.0, source="twin/teleop", background=False) as writer:
        writer.begin_episode(task="stack", twin_start={"seed": 7, "triplet": 2})
        for k, action in enumerate(actions):
            writer.add_step({"sawyer/joints/angle": np.zeros(7, np.float32)}, action, timestamp=0.05 * k)
        path = writer.end_episode(success=True)
    episode = load_episode(path)
    device = FileDevice(episode.action, name=path.name)
    np.testing.assert_allclose(device.actions, actions, atol=1e-6)
    assert episode_start(episode.metadata) == "seed=7, triplet=2"
    assert cli.main(["replay"]) == 2
    assert cli.main(["replay", str(tmp_path / "missing.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "usage: gato-ros replay" in err[0] and "no such episode file" in err[-1] and len(err) == 2
