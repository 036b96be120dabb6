"""ONNX export in the fused inference form, verified in onnxruntime (``spsearch.export``, ``export.py``)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch

from spsearch.export import export_onnx, onnxruntime_difference
from spsearch.models import FAMILIES, list_sp_models, stage_specs
from spsearch.train.checkpoint import export_weights

from helpers import ROOT, load_script, randomize_bn

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')


def _one_model_per_family() -> list:
    """The smallest registered model of every family, the ImageNet layouts marked slow (larger graphs)."""
    out = []
    for family in FAMILIES:
        names = [n for n in list_sp_models() if n in timm.list_models(module=family.__name__.rsplit('.', 1)[-1])]
        if not names:
            continue
        name = min(names, key=lambda n: sum(p.numel() for p in timm.create_model(n, pretrained=False).parameters()))
        imagenet = 'cifar' not in family.__name__
        out.append(pytest.param(name, marks=pytest.mark.slow) if imagenet else name)
    return out


@pytest.mark.parametrize('name', _one_model_per_family())
def test_export_matches_torch_in_onnxruntime_for_every_family(name, tmp_path):
    """Mixed vanilla/SP stages with several alphas and groups, random BN statistics, an odd input size,
    a symbolic batch: onnxruntime gives PyTorch's outputs."""
    n = len(stage_specs(name))
    alphas = (['vanilla', 0.5, 0.25, 1.0] * n)[:n]
    groups = ([1, 2, 4, 1] * n)[:n]
    model = timm.create_model(name, sp_alpha=alphas, sp_groups=groups, num_classes=7).eval()
    randomize_bn(model)
    size = (3, 35, 35) if 'cifar' in model.__class__.__module__ or name.startswith('sp_resnet20') else (3, 67, 67)
    path = export_onnx(model, tmp_path / 'm.onnx', size, dynamic_batch=True)
    check = onnxruntime_difference(model, path, size, batch_sizes=(1, 3))
    assert check.max_rel < 1e-4, check


def test_cli_exports_a_weights_file_with_its_classifier_width(tmp_path, capsys):
    tool = load_script('export_cli', ROOT / 'export.py')
    model = timm.create_model('sp_resnet20', sp_alpha=0.25, num_classes=10)
    randomize_bn(model)
    weights = export_weights(model, tmp_path / 'w.safetensors')
    out = tmp_path / 'sub' / 'm.onnx'
    assert tool.main(['--model', 'sp_resnet20', '--model-kwargs', 'sp_alpha=0.25', '--checkpoint', str(weights),
                      '--output', str(out), '--img-size', '32']) == 0
    assert 'max rel diff' in capsys.readouterr().out
    import onnx
    graph = onnx.load(str(out)).graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    assert not [n for n in graph.node if n.op_type == 'BatchNormalization']  # every norm folded


@pytest.mark.parametrize('args,match', [
    (['--model', 'no_such_model'], 'unknown model'),
    (['--model', 'sp_resnet20', '--checkpoint', '{bad}'], 'cannot be read'),
    (['--model', 'sp_resnet20', '--checkpoint', '{missing}'], 'does not exist'),
    (['--model', 'sp_resnet20', '--output', '{bad}/m.onnx'], 'not a writable folder'),
    (['--model', 'sp_resnet20', '--output', '{tmp}'], 'is a folder'),
    (['--model', 'sp_resnet20', '--img-size', '0'], '--img-size 0 is invalid'),
    (['--checkpoint', '{tmp}'], 'without args.yaml'),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(args, match, tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    subs = {'{bad}': str(bad), '{missing}': str(tmp_path / 'none.pth'), '{tmp}': str(tmp_path)}
    argv = [subs.get(a, a).replace('{bad}', str(bad)) for a in args]
    if '--output' not in argv:
        argv += ['--output', str(tmp_path / 'out.onnx')]
    done = subprocess.run([sys.executable, str(ROOT / 'export.py'), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], done.stderr
    assert not (tmp_path / 'out.onnx').exists()


def test_export_needs_a_recent_opset(tmp_path):
    from spsearch.errors import ConfigError
    with pytest.raises(ConfigError, match='--opset 13 is too old'):
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / 'm.onnx', (3, 8, 8), opset=13)
    with pytest.raises(ConfigError, match='--opset 99 is newer than this onnx'):  # it wrote opset 18, said 99
        export_onnx(torch.nn.Conv2d(3, 4, 3), tmp_path / 'm.onnx', (3, 8, 8), opset=99)
    assert not (tmp_path / 'm.onnx').exists()
