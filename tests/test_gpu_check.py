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



def test_the_carried_fashion_mnist_subset_loads_as_the_real_files(tmp_path):
    """make gpu-wheels' subset: the first N training images with their labels, the whole test split."""
    sys.path.insert(0, str(ROOT / 'tools'))
    from gpu_check import write_fashion_subset

    from spsearch.data.datasets import find_fashion_mnist, load_fashion_mnist
    source = find_fashion_mnist()
    write_fashion_subset(source, tmp_path, 300)
    (train, test), (full_train, full_test) = load_fashion_mnist(tmp_path), load_fashion_mnist(source)
    assert len(train.images) == 300 and torch.equal(train.images, full_train.images[:300])
    assert torch.equal(train.labels, full_train.labels[:300]) and torch.equal(test.images, full_test.images)


def test_a_copied_trees_results_name_the_recorded_commit_and_what_its_git_says(monkeypatch):
    from spsearch.provenance import SOURCE_COMMIT_ENV, git_commit
    here = git_commit()
    monkeypatch.setenv(SOURCE_COMMIT_ENV, 'abc123')
    assert git_commit() == f'abc123 (copied tree, recorded by make gpu-wheels; its git says {here})'
