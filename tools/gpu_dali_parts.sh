#!/bin/bash
# DALI for `make gpu-check` on a GPU machine without a registry (run here, where pip works).
# nvidia-dali-cuda130 with nvImageCodec and nvJPEG is ~230 MB of wheels; a transfer limit (64 MiB per call on
# this workplace's device tool) means it travels in parts: this installs them into one folder for Python 3.12,
# packs it (xz) and splits it into .gpu-dali/partN of PART_MB MiB (default 62). Carry each part (in one call or
# several, keeping the machine warm), gather them in one folder there, then run tools/gpu_check_dali.sh FOLDER.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PART_MB=${PART_MB:-62}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d "$work/wheels" nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43 \
  astunparse gast optree nvtx makefun 'libcst~=1.8'
"$PY" -m pip install -q --no-deps --no-index --no-compile --target "$work/site" --python-version 3.12 \
  --implementation cp --only-binary=:all: "${plat[@]}" "$work"/wheels/*.whl
find "$work/site" -name 'backend_impl.cpython-3*' ! -name '*312*' -delete   # other Pythons' bindings
rm -f "$work/site/nvidia/__init__.py"   # keep nvidia a namespace package (torch's CUDA libraries live there too)
rm -rf .gpu-dali && mkdir -p .gpu-dali
tar -C "$work" -cf - site | xz -9 -T2 | split -b "$((PART_MB * 1024 * 1024))" -d -a 1 - .gpu-dali/part
sha256sum .gpu-dali/part* | tee .gpu-dali/SHA256SUMS
