"""Operator input devices -> the stack's 5-D action ``[vx, vy, vz, wz, gripper]`` (ROS-free).

A device is polled once per control period and reports `OperatorInput`: six axes in [-1, 1] (x, y, z,
yaw, gripper; positive gripper closes), whether the dead-man input is held, and one-shot events
(``takeover``: hand control to the operator or back). `TeleopMapper` turns that into an action scaled
inside ``control.action_low/high`` by ``teleop.speed_fraction``; without the dead-man every axis is zero
(the gripper included: it stays as it is, a held object is not dropped). The action still reaches the arm
only through the command node, inside every safety limit, like the policy's.

Devices (``teleop.device``):

- ``keyboard``: the terminal's keys (no display needed). A terminal reports key presses, not releases,
  so a key counts as held for ``teleop.keyboard.hold_s`` after its last press (auto-repeat keeps it held):
  motion stops by itself once the operator lets go, which is the keyboard's dead-man.
- ``spacemouse``: a 3Dconnexion SpaceMouse through ``pyspacemouse`` (hidapi). The puck springs back to
  rest: deflection beyond ``teleop.deadband`` is the dead-man.
- ``gamepad``: a Linux gamepad through ``evdev``; the left shoulder button is the dead-man.
- ``file``: replays a recorded action file (``teleop.file``: .npy or .json, N x 5 actions) one row per
  control period; a scripted stand-in for the operator in tests and for replaying demonstrations.

A missing package, a missing device or a missing permission is a `DeviceUnavailableError` with the fix.
"""

from __future__ import annotations

import json
import os
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from omegaconf import DictConfig

AXES = ("x", "y", "z", "yaw", "gripper")
TAKEOVER = "takeover"

# keyboard: key -> (axis, direction); `t` toggles the takeover
KEY_AXES: dict[str, tuple[str, float]] = {
    "w": ("x", 1.0),
    "s": ("x", -1.0),
    "a": ("y", 1.0),
    "d": ("y", -1.0),
    "r": ("z", 1.0),
    "f": ("z", -1.0),
    "q": ("yaw", 1.0),
    "e": ("yaw", -1.0),
    "c": ("gripper", 1.0),
    "o": ("gripper", -1.0),
}
KEY_EVENTS = {"t": TAKEOVER}
KEYBOARD_HELP = (
    "keys: w/s x+/-, a/d y+/-, r/f z+/-, q/e yaw+/-, c close, o open (held: motion; let go: stop), "
    "t take over / hand back, Ctrl-C quit"
)


class DeviceUnavailableError(RuntimeError):
    """The device cannot be used here; the message says why and how to fix it."""


@dataclass
class OperatorInput:
    """One poll of a device: axes in [-1, 1] (AXES order), the dead-man, one-shot events."""

    axes: np.ndarray = field(default_factory=lambda: np.zeros(len(AXES)))
    deadman: bool = False
    events: tuple[str, ...] = ()
    raw_action: np.ndarray | None = None  # a file device's recorded action (already in action units)


class InputDevice(Protocol):
    def poll(self, now: float) -> OperatorInput: ...

    def close(self) -> None: ...


class TeleopMapper:
    """Operator input -> 5-D action inside the action bounds; zero without the dead-man."""

    def __init__(self, cfg: DictConfig) -> None:
        self.low = np.asarray(cfg.control.action_low, dtype=float)
        self.high = np.asarray(cfg.control.action_high, dtype=float)
        fraction = float(cfg.teleop.speed_fraction)
        if not (0.0 < fraction <= 1.0):
            raise ValueError(f"teleop.speed_fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def action(self, operator: OperatorInput) -> np.ndarray:
        if not operator.deadman:
            return np.zeros(len(AXES))
        if operator.raw_action is not None:
            return np.clip(np.asarray(operator.raw_action, dtype=float), self.low, self.high)
        axes = np.clip(np.nan_to_num(np.asarray(operator.axes, dtype=float)), -1.0, 1.0)
        # each axis scales toward the bound on its side; the gripper is a rate, used at full scale
        scale = np.where(axes >= 0.0, self.high, -self.low) * self.fraction
        scale[AXES.index("gripper")] = np.where(axes[-1] >= 0.0, self.high[-1], -self.low[-1])
        return np.clip(axes * scale, self.low, self.high)


class TerminalKeys:
    """Keys typed in a terminal, or on any file descriptor (tests feed a pipe). A terminal is put in cbreak
    mode (keys arrive at once, not echoed) until `close`; `read` never blocks."""

    def __init__(self, fd: int | None = None, needed_for: str = "keyboard input") -> None:
        if fd is None and not os.isatty(0):
            raise DeviceUnavailableError(f"{needed_for} needs a terminal (stdin is not one)")
        self.fd = os.dup(0) if fd is None else fd
        self._saved_mode: Any = None
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved_mode = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def read(self) -> str:
        """Every key typed since the last call (lower case)."""
        keys = []
        while select.select([self.fd], [], [], 0.0)[0]:
            chunk = os.read(self.fd, 64)
            if not chunk:
                break
            keys.append(chunk.decode(errors="ignore"))
        return "".join(keys).lower()

    def close(self) -> None:
        if self._saved_mode is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved_mode)
            self._saved_mode = None


class KeyboardDevice:
    """The operator's keys (`KEY_AXES`, `KEY_EVENTS`) from a terminal, or from `fd` in tests."""

    def __init__(self, fd: int | None = None, hold_s: float = 0.15) -> None:
        needed = "teleop.device=keyboard (or use teleop.device=spacemouse|gamepad|file)"
        self.keys = TerminalKeys(fd, needed_for=needed)
        self.hold_s = float(hold_s)
        self.pressed: dict[str, float] = {}  # axis key -> time of its last press

    def poll(self, now: float) -> OperatorInput:
        events = []
        for key in self.keys.read():
            if key in KEY_AXES:
                self.pressed[key] = now
            elif key in KEY_EVENTS:
                events.append(KEY_EVENTS[key])
        axes = np.zeros(len(AXES))
        held = {k: t for k, t in self.pressed.items() if 0.0 <= now - t < self.hold_s}
        self.pressed = held
        for key in held:
            axis, direction = KEY_AXES[key]
            axes[AXES.index(axis)] += direction
        return OperatorInput(np.clip(axes, -1.0, 1.0), deadman=bool(held), events=tuple(events))

    def close(self) -> None:
        self.keys.close()


class SpaceMouseDevice:
    """A 3Dconnexion SpaceMouse (pyspacemouse): button 0 closes, button 1 opens, deflection = dead-man."""

    def __init__(self, deadband: float) -> None:
        try:
            import pyspacemouse  # type: ignore[import-not-found]
        except ImportError as err:
            raise DeviceUnavailableError(
                "teleop.device=spacemouse needs pyspacemouse: pip install pyspacemouse (and the system's "
                "hidapi, e.g. apt install libhidapi-hidraw0)"
            ) from err
        try:
            opened = pyspacemouse.open()
        except Exception as err:
            opened, reason = None, f": {err}"
        else:
            reason = ""
        if not opened:
            raise DeviceUnavailableError(
                f"no SpaceMouse could be opened{reason}: is it plugged in, and may this user read "
                '/dev/hidraw*? (a udev rule with MODE="0666" for vendor 256f, or the plugdev group)'
            )
        self.device = pyspacemouse
        self.deadband = float(deadband)

    def poll(self, now: float) -> OperatorInput:
        state = self.device.read()
        buttons = list(getattr(state, "buttons", []) or [])
        gripper = (1.0 if buttons[:1] == [1] else 0.0) - (1.0 if buttons[1:2] == [1] else 0.0)
        axes = np.array([state.y, -state.x, state.z, -state.yaw, gripper], dtype=float)
        axes[:4] = np.where(np.abs(axes[:4]) < self.deadband, 0.0, axes[:4])
        return OperatorInput(axes, deadman=bool(np.any(axes != 0.0)))

    def close(self) -> None:
        close = getattr(self.device, "close", None)
        if callable(close):
            close()


class GamepadDevice:
    """A Linux gamepad (evdev): left stick x/y, right stick z/yaw, A closes, B opens, left shoulder held =
    dead-man, Start toggles the takeover."""

    def __init__(self, path: str, deadband: float) -> None:
        try:
            import evdev  # type: ignore[import-not-found]
        except ImportError as err:
            raise DeviceUnavailableError("teleop.device=gamepad needs evdev: pip install evdev") from err
        paths = [path] if path else list(evdev.list_devices())
        for candidate in paths:
            try:
                device = evdev.InputDevice(candidate)
            except PermissionError as err:
                raise DeviceUnavailableError(
                    f"no permission to read {candidate}: add this user to the 'input' group"
                ) from err
            if evdev.ecodes.EV_ABS in device.capabilities():
                break
        else:
            raise DeviceUnavailableError(
                "no gamepad found under /dev/input (or none this user may read: the 'input' group); "
                "set teleop.gamepad.path=/dev/input/eventN to pick one"
            )
        self.evdev, self.device, self.deadband = evdev, device, float(deadband)
        self.values: dict[int, float] = {}
        self.ranges = {code: info for code, info in device.capabilities(absinfo=True).get(3, [])}

    def _normalised(self, code: int) -> float:
        info = self.ranges.get(code)
        if info is None or code not in self.values:
            return 0.0
        middle = 0.5 * (info.max + info.min)
        half = max(0.5 * (info.max - info.min), 1e-9)
        value = float(np.clip((self.values[code] - middle) / half, -1.0, 1.0))
        return 0.0 if abs(value) < self.deadband else value

    def poll(self, now: float) -> OperatorInput:
        codes = self.evdev.ecodes
        events = []
        while True:
            event = self.device.read_one()
            if event is None:
                break
            self.values[event.code] = float(event.value)
            if event.type == codes.EV_KEY and event.code == codes.BTN_START and event.value == 1:
                events.append(TAKEOVER)
        pressed = self.values.get
        gripper = float(pressed(codes.BTN_SOUTH, 0.0) > 0) - float(pressed(codes.BTN_EAST, 0.0) > 0)
        axes = np.array(
            [
                -self._normalised(codes.ABS_Y),
                -self._normalised(codes.ABS_X),
                -self._normalised(codes.ABS_RY),
                -self._normalised(codes.ABS_RX),
                gripper,
            ]
        )
        return OperatorInput(axes, deadman=pressed(codes.BTN_TL, 0.0) > 0, events=tuple(events))

    def close(self) -> None:
        self.device.close()


class FileDevice:
    """Replays N x 5 actions, one per poll; then the dead-man is released (zero action)."""

    def __init__(self, actions: np.ndarray, name: str = "actions") -> None:
        actions = np.asarray(actions, dtype=float)
        if actions.ndim != 2 or actions.shape[1] != len(AXES) or not np.all(np.isfinite(actions)):
            raise DeviceUnavailableError(f"{name}: expected finite N x 5 actions, got shape {actions.shape}")
        self.actions = actions
        self.name = name
        self.index = 0

    @classmethod
    def from_path(cls, path: str) -> FileDevice:
        """From a .npy or .json file of N x 5 actions (`gato-ros replay` reads recorded episodes)."""
        file = Path(path)
        if not file.is_file():
            raise DeviceUnavailableError(f"teleop.file={path!r}: no such action file (.npy or .json, N x 5)")
        actions = np.load(file) if file.suffix == ".npy" else np.asarray(json.loads(file.read_text()))
        return cls(actions, name=f"teleop.file={path!r}")

    @property
    def finished(self) -> bool:
        return self.index >= len(self.actions)

    def poll(self, now: float) -> OperatorInput:
        if self.finished:
            return OperatorInput()
        action = self.actions[self.index]
        self.index += 1
        return OperatorInput(deadman=True, raw_action=action)

    def close(self) -> None:
        pass


def open_device(cfg: DictConfig) -> InputDevice:
    """The device `teleop.device` names; a `DeviceUnavailableError` with the fix when it cannot be used."""
    teleop = cfg.teleop
    openers: dict[str, Callable[[], InputDevice]] = {
        "keyboard": lambda: KeyboardDevice(hold_s=float(teleop.keyboard.hold_s)),
        "spacemouse": lambda: SpaceMouseDevice(float(teleop.deadband)),
        "gamepad": lambda: GamepadDevice(str(teleop.gamepad.path or ""), float(teleop.deadband)),
        "file": lambda: FileDevice.from_path(str(teleop.file or "")),
    }
    name = str(teleop.device)
    if name not in openers:
        raise DeviceUnavailableError(f"teleop.device must be one of {' | '.join(openers)}, got {name!r}")
    return openers[name]()


__all__ = [
    "AXES",
    "KEYBOARD_HELP",
    "TAKEOVER",
    "DeviceUnavailableError",
    "FileDevice",
    "GamepadDevice",
    "InputDevice",
    "KeyboardDevice",
    "OperatorInput",
    "SpaceMouseDevice",
    "TeleopMapper",
    "TerminalKeys",
    "open_device",
]
