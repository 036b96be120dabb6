#!/usr/bin/env python3
"""Where does an SP model's time go? Per-layer timings of every SPConv implementation, and a profile.

Example:
    python benchmarks/profile_ops.py --model sp_resnet50 --baseline resnet50 --batch-size 16 \\
        --bench inference --fused --channels-last --profile --report results/benchmarks.md

Part 1 times every SPConv layer alone, with the input it gets inside the model, under each
implementation (``reference``, ``split``, ``dense``), next to the layer it replaces in the
baseline (the vanilla conv of the same name), all interleaved; ratios are against the vanilla
conv. Inference steps run under ``inference_mode``; training steps are forward + backward.
Part 2 (``--profile``) runs ``torch.profiler`` over a few whole-model steps of the model and the
baseline and lists the ops that take the most time, so a missed goal can be explained.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import timm_plugins  # noqa: F401  (registers the SP models)
from spsearch.cli import CliError, parse_kwargs, run_cli
from spsearch.cost.latency import make_step, prepare_model
from spsearch.io import atomic_write_text
from spsearch.ops import SPCONV_IMPLS, SPConv2d, fast_paths, set_spconv_impl
from spsearch.provenance import markdown_header, provenance
from spsearch.timing import capture_inputs, time_interleaved


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='sp_resnet50')
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V')
    parser.add_argument('--baseline', default='resnet50')
    parser.add_argument('--baseline-kwargs', nargs='*', default=[], metavar='K=V')
    parser.add_argument('--bench', choices=['inference', 'train'], default='inference')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--fused', action='store_true', help='fold every BN (inference)')
    parser.add_argument('--impls', nargs='+', default=list(SPCONV_IMPLS), choices=SPCONV_IMPLS)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--cpu-time', action='store_true',
                        help='time layers by process CPU time (steadier on a shared machine; use with --threads 1)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--profile', action='store_true', help='also profile whole-model steps (torch.profiler)')
    parser.add_argument('--profile-steps', type=int, default=3)
    parser.add_argument('--top', type=int, default=12, help='ops listed per model in the profile')
    parser.add_argument('--report', default=None, metavar='FILE', help='append a markdown section to FILE')
    parser.add_argument('--report-title', default=None)
    return parser


def _layer_step(layer: nn.Module, x: torch.Tensor, train: bool) -> Any:
    if not train:
        def infer() -> None:
            with torch.inference_mode():
                layer(x)
        return infer
    x = x.clone().requires_grad_()

    def step() -> None:
        layer(x).sum().backward()
    return step


def per_layer(model: nn.Module, baseline: nn.Module | None, x: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    train = args.bench == 'train'
    names = [n for n, m in model.named_modules() if isinstance(m, SPConv2d)]
    inputs = capture_inputs(model, x, names)
    rows = []
    for name in names:
        sp = model.get_submodule(name)
        xi = inputs[name]
        steps = {}
        vanilla = baseline.get_submodule(name) if baseline is not None else None
        if isinstance(vanilla, nn.Conv2d):
            steps['vanilla'] = _layer_step(copy.deepcopy(vanilla).train(train), xi, train)
        for impl in args.impls:
            if impl == 'dense' and not (fast_paths.dense_supported(sp.kernel_size, sp.stride, sp.dilation)
                                        and xi.shape[-1] % sp.stride == 0 and xi.shape[-2] % sp.stride == 0):
                continue
            trial = copy.deepcopy(sp).train(train)
            trial.set_impl(impl)
            steps[impl] = _layer_step(trial, xi, train)
        times = time_interleaved(steps, x.device, args.warmup, args.repeats,
                                 clock=time.process_time if args.cpu_time else time.perf_counter)
        med = {k: sorted(t)[len(t) // 2] * 1000 for k, t in times.items()}
        rows.append({'layer': name, 'input': 'x'.join(map(str, xi.shape)), 'stride': sp.stride,
                     'split': f'{sp.rep_channels}/{sp.red_channels}', 'ms': med})
    return rows


def layer_table(rows: list[dict], impls: list[str]) -> str:
    cols = ['vanilla', *impls]
    lines = ['| layer | input | stride | rep/red | ' + ' | '.join(f'{c} ms' for c in cols)
             + ' | ' + ' | '.join(f'{c}/vanilla' for c in impls) + ' | fastest |',
             '|' + '---|' * (5 + len(cols) + len(impls))]
    total = {c: 0.0 for c in cols}
    for r in rows:
        ms = r['ms']
        for c in cols:
            total[c] += ms.get(c, ms.get('split', 0.0)) if c != 'vanilla' else ms.get('vanilla', 0.0)
        fastest = min((c for c in impls if c in ms), key=lambda c: ms[c])
        van = ms.get('vanilla')
        lines.append(f"| {r['layer']} | {r['input']} | {r['stride']} | {r['split']} | "
                     + ' | '.join(f'{ms[c]:.2f}' if c in ms else '-' for c in cols) + ' | '
                     + ' | '.join(f'{ms[c] / van:.2f}' if c in ms and van else '-' for c in impls)
                     + f' | {fastest} |')
    van = total['vanilla']
    lines.append('| **sum** | | | | ' + ' | '.join(f'**{total[c]:.1f}**' for c in cols) + ' | '
                 + ' | '.join(f'**{total[c] / van:.2f}**' if van else '-' for c in impls) + ' | |')
    return '\n'.join(lines)


def profile_table(step: Any, steps: int, top: int, device: torch.device) -> tuple[str, float]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    step()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.key.startswith('aten::')]
    attr = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    total = sum(getattr(e, attr) for e in events) / steps / 1000
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    lines = ['| op | calls/step | ms/step | share |', '|---|---|---|---|']
    for e in events[:top]:
        ms = getattr(e, attr) / steps / 1000
        lines.append(f'| `{e.key}` | {e.count // steps} | {ms:.1f} | {ms / total:.0%} |')
    return '\n'.join(lines), total


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fused and args.bench == 'train':
        raise CliError('--fused folds batch norms for inference; drop it with --bench train')
    device = torch.device(args.device)
    model = timm.create_model(args.model, **parse_kwargs(args.model_kwargs, '--model-kwargs'))
    baseline = (timm.create_model(args.baseline, **parse_kwargs(args.baseline_kwargs, '--baseline-kwargs'))
                if args.baseline.lower() != 'none' else None)
    cfg = model.pretrained_cfg.get('input_size', (3, 224, 224))
    size = (cfg[0], args.img_size or cfg[1], args.img_size or cfg[2])
    train = args.bench == 'train'
    prep = dict(train=train, fused=args.fused, channels_last=args.channels_last)
    model = prepare_model(model, device, **prep)
    baseline = prepare_model(baseline, device, **prep) if baseline is not None else None
    x = torch.randn(args.batch_size, *size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    prov = provenance()  # at the start: the code that runs is the commit checked out now
    rows = per_layer(model, baseline, x, args)
    text = layer_table(rows, args.impls)
    print(text, flush=True)
    if args.profile:
        runs = [(f'{args.model} (impl={impl})', model, impl) for impl in args.impls]
        runs += [(args.baseline, baseline, None)] if baseline is not None else []
        for title, net, impl in runs:
            net = copy.deepcopy(net)
            if impl is not None:
                set_spconv_impl(net, impl)
            table, total = profile_table(make_step(net, x, train=train), args.profile_steps, args.top, device)
            section = (f'\n**Profile: {title}**, aten self time {total:.1f} ms/step (profiler overhead included)'
                       f'\n\n{table}')
            text += '\n' + section
            print(section, flush=True)
    if args.report:
        title = args.report_title or f'Per-layer SPConv timings: {args.model} vs {args.baseline}'
        cond = (f'{args.bench}, batch {args.batch_size}, {size[1]}x{size[2]}, device {device}, '
                f'{"channels_last" if args.channels_last else "NCHW"}{", BNs folded" if args.fused else ""}, '
                f'threads {torch.get_num_threads()}, {args.warmup} warm-up + {args.repeats} timed rounds, interleaved, '
                f'{"process CPU time" if args.cpu_time else "wall time"}')
        section = (markdown_header(title, prov).replace('# ', '## ', 1) + f'\nCondition: {cond}.\n\n'
                   + text + '\n')
        report = Path(args.report)
        existing = report.read_text() if report.exists() else ''
        atomic_write_text(report, existing + ('\n' if existing else '') + section)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
