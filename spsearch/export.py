"""ONNX export of any timm model (SP models included) in its fused inference form, verified in onnxruntime.

``export_onnx`` folds every BatchNorm (``spsearch.ops.fold_batchnorms``: the SPConv merges and the
norms after convs, as the benchmarks measure), exports with PyTorch's current exporter
(``torch.onnx.export(..., dynamo=True)``, through ``torch.export``; the older TorchScript exporter and
``torch.jit.script`` fail on the SP models' split), checks the file with ``onnx.checker`` and runs it in
``onnxruntime`` on the same random inputs as PyTorch, returning the largest absolute and relative
differences. ``onnx``, ``onnxscript`` and ``onnxruntime`` come with the ``export`` extra (the setup
installs it).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .io import atomic_write_bytes
from .ops.fold_bn import fold_batchnorms

__all__ = ['DEFAULT_OPSET', 'ExportCheck', 'export_onnx', 'onnxruntime_difference']

DEFAULT_OPSET = 18
"""The lowest opset PyTorch's dynamo exporter writes (torch 2.5+); onnxruntime >= 1.16 runs it."""


@dataclass(frozen=True)
class ExportCheck:
    """PyTorch vs onnxruntime on the same inputs: largest absolute difference and largest difference relative to
    the largest PyTorch output (both over every output element of every checked batch)."""

    max_abs: float
    max_rel: float
    batch_sizes: tuple[int, ...]

    def ok(self, tolerance: float) -> bool:
        return self.max_rel <= tolerance


def _require_onnx() -> None:
    missing = []
    for name in ('onnx', 'onnxscript', 'onnxruntime'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f'ONNX export needs {", ".join(missing)}: pip install -e ".[export]" (or make setup)')


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_size: tuple[int, int, int], *,
                batch_size: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                fold: bool = True) -> Path:
    """Export ``model`` (eval mode, BNs folded unless ``fold=False``) to ``path`` atomically; check it with onnx.

    Args:
        model: Any module taking one NCHW float tensor (a timm model).
        path: The ``.onnx`` file to write.
        input_size: (C, H, W) of the input.
        batch_size: The batch size of the exported graph (the example input's, and the fixed one without
            ``dynamic_batch``).
        dynamic_batch: Export the batch dimension as symbolic (any batch size runs).
        opset: ONNX opset (>= 18).

    Raises:
        ConfigError: onnx/onnxscript missing, opset < 18, or the export or the checker failed (one line).
    """
    _require_onnx()
    import onnx
    if opset < DEFAULT_OPSET:
        raise ConfigError(f'--opset {opset} is too old for the exporter; give >= {DEFAULT_OPSET}')
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ConfigError(f'--opset {opset} is newer than this onnx {onnx.__version__} knows ({newest}); give '
                          f'{DEFAULT_OPSET}-{newest}')
    model = fold_batchnorms(model.eval()) if fold else model.eval()
    # torch.export specialises a dimension of size 1, so a symbolic batch is traced with 2 images
    example = torch.randn(max(batch_size, 2) if dynamic_batch else batch_size, *input_size)
    shapes = {'x': {0: torch.export.Dim('batch', min=1)}} if dynamic_batch else None
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tmp_path = Path(tmp) / 'model.onnx'
        try:
            program = torch.onnx.export(model, (example,), input_names=['x'], output_names=['logits'],
                                        dynamic_shapes=shapes, opset_version=opset, dynamo=True, verbose=False)
            assert program is not None
            program.save(str(tmp_path))
            onnx.checker.check_model(str(tmp_path), full_check=True)
        except ConfigError:
            raise
        except Exception as e:  # the exporter raises many types; the message is what a user can act on
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f'ONNX export failed: {type(e).__name__}: {first}') from None
        return atomic_write_bytes(path, tmp_path.read_bytes())


def onnxruntime_difference(model: nn.Module, path: str | os.PathLike[str], input_size: tuple[int, int, int],
                           batch_sizes: tuple[int, ...] = (1,), seed: int = 0, fold: bool = True) -> ExportCheck:
    """Run ``path`` in onnxruntime (CPU) and ``model`` (folded like the export) in PyTorch on the same random inputs.

    Returns:
        The largest absolute and relative differences of the outputs over ``batch_sizes``.
    """
    _require_onnx()
    import onnxruntime as ort
    model = fold_batchnorms(model.eval()) if fold else model.eval()
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    max_abs = max_ref = 0.0
    for batch in batch_sizes:
        x = torch.randn(batch, *input_size, generator=generator)
        with torch.no_grad():
            ref = model(x).float()
        out = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        max_abs = max(max_abs, float((out - ref).abs().max()))
        max_ref = max(max_ref, float(ref.abs().max()))
    return ExportCheck(max_abs, max_abs / max(max_ref, 1e-12), tuple(batch_sizes))
