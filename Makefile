# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,segment]"
	# SAM 2 (runtime.segment): a source package whose build imports torch (so no build isolation, and the
	# setuptools that builds wheels itself: a fresh 3.11 venv has 65.5) and whose declared torchvision would
	# replace our torch (so no deps); without its CUDA extension (only its hole filling uses it)
	$(PY) -m pip install -q "setuptools>=70.1"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps --no-build-isolation sam2
	# lpips (runtime.evaluate's LPIPS heads): its declared torchvision would replace our torch too
	$(PY) -m pip install -q --no-deps lpips
	touch $(STAMP)

.PHONY: demo test lint
demo: $(STAMP)
	$(PY) -m runtime.run --out demo_removed.mp4 --overwrite  # the demo replaces its own last result

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)  # the app's browser tests
	$(PY) -m pytest -q -m "not gpu" -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations=15
	$(VENV)/bin/ruff check .

# benchmark gates: ours against the reference, measured now (CPU: the quick suite; GPU: the full one)
.PHONY: bench
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pytest bench/ --benchmark-only

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# everything that needs a GPU, its figures into bench/RESULTS.md; one line and exit 0 without a GPU
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]" nvidia-ml-py
	$(PY) -m bench.gpu_check
