#!/usr/bin/env bash
# One-step install of everything gato_ros needs into .venv (idempotent; fast when already done).
# Debian packages: libusb (pyrealsense2), Mesa EGL + OSMesa (MuJoCo offscreen rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

debs=(libusb-1.0-0 libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6)
missing=()
for d in "${debs[@]}"; do dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

stamp="$VENV/.gato_ros-installed"
want=$(cat requirements*.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "[setup] installing Python dependencies into $VENV (pinned in requirements*.txt)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import torch, mujoco, rclpy, gato_ros" >/dev/null
echo "$want" > "$stamp"
echo "[setup] done"
