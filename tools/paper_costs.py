"""Regenerate ``results/paper_costs.md``: the SPConv paper's FLOPs (MACs) and params next to ours.

Usage: ``python tools/paper_costs.py [--output results/paper_costs.md]``

For every model/alpha row of the paper's ImageNet ResNet-50, CIFAR ResNet-20 and CIFAR VGG-16
tables it builds the registered model, counts it with ``spsearch.cost.profile_model`` (thop and
the analytic count, which must agree) and also reports the count in the convention thop gives
on the reference code, which misses the fusion's softmax and weighted sum (built inside
``forward`` there). The notes explain, with arithmetic computed here, every gap over 1%.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm_plugins  # noqa: F401  (registers the SP models)
from spsearch.cost import profile_model
from spsearch.cost.paper import PAPER_ROWS, PaperRow
from spsearch.io import atomic_write_text
from spsearch.ops import SoftmaxFusion, set_spconv_impl
from spsearch.provenance import markdown_header


def fusion_ops_missed_by_reference_thop(model: torch.nn.Module, input_size: tuple[int, int, int]) -> int:
    """Softmax (5 ops per channel) + weighted sum (2 per element) of every fusion, per image.

    The fusion modules run (and their hooks fire) only in the reference implementation; the fast
    paths compute the fusion inside one function.
    """
    set_spconv_impl(model, 'reference')
    missed: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: missed.append(5 * out.shape[1] + 2 * out[0].numel()))
             for m in model.modules() if isinstance(m, SoftmaxFusion)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for h in hooks:
        h.remove()
    return sum(missed)


def measure(row: PaperRow) -> dict[str, float]:
    model = timm.create_model(row.model, sp_alpha=row.sp_alpha, num_classes=row.num_classes)
    cost = profile_model(model, row.input_size)
    if cost.analytic_macs != cost.macs or cost.analytic_params != cost.params:
        raise SystemExit(f'{row.label}: thop ({cost.macs}, {cost.params}) and analytic '
                         f'({cost.analytic_macs}, {cost.analytic_params}) counts disagree')
    return {'macs': cost.macs, 'params': cost.params,
            'ref_macs': cost.macs - fusion_ops_missed_by_reference_thop(model, row.input_size)}


def fmt_macs(v: float, unit: float) -> str:
    return f'{v / unit:.4g}' if unit == 1e9 else f'{v / unit:.2f}'


def pct(ours: float, paper: float) -> str:
    return f'{(ours / paper - 1) * 100:+.2f}%'


def render(results: list[tuple[PaperRow, dict[str, float]]]) -> str:
    out = [markdown_header('SPConv paper costs: published vs. ours'), '''
"FLOPs" here, as in the paper and thop, are multiply-accumulates (MACs), per image at the
paper's resolution (224x224 ImageNet, 32x32 CIFAR). *Ours* is `spsearch.cost.profile_model`:
thop with SPSearch's rule for the fusion, equal to the analytic count in every row (checked when
this file is generated). *Ref. conv.* is the same network counted as thop counts the reference
code, which misses the fusion's softmax and weighted sum (created inside `forward` there);
for SP-ResNet-50 α=1/2 it gives 2.9660 G, the number measured on the reference code.
Params are exact (`sum(p.numel())`).
''']
    for table in dict.fromkeys(r.table for r, _ in results):
        rows = [(r, m) for r, m in results if r.table == table]
        unit, unit_name = (1e9, 'G') if 'ImageNet' in table else (1e6, 'M')
        first = rows[0][0]
        out.append(f'\n## {table} ({first.input_size[1]}x{first.input_size[2]}, {first.num_classes} classes)\n')
        out.append(f'| model | paper MACs ({unit_name}) | ours ({unit_name}) | Δ | ref. conv. ({unit_name}) | Δ '
                   '| paper params | ours params | Δ |')
        out.append('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
        for r, m in rows:
            paper_params = f'{r.exact_params:,}' if r.exact_params else r.params_printed
            params_ref = r.exact_params or r.params
            out.append(
                f'| {r.label} | {fmt_macs(r.macs, unit)} | {fmt_macs(m["macs"], unit)} | {pct(m["macs"], r.macs)} '
                f'| {fmt_macs(m["ref_macs"], unit)} | {pct(m["ref_macs"], r.macs)} | {paper_params} '
                f'| {int(m["params"]):,} | {pct(m["params"], params_ref)} |')
    out.append(notes(results))
    return '\n'.join(out) + '\n'


def notes(results: list[tuple[PaperRow, dict[str, float]]]) -> str:
    by = {(r.model, r.sp_alpha): (r, m) for r, m in results}
    r20v, r20h, r20q = (by[('sp_resnet20', a)] for a in ('vanilla', 1 / 2, 1 / 4))
    vggv = by[('sp_vgg16_cifar', 'vanilla')]
    vgg = {a: by[('sp_vgg16_cifar', a)] for a in (1 / 2, 1 / 4, 1 / 8, 1 / 16)}
    paper_slope = (vgg[1 / 4][0].macs - vgg[1 / 8][0].macs) / (1 / 8)
    predicted = vgg[1 / 8][0].macs - paper_slope / 16
    ours_slope = (vgg[1 / 4][1]['macs'] - vgg[1 / 8][1]['macs']) / (1 / 8)
    r20_paper_slope = (r20h[0].macs - r20q[0].macs) / (1 / 4)
    r20_ours_slope = (r20h[1]['macs'] - r20q[1]['macs']) / (1 / 4)
    fusion_extra = r20h[1]['macs'] - r20h[1]['ref_macs']
    sp_vgg_param_gap = max(abs(m['params'] / r.params - 1) for r, m in vgg.values()) * 100
    return f'''
## Notes: where a paper number is not matched within 1%, and why

1. **VGG-16 baseline (paper 16.62M params / 349.51M MACs, ours {vggv[1]["params"] / 1e6:.2f}M /
   {vggv[1]["macs"] / 1e6:.2f}M).** Ours is 13 convs with bias and BN ({vggv[1]["params"] - 267_786:,} params)
   plus a 512-512-10 classifier (512·512+512 + 512·10+10 = 267,786). The paper's SPConv-VGG rows
   are derived from this network, not from its baseline row: all four match ours within
   {sp_vgg_param_gap:.2f}% in params. SPConv replaces only the 12 non-first 3x3 convs, so any extra
   {(vggv[0].params - vggv[1]["params"]) / 1e6:.2f}M params or {(vggv[0].macs - vggv[1]["macs"]) / 1e6:.2f}M MACs
   in the paper's baseline would reappear (in full outside those convs, or at ≥ 36% inside them
   at α=1/2) in every SPConv row, which they do not. The paper's reduction ratios are therefore
   computed against the wrong baseline: α=1/2 saves {(1 - vgg[1 / 2][1]["params"] / vggv[1]["params"]) * 100:.1f}%
   of params, not {(1 - vgg[1 / 2][0].params / vggv[0].params) * 100:.1f}%.
2. **SPConv-VGG-16 α=1/16 MACs (paper 55.14M, ours {vgg[1 / 16][1]["macs"] / 1e6:.2f}M).** MACs are
   linear in α here (GWC and PWC scale with α, the redundant 1x1 with 1-α). The paper's own
   α=1/4 and α=1/8 rows give a slope of {paper_slope / 1e6:.2f}M per unit α (ours: {ours_slope / 1e6:.2f}M), which
   predicts {predicted / 1e6:.2f}M at α=1/16; ours is {pct(vgg[1 / 16][1]["macs"], predicted)} from that. The
   printed 55.14M is exactly {(vgg[1 / 16][0].macs - predicted) / 1e6:.2f}M above the paper's own
   extrapolation, most likely a digit slip (50.14 → 55.14); its params row (2.39M) matches ours.
3. **SPConv-ResNet-20 MACs (α=1/2: paper 17.91M, ours {r20h[1]["macs"] / 1e6:.2f}M
   {pct(r20h[1]["macs"], r20h[0].macs)}; α=1/4: paper 12.89M, ours {r20q[1]["macs"] / 1e6:.2f}M
   {pct(r20q[1]["macs"], r20q[0].macs)}; within the 2% acceptance).**
   The α-dependent part agrees: the paper's two rows differ by {r20_paper_slope / 1e6:.2f}M per unit α, ours by
   {r20_ours_slope / 1e6:.2f}M. The rest is how the fusion is counted: ours counts its weighted sum
   as 2 MACs per output element and the softmax ({fusion_extra / 1e6:.3f}M in all); the reference-thop
   convention counts none of it ({r20h[1]["ref_macs"] / 1e6:.2f}M, {pct(r20h[1]["ref_macs"], r20h[0].macs)}).
   The paper sits between the two, about {(r20h[0].macs - r20h[1]["ref_macs"]) / 1e6:.2f}M above the
   reference convention; no public source says how its ResNet-20 rows were counted.
   The vanilla row (41.62M) matches exactly.
4. **SPConv-ResNet-20 α=1/2 params (paper 0.10M, ours {r20h[1]["params"]:,}).** At two decimals
   {r20h[1]["params"]:,} rounds to 0.11M, so the printed 0.10M is a truncation (or a slightly different
   layout); ours is {(r20h[1]["params"] - r20h[0].params) / 1e6:.4f}M from it, inside the ±0.006M that
   acceptance allows. α=1/4 ({r20q[1]["params"]:,}) matches the printed 0.071M.
5. **ResNet-20 "75.88% FLOPs reduced" at α=1/4** (paper text) is an arithmetic slip:
   1 − 12.89/41.62 = {(1 - r20q[0].macs / r20v[0].macs) * 100:.2f}% from the paper's own numbers
   (ours: {(1 - r20q[1]["macs"] / r20v[1]["macs"]) * 100:.2f}%).

Regenerate with `python tools/paper_costs.py` (about 15 seconds on a 2-core CPU).'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='results/paper_costs.md', help='markdown file to write (atomically)')
    args = parser.parse_args(argv)
    results = [(row, measure(row)) for row in PAPER_ROWS]
    text = render(results)
    atomic_write_text(args.output, text)
    print(text)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
