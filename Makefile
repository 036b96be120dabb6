# SPSearch. Quick start: `make search` (the default search) and `make test`; each installs what
# is missing first (scripts/setup.sh: a virtual environment in .venv, the package, the data).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spsearch-installed
ARGS ?=

.PHONY: setup search test lint typecheck pytest paper-costs

$(STAMP): setup.cfg pyproject.toml scripts/setup.sh scripts/fetch_fashion_mnist.sh
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

# The main job: the default search (SP-ResNet-34 under 2.0 GMACs at 224x224, proxy-trained on
# Fashion-MNIST, winners retrained). Extra flags: make search ARGS="--n-trials 20 ...".
search: $(STAMP)
	$(PY) search.py --budget-gflops 2.0 $(ARGS)

test: lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

paper-costs: $(STAMP)
	$(PY) tools/paper_costs.py
