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

# The lent GPU machine has no network: the packages its image lacks travel as wheels in the ignored .whl/
# (bench/gpu_wheels.txt; Python 3.12, manylinux x86_64; never torch). Then, on the machine:
# python3 -m bench.gpu_day --out $$OUT (docs/gpu_day.md gives the device call with its carry)
WHEEL_PLATFORMS := $(foreach n,2_28 2_27 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
.PHONY: gpu-wheels gpu-rehearsal
gpu-wheels:
	rm -rf .whl && mkdir .whl
	grep -v '^#' bench/gpu_wheels.txt | cut -d'#' -f1 | xargs python3 -m pip download -q --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp $(WHEEL_PLATFORMS) -d .whl
	du -ch .whl/*.whl | tail -1
	git ls-files -z --cached --others --exclude-standard | du -ch --files0-from=- | tail -1 | sed 's/total/working tree/'

# The rehearsal: the same command on the CPU, on Python 3.12 and torch 2.11 (PyPI's only Linux build, the
# CUDA one: it imports and runs on a CPU, its nvidia-* libraries installed but unused), with the image's
# packages the GPU path uses and nothing else; the project's own come from .whl/ alone
REHEARSAL := .rehearsal-venv
PY312 ?= /root/.pyenv/versions/3.12.1/bin/python3.12
MACHINE_PACKAGES := numpy safetensors pillow tqdm pytest scipy accelerate huggingface-hub regex requests zipp triton==3.6.0
$(REHEARSAL)/.installed:
	$(PY312) -m venv $(REHEARSAL)
	$(REHEARSAL)/bin/pip install -q torch==2.11.0 $(MACHINE_PACKAGES)
	touch $@
gpu-rehearsal: $(REHEARSAL)/.installed gpu-wheels
	$(REHEARSAL)/bin/python -m bench.gpu_day --cpu --out runs/gpu-day-rehearsal
