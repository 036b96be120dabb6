# SPSearch. Quick start: `make search` (the default search) and `make test`; each installs what
# is missing first (scripts/setup.sh: a virtual environment in .venv, the package, the data).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spsearch-installed
ARGS ?=

.PHONY: setup search test test-slow test-all lint typecheck pytest paper-costs model-complexity proxy-fidelity reliability timm-scripts gpu-check gpu-wheels

$(STAMP): setup.cfg pyproject.toml scripts/setup.sh scripts/fetch_fashion_mnist.sh
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job: the default search (SP-ResNet-34 under 2.0 GMACs at 224x224, proxy-trained on
# Fashion-MNIST, winners retrained). Extra flags: make search ARGS="--n-trials 20 ...".
search: $(STAMP)
	$(PY) search.py --budget-gflops 2.0 $(ARGS)

# The fast set (README's test command): everything not marked slow. test-slow: subprocess, kill -9,
# multi-process and PostgreSQL tests, real-data training, models above 30M parameters. test-all: both.
test: lint typecheck pytest

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: test test-slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

paper-costs: $(STAMP)
	$(PY) tools/paper_costs.py

model-complexity: $(STAMP)
	$(PY) tools/model_complexity.py

# results/proxy_fidelity.md: hours on a 2-core CPU; resumes, so ARGS="--max-minutes 90" spreads it over runs.
proxy-fidelity: $(STAMP)
	$(PY) tools/proxy_fidelity.py --jobs 2 $(ARGS)

# results/reliability.md: every bad input, fault-injection scenario and security check of tools/reliability_cases.py,
# each as a subprocess of the CLIs (about 10 min on 2 cores); ARGS="--fast" or ARGS="-k NAME" runs a part (no file).
reliability: $(STAMP)
	$(PY) tools/reliability.py $(ARGS)

# results/timm_scripts.md: timm's own train/validate/benchmark/inference.py (not in the timm wheel: TIMM_SCRIPTS is
# a pytorch-image-models checkout of your timm's version), the Optuna CLI and dashboard, --log-with tensorboard.
TIMM_SCRIPTS ?=
timm-scripts: $(STAMP)
	$(PY) tools/timm_scripts.py --timm-scripts "$(TIMM_SCRIPTS)" $(ARGS)

# Every check that needs a CUDA GPU (tools/gpu_check.py): results/gpu_check.md. Without a GPU: one line,
# exit 0. On the GPU machine (no registry) it uses python3 there and what `make gpu-wheels` prepared to carry:
# wheels/, data/fashion-mnist/ (a 9 MB subset) and .source-commit.
GPU_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) tools/gpu_check.py

gpu-wheels: $(STAMP)
	$(PY) tools/gpu_check.py --prepare
