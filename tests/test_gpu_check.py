"""``make gpu-check`` without a GPU, and the ImageFolder it writes for the DALI step."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from spsearch.data import DataConfig, create_loaders, dataset_info

from helpers import ROOT, load_script


@pytest.mark.skipif(torch.cuda.is_available(), reason='the no-GPU path')
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / 'gpu_check.md'
    done = subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--output', str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout.strip().splitlines() == [
        'gpu-check: no CUDA GPU here; nothing was measured (results/gpu_check.md left as it is)']
    assert not out.exists()


def test_the_dali_step_s_imagefolder_is_a_real_imagefolder(tmp_path):
    pytest.importorskip('PIL')
    tool = load_script('gpu_check', ROOT / 'tools' / 'gpu_check.py')
    try:
        tool.write_imagefolder(tmp_path / 'png', train=30, val=10)
    except Exception as e:
        pytest.skip(f'Fashion-MNIST not installed: {e}')
    cfg = DataConfig(dataset='imagefolder', data_dir=str(tmp_path / 'png'), batch_size=8, workers=0)
    info = dataset_info(cfg)
    assert info.num_train == 30 and info.num_val == 10 and info.num_classes >= 2
    loaders = create_loaders(cfg, input_size=(3, 28, 28), device=torch.device('cpu'))
    images, labels = next(iter(loaders.train))
    assert images.shape == (8, 3, 28, 28) and labels.shape == (8,)
