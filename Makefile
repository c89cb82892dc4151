# Two entry points (see README.md): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all test-mujoco33 bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Without a GPU take the CPU build of torch first; an open `torch` requirement would pull a CUDA build.
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/embodied demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# The suite must keep working on MuJoCo 3.3 (DESIGN.md): run the env tests in a second venv pinned to it.
VENV33 := .venv-mujoco33
test-mujoco33:
	test -x $(VENV33)/bin/python || $(PYTHON) -m venv $(VENV33)
	$(VENV33)/bin/python -m pip install -q 'mujoco==3.3.7' 'gymnasium[mujoco]>=1.0' 'av>=12' numpy pytest hypothesis
	$(VENV33)/bin/python -m pip install -q --no-deps -e .
	$(VENV33)/bin/python -c "import mujoco; assert mujoco.__version__.startswith('3.3'), mujoco.__version__"
	$(VENV33)/bin/python -m pytest -q tests/test_envs_battery.py tests/test_envs_behaviour.py tests/test_instructions.py

bench: $(STAMP)
	$(BIN)/embodied bench envs

clean:
	rm -rf $(VENV) $(VENV33) build *.egg-info
