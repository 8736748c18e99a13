# gato_ros — the two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

# The stack on the twin: twin, Gato policy node (the shipped default policy, policies/default) and command
# (safety) node as separate processes, in real time; prints each episode's outcome, the success rate and the
# pace (says when this machine could not keep up), and writes outputs/demo/stack.mp4: the policy's camera views.
# Triplet 4 is one of the shipped policy's two best groups (100 % of seeds 0-19 through the ROS 2 stack; 82 % on 1-5, see its card).
demo: setup
	$(PY) -m gato_ros.cli launch stacking sim:=true twin.triplet=4 --episodes 3 --isolated --video outputs/demo/stack.mp4

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/twin.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/control_loop.py

clean:
	rm -rf build install log .pytest_cache outputs
