"""``make gpu-check`` without a GPU (its DALI step reuses the tested ImageFolder export of train_throughput.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from helpers import ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason='the no-GPU path')
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / 'gpu_check.md'
    done = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--output', str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout.strip().splitlines() == [
        'gpu-check: no CUDA GPU here; nothing was measured (results/gpu_check.md left as it is)']
    assert not out.exists()

