# Two entry points (see README.md): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE := 1

.PHONY: setup browser demo test test-all test-mujoco33 bench clean

setup: $(STAMP) browser

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Without a GPU take the CPU build of torch first; an open `torch` requirement would pull a CUDA build.
	command -v nvidia-smi >/dev/null 2>&1 || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/embodied demo

# tests/test_report_browser.py drives headless Chromium: install Debian's chromium and chromium-driver when
# missing (as root, or through password-less sudo). Where apt cannot, say so and go on; that test then fails
# with the same advice (EMBODIED_SKIP_BROWSER_TESTS=1 skips it knowingly).
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "warning: no apt-get here; install chromium and chromedriver yourself for tests/test_report_browser.py" >&2; \
	else \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "warning: run as root: apt-get install chromium chromium-driver (for tests/test_report_browser.py)" >&2; exit 0; fi; \
	  echo "installing chromium and chromium-driver (Debian packages) for the report's browser test"; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	    || echo "warning: apt-get could not install chromium chromium-driver; tests/test_report_browser.py will fail" >&2; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-all: $(STAMP) browser
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
