#!/usr/bin/env python3
"""Benchmark a model against a baseline, measured interleaved in one run (timm ``benchmark.py`` style).

Example:
    python benchmark.py --model sp_resnet50 --model-kwargs sp_alpha=0.5 --baseline resnet50 \\
        --batch-size 1 16 --device cpu --bench inference --channels-last --fused both

For every condition (bench mode x batch size x fused) it prints images/s, the median latency
and its quartiles, the peak memory of one step, and the ratios model/baseline. ``ratio`` is the
latency ratio (below 1 = the model is faster); ``throughput_ratio`` its inverse. Both models are
timed in the same process, one step of each in turn (``spsearch.cost.latency``'s protocol,
``spsearch.timing``'s clocks). A row per condition is appended to ``<csv-dir>/<condition>.csv``;
``--json`` prints one JSON object per condition; ``--report FILE`` appends a markdown section
with provenance.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
import yaml

import timm_plugins  # noqa: F401  (registers the SP models)
from spsearch.cli import CliError, parse_kwargs, run_cli
from spsearch.cost import UnsupportedModuleError, analytic_count
from spsearch.cost.latency import make_step, prepare_model
from spsearch.io import atomic_write_text, check_output_folder
from spsearch.ops import SPCONV_IMPLS, autotune, set_spconv_impl
from spsearch.provenance import markdown_header, provenance
from spsearch.timing import peak_memory_mb, summarize, time_interleaved


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group('models')
    group.add_argument('--model', default='sp_resnet50', help='timm model name (SP models are registered)')
    group.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V',
                       help='keyword arguments for timm.create_model, e.g. sp_alpha=0.5 sp_groups=(2,2,4,8)')
    group.add_argument('--baseline', default='resnet50', help='timm model to compare against ("none" to skip)')
    group.add_argument('--baseline-kwargs', nargs='*', default=[], metavar='K=V')
    group.add_argument('--num-classes', type=int, default=None, help='classifier size (default: the model\'s)')
    group = parser.add_argument_group('conditions')
    group.add_argument('--bench', choices=['inference', 'train', 'both'], default='inference')
    group.add_argument('--batch-size', type=int, nargs='+', default=[16])
    group.add_argument('--img-size', type=int, default=None, help='input resolution (default: the model\'s)')
    group.add_argument('--device', default='cpu', help='cpu, cuda or cuda:N')
    group.add_argument('--runtime', choices=['torch', 'onnxruntime'], default='torch',
                       help='onnxruntime: both models exported to ONNX (BNs folded, spsearch.export) and run in '
                            'onnxruntime on the CPU, interleaved the same way (inference only)')
    group.add_argument('--amp', choices=['no', 'bf16', 'fp16'], default='no', help='autocast dtype')
    group.add_argument('--channels-last', action='store_true')
    group.add_argument('--compile', action='store_true', help='torch.compile both models')
    group.add_argument('--fused', nargs='?', const='yes', default='no', choices=['no', 'yes', 'both'],
                       help='inference with every BN folded (both models); "both" measures folded and not')
    group.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: usable cores)')
    group.add_argument('--sp-impl', choices=[*SPCONV_IMPLS, 'auto', 'tune'], default='auto',
                       help='SPConv implementation (SPConv2d.set_impl); "tune" times split vs dense per layer on this '
                            'device and batch first (spsearch.ops.autotune)')
    group.add_argument('--sp-recompute', action='store_true',
                       help='training: recompute the SPConv branch convs in backward instead of storing them')
    group.add_argument('--malloc', choices=['default', 'keep'], default='default',
                       help='"keep": glibc keeps freed memory (mallopt M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB) '
                            'instead of returning every large tensor to the OS; both models alike')
    group = parser.add_argument_group('protocol and output')
    group.add_argument('--warmup', type=int, default=3)
    group.add_argument('--repeats', type=int, default=10)
    group.add_argument('--no-memory', action='store_true', help='skip the peak-memory probes')
    group.add_argument('--memory-repeats', type=int, default=1,
                       help='fresh-process memory probes per model (alternating); the median is reported')
    group.add_argument('--json', action='store_true', help='print one JSON object per condition')
    group.add_argument('--csv-dir', default='runs/bench', help='folder of the per-condition CSV files')
    group.add_argument('--report', default=None, metavar='FILE', help='append a markdown section to FILE')
    group.add_argument('--report-title', default=None)
    group.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    return parser


def create(name: str, kwargs: dict[str, Any], num_classes: int | None) -> torch.nn.Module:
    if name not in timm.list_models() and name.split('.')[0] not in timm.list_models():
        raise CliError(f'unknown model {name!r}; see timm.list_models() or timm_plugins.list_sp_models()')
    extra = {'num_classes': num_classes} if num_classes is not None else {}
    try:
        return timm.create_model(name, **kwargs, **extra)
    except (ValueError, TypeError) as e:
        raise CliError(f'cannot build {name} with {kwargs}: {e}') from None


def condition_name(c: dict[str, Any]) -> str:
    parts = [c['bench'], c['device'].replace(':', ''), f"bs{c['batch_size']}", c['amp'] if c['amp'] != 'no' else 'fp32']
    parts += [tag for tag, on in (('cl', c['channels_last']), ('fused', c['fused']), ('compiled', c['compile']),
                                  ('ort', c.get('runtime') == 'onnxruntime')) if on]
    impl = c.get('sp_impl', 'auto')
    parts += [tag for tag, on in ((f'sp{impl}', impl != 'auto'), ('recompute', c.get('sp_recompute')),
                                  ('mallockeep', c.get('malloc') == 'keep')) if on]
    return '_'.join(parts)


def set_malloc(mode: str) -> None:
    """``keep``: stop glibc from unmapping freed large blocks (each new tensor then page-faults afresh)."""
    if mode == 'default':
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
        ok = libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, (1 << 31) - 1)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    except OSError:
        ok = False
    if not ok:
        raise CliError('--malloc keep needs glibc (mallopt); use --malloc default on this system')


def prepare(model: torch.nn.Module, x: torch.Tensor, spec: dict[str, Any], train: bool,
            tune: bool = True) -> torch.nn.Module:
    """``prepare_model`` plus the SPConv settings; ``torch.compile`` last, after any tuning."""
    prepared = prepare_model(model, x.device, train=train, fused=spec['fused'], channels_last=spec['channels_last'])
    impl = spec.get('sp_impl', 'auto')
    set_spconv_impl(prepared, impl if impl != 'tune' else None, recompute=bool(spec.get('sp_recompute')))
    if impl == 'tune' and tune:
        autotune(prepared, x, train=train)
    return torch.compile(prepared) if spec['compile'] else prepared  # type: ignore[return-value]


def probe_memory(spec: dict[str, Any]) -> float | None:
    """Peak memory of the first step in a fresh process (see ``peak_memory_mb``); None on failure."""
    if torch.device(spec['device']).type == 'cuda':
        return _memory_in_this_process(spec)
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore'}
    done = subprocess.run([sys.executable, __file__, '--memory-probe', json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        print(f'warning: memory probe for {spec["model"]} failed: {done.stderr.strip().splitlines()[-1:]}',
              file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])['peak_mem_mb']


def _memory_in_this_process(spec: dict[str, Any]) -> float | None:
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    set_malloc(spec.get('malloc', 'default'))
    device = torch.device(spec['device'])
    x = torch.randn(spec['batch_size'], *spec['input_size'], device=device)
    if spec['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    # no tuning here: its steps would leave memory resident and hide the step's own peak ('tune' measures 'auto')
    model = prepare(timm.create_model(spec['model'], **spec['kwargs']), x, spec, spec['train'], tune=False)
    return peak_memory_mb(make_step(model, x, train=spec['train'], amp=spec['amp']), device)


def ort_step(model: torch.nn.Module, x: torch.Tensor, folder: str, name: str) -> Any:
    """One onnxruntime inference step of ``model`` (exported with its BNs folded, fixed batch) on ``x``."""
    import onnxruntime as ort

    from spsearch.export import export_onnx
    path = export_onnx(model, Path(folder) / f'{name}.onnx', tuple(x.shape[1:]), batch_size=x.shape[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch rows
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def macs_of(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int | None:
    try:
        return analytic_count(model, input_size).macs
    except UnsupportedModuleError:
        return None


def run_condition(models: dict[str, torch.nn.Module], specs: dict[str, dict[str, Any]], cond: dict[str, Any],
                  args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(cond['device'])
    train = cond['bench'] == 'train'
    input_size = cond['input_size']
    load_start = os.getloadavg()[0]
    steps = {}
    with contextlib.ExitStack() as stack:
        for role, model in models.items():
            x = torch.randn(cond['batch_size'], *input_size, device=device)
            if cond.get('runtime') == 'onnxruntime':
                steps[role] = ort_step(model, x, stack.enter_context(tempfile.TemporaryDirectory()), role)
                continue
            if cond['channels_last']:
                x = x.contiguous(memory_format=torch.channels_last)
            steps[role] = make_step(prepare(model, x, cond, train), x, train=train, amp=cond['amp'])
        times = time_interleaved(steps, device, args.warmup, args.repeats)
    stats = {role: summarize(t, cond['batch_size']) for role, t in times.items()}
    memory: dict[str, float | None] = {role: None for role in models}
    if not args.no_memory:
        probes: dict[str, list[float]] = {role: [] for role in models}
        for _ in range(args.memory_repeats):
            for role in models:
                peak = probe_memory({**specs[role], **{k: cond[k] for k in (
                    'device', 'batch_size', 'input_size', 'fused', 'channels_last', 'compile', 'amp', 'sp_impl',
                    'sp_recompute', 'malloc')}, 'train': train, 'threads': args.threads})
                if peak is not None:
                    probes[role].append(peak)
        memory = {role: statistics.median(p) if p else None for role, p in probes.items()}
    row: dict[str, Any] = {
        'condition': condition_name(cond), **{k: cond[k] for k in (
            'bench', 'device', 'batch_size', 'amp', 'channels_last', 'fused', 'compile', 'sp_impl', 'sp_recompute',
            'malloc', 'runtime')},
        'img_size': input_size[-1], 'threads': torch.get_num_threads(),
        'load_1min_start': round(load_start, 2), 'load_1min_end': round(os.getloadavg()[0], 2),
        'model': specs['model']['label'], 'latency_ms': stats['model'].median_ms,
        'latency_p25_ms': stats['model'].p25_ms, 'latency_p75_ms': stats['model'].p75_ms,
        'latency_min_ms': stats['model'].min_ms,
        'images_per_s': stats['model'].images_per_s, 'peak_mem_mb': memory['model'],
        'gmacs': (macs_of(models['model'], input_size) or 0) / 1e9 or None,
        'baseline': specs['baseline']['label'] if 'baseline' in models else None,
        'repeats': args.repeats,
    }
    if 'baseline' in models:
        base = stats['baseline']
        row.update({
            'baseline_latency_ms': base.median_ms, 'baseline_latency_p25_ms': base.p25_ms,
            'baseline_latency_p75_ms': base.p75_ms, 'baseline_latency_min_ms': base.min_ms,
            'baseline_images_per_s': base.images_per_s,
            'baseline_peak_mem_mb': memory['baseline'],
            'baseline_gmacs': (macs_of(models['baseline'], input_size) or 0) / 1e9 or None,
            'ratio': stats['model'].median_ms / base.median_ms,
            'ratio_min': stats['model'].min_ms / base.min_ms,
            'throughput_ratio': base.median_ms / stats['model'].median_ms,
            'memory_ratio': (memory['model'] / memory['baseline']
                             if memory['model'] and memory['baseline'] else None),
        })
        row['macs_ratio'] = row['gmacs'] / row['baseline_gmacs'] if row['gmacs'] and row['baseline_gmacs'] else None
    return row


def append_csv(path: Path, row: dict[str, Any]) -> None:
    existing = path.read_text() if path.exists() else ''
    buf = io.StringIO()
    fields = list(row)
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction='ignore')
    if not existing:
        writer.writeheader()
    writer.writerow(row)
    atomic_write_text(path, existing + buf.getvalue())


def fmt(v: Any, spec: str = '.2f') -> str:
    return '-' if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ('| condition | model | img/s | latency ms (p25-p75) | peak MiB | baseline | img/s | latency ms (p25-p75) '
            '| peak MiB | MACs ratio | latency ratio | ratio of minima | memory ratio |')
    lines = [head, '|' + '---|' * 13]
    for r in rows:
        lines.append(
            f"| {r['condition']} | {r['model']} | {fmt(r['images_per_s'], '.1f')} | {fmt(r['latency_ms'], '.1f')} "
            f"({fmt(r['latency_p25_ms'], '.1f')}-{fmt(r['latency_p75_ms'], '.1f')}) | {fmt(r['peak_mem_mb'], '.0f')} "
            f"| {r.get('baseline') or '-'} | {fmt(r.get('baseline_images_per_s'), '.1f')} "
            f"| {fmt(r.get('baseline_latency_ms'), '.1f')} ({fmt(r.get('baseline_latency_p25_ms'), '.1f')}-"
            f"{fmt(r.get('baseline_latency_p75_ms'), '.1f')}) | {fmt(r.get('baseline_peak_mem_mb'), '.0f')} "
            f"| {fmt(r.get('macs_ratio'), '.3f')} | **{fmt(r.get('ratio'), '.3f')}** "
            f"| {fmt(r.get('ratio_min'), '.3f')} | {fmt(r.get('memory_ratio'), '.3f')} |")
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.memory_probe:
        print(json.dumps({'peak_mem_mb': _memory_in_this_process(json.loads(args.memory_probe))}))
        return 0
    for flag in ('warmup', 'repeats', 'memory_repeats', 'threads', 'img_size', 'num_classes'):
        value, least = getattr(args, flag), 0 if flag == 'warmup' else 1
        if value is not None and value < least:
            raise CliError(f'--{flag.replace("_", "-")} {value} is invalid: it must be >= {least}')
    if any(b < 1 for b in args.batch_size):
        raise CliError('--batch-size values must be >= 1')
    check_output_folder(args.csv_dir, '--csv-dir')
    if args.report:
        if Path(args.report).is_dir():
            raise CliError(f'--report {args.report} is a folder; give a markdown file in it, e.g. '
                           f'{Path(args.report) / "bench.md"}')
        check_output_folder(Path(args.report).parent, '--report\'s folder')
    if args.threads:
        torch.set_num_threads(args.threads)
    set_malloc(args.malloc)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f'--device {args.device!r} is not a torch device; use cpu, cuda or cuda:N') from None
    if device.type not in ('cpu', 'cuda'):
        raise CliError(f'--device {args.device} is not supported here; use cpu, cuda or cuda:N')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CliError('--device cuda asked for but torch sees no CUDA device; use --device cpu')
    if args.runtime == 'onnxruntime':
        clash = [flag for flag, on in (('--bench train/both', args.bench != 'inference'), ('--device cuda',
                 device.type != 'cpu'), ('--amp', args.amp != 'no'), ('--compile', args.compile),
                 ('--channels-last', args.channels_last), ('--sp-impl tune', args.sp_impl == 'tune')) if on]
        if clash:
            raise CliError(f'--runtime onnxruntime times CPU inference of the exported graph; drop {", ".join(clash)}')
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise CliError('--runtime onnxruntime needs onnxruntime: pip install -e .[export]') from None
        args.fused, args.no_memory = 'yes', True  # the exported graph is the folded model; no memory probes

    roles = {'model': (args.model, parse_kwargs(args.model_kwargs, '--model-kwargs'))}
    if args.baseline.lower() != 'none':
        roles['baseline'] = (args.baseline, parse_kwargs(args.baseline_kwargs, '--baseline-kwargs'))
    models = {role: create(name, kw, args.num_classes) for role, (name, kw) in roles.items()}
    specs = {role: {'model': name, 'kwargs': {**kw, **({'num_classes': args.num_classes} if args.num_classes else {})},
                    'label': name + (' ' + ' '.join(f'{k}={v}' for k, v in kw.items()) if kw else '')}
             for role, (name, kw) in roles.items()}
    cfg_size = models['model'].pretrained_cfg.get('input_size', (3, 224, 224))
    input_size = (cfg_size[0], args.img_size or cfg_size[1], args.img_size or cfg_size[2])

    prov = provenance()  # at the start: the code that runs is the commit checked out now
    benches = ['inference', 'train'] if args.bench == 'both' else [args.bench]
    fused_modes = {'no': [False], 'yes': [True], 'both': [False, True]}[args.fused]
    rows = []
    for bench in benches:
        for batch_size in args.batch_size:
            for fused in (fused_modes if bench == 'inference' else [False]):
                cond = dict(bench=bench, device=str(device), batch_size=batch_size, amp=args.amp,
                            channels_last=args.channels_last, fused=fused, compile=args.compile,
                            input_size=input_size, sp_impl=args.sp_impl, sp_recompute=args.sp_recompute,
                            malloc=args.malloc, runtime=args.runtime)
                row = run_condition(models, specs, cond, args)
                rows.append(row)
                append_csv(Path(args.csv_dir) / f"{row['condition']}.csv", row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    line = (f"{row['condition']}: {row['model']} {row['latency_ms']:.1f} ms "
                            f"({row['images_per_s']:.1f} img/s)")
                    if 'ratio' in row:
                        line += f" vs {row['baseline']} {row['baseline_latency_ms']:.1f} ms: ratio {row['ratio']:.3f}"
                    print(line, flush=True)
    if not args.json:
        print('\n' + table(rows))
    if args.report:
        title = args.report_title or f'{args.model} vs {args.baseline}'
        section = (markdown_header(title, prov).replace('# ', '## ', 1)
                   + f"\nThreads: {torch.get_num_threads()}; {args.warmup} warm-up + {args.repeats} timed steps per "
                   f"model, interleaved; input {input_size[0]}x{input_size[1]}x{input_size[2]}. System load (1-minute "
                   f"average, {os.cpu_count()} CPUs) at the start/end of each condition: "
                   + ', '.join(f"{r['load_1min_start']:.2f}/{r['load_1min_end']:.2f}" for r in rows)
                   + ' (other jobs on a shared machine slow both models, but not always alike; the ratio of the '
                   'fastest steps is the steadier figure there).\n\n' + table(rows)
                   + '\n\n<details><summary>raw rows (YAML)</summary>\n\n```yaml\n'
                   + yaml.safe_dump(rows, sort_keys=False) + '```\n</details>\n')
        report = Path(args.report)
        existing = report.read_text() if report.exists() else ''
        atomic_write_text(report, existing + ('\n' if existing else '') + section)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
