#!/usr/bin/env bash
# Installs everything SPSearch needs into a virtual environment (default .venv): the package
# (editable) with its test, DALI, PostgreSQL, dashboard, ONNX-export and trackers (TensorBoard) extras,
# and the Fashion-MNIST data set.
# Safe to re-run; `make` calls it whenever setup.cfg, pyproject.toml or this file change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${SPSEARCH_EXTRAS:-dev,dali-cuda130,postgres,dashboard,export,trackers}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing spsearch[$EXTRAS] (first time: a few minutes; torch comes from the local wheel cache where there is one)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]" \
    --config-settings editable_mode=compat 2>&1 | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import spsearch, timm_plugins, thop, optuna, accelerate" \
    || { echo "setup: the install above failed; see its messages" >&2; exit 1; }
scripts/fetch_fashion_mnist.sh || echo "setup: Fashion-MNIST not installed (see message above); data-less commands still work"
echo "setup: done"
