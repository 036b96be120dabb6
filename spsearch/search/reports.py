"""Reports of a study, written atomically to the output folder.

* ``trials.csv``: every trial (number, state, status, per-stage alpha and G, GMACs, params,
  latency, proxy accuracy, epochs trained, time).
* ``pareto_gmacs.csv/.png`` and ``pareto_latency.csv/.png``: the feasible, complete trials that no
  other one beats on both accuracy and cost; the plot shows every trial by number, pruned and
  over-budget ones greyed (matplotlib; the baselines and the budget marked).
* ``optuna_history.png`` and ``optuna_importances.png``: Optuna's optimization history and parameter
  importances (``optuna.visualization.matplotlib``); importances from 2 complete trials on.
* ``best.yaml``: the best feasible configuration with the retrain recipe, a ``train.py -c`` config.
* ``summary.md``: the search, its best configuration against the paper's at the same budget,
  the retrain results side by side, and provenance.

GMACs are 1e9 multiply-accumulates, the SPConv paper's "GFLOPs".
"""
from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from ..io import atomic_write, atomic_write_text, atomic_write_yaml
from ..models import format_alpha
from ..provenance import markdown_header, provenance
from .budgets import best_uniform, describe_budgets
from .record import TrialRecord
from .score import ProxyScore
from .study import OpenStudy

__all__ = ['best_trials', 'csv_text', 'feasible', 'importance_skipped', 'pareto_front', 'proxy_value', 'trial_rows',
           'write_reports']


def feasible(trial: FrozenTrial) -> bool:
    """All recorded constraints met (Optuna's rule: every value <= 0)."""
    return all(v <= 0 for v in trial.constraints.values())


def proxy_value(trial: FrozenTrial) -> float | None:
    """The trial's proxy score (the study's ``--proxy-score``): its value if complete, its last reported score if
    pruned after training; None if never trained."""
    if trial.state == TrialState.COMPLETE and trial.values:
        return float(trial.values[0])
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def trial_rows(trials: list[FrozenTrial], num_stages: int) -> list[dict[str, Any]]:
    """One flat dict per trial (the columns of ``trials.csv``): Optuna's facts, the per-stage alpha and G, and the
    scalar fields of its ``TrialRecord``."""
    rows = []
    for t in trials:
        rec = TrialRecord.of(t)
        alphas: list[Any] = rec.sp_alpha or [None] * num_stages
        groups: list[Any] = rec.sp_groups or [None] * num_stages
        row: dict[str, Any] = {'number': t.number, 'state': t.state.name}
        for i in range(num_stages):
            a = alphas[i] if i < len(alphas) else None
            row[f'alpha{i + 1}'] = '' if a is None else (a if isinstance(a, str) else format_alpha(a))
            row[f'groups{i + 1}'] = '' if a is None or a == 'vanilla' else groups[i]
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        row.update({'feasible': feasible(t) if t.constraints else '', 'proxy_score': _num(proxy_value(t), 4),
                    'duration_s': _num(duration, 2),
                    'start': t.datetime_start.isoformat(timespec='seconds') if t.datetime_start else ''})
        row.update({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.scalars().items()
                    if k != 'feasible'})  # the column above, from the constraints (studies before the attribute)
        rows.append(row)
    return rows


def _num(value: Any, digits: int) -> Any:
    return '' if value is None else round(float(value), digits)


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def _rank(t: FrozenTrial, score: ProxyScore) -> tuple[float, float, float, int]:
    """Better proxy score first; equal scores (top-1: the same count of correct validation images, so rounded
    float noise aside) to the cheaper architecture: fewer GMACs, then fewer parameters, then the earlier trial."""
    record = TrialRecord.of(t)
    return (-score.goodness(round(t.values[0], 6)), record.gmacs if record.gmacs is not None else math.inf,
            record.mparams if record.mparams is not None else math.inf, t.number)


def best_trials(trials: list[FrozenTrial], k: int | None = None, *, score: ProxyScore) -> list[FrozenTrial]:
    """Feasible complete trials, best first (``_rank``: ``score``, ties to the cheaper), one per architecture.

    The first is also on the Pareto front of the score against GMACs: nothing scores better, and of the
    equal scores it is the cheapest.
    """
    seen, out = set(), []
    ranked = sorted((t for t in trials if t.state == TrialState.COMPLETE and feasible(t) and t.values),
                    key=lambda t: _rank(t, score))
    for t in ranked:
        key = tuple(sorted(t.params.items()))
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
    return out if k is None else out[:k]


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Points ``(cost, goodness, tag)`` that no other point beats on both (lower cost, higher goodness: a score
    oriented by ``ProxyScore.goodness``)."""
    front: list[tuple[float, float, Any]] = []
    for cost, acc, tag in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc, tag))
    return front


def _pareto(opened: OpenStudy, trials: list[FrozenTrial], metric: str, label: str) -> dict[str, Any] | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and feasible(t) and t.values
            and getattr(TrialRecord.of(t), metric) is not None]
    if not done:
        return None
    score = opened.cfg.score
    points = [(float(getattr(TrialRecord.of(t), metric)), float(t.values[0]), t) for t in done]
    front = [(c, float(t.values[0]), t) for c, _, t in pareto_front([(c, score.goodness(v), t) for c, v, t in points])]
    out = opened.output
    rows = [{'number': t.number, metric: round(c, 4), score.column: round(a, score.digits),
             'config': opened.space.format(opened.space.from_optuna_params(t.params))} for c, a, t in front]
    atomic_write_text(out / f'pareto_{metric.split("_")[0]}.csv', csv_text(rows))
    png = out / f'pareto_{metric.split("_")[0]}.png'
    numbers = {t.number for t in done}
    others = [t for t in trials if t.number not in numbers and t.state in (TrialState.COMPLETE, TrialState.PRUNED)
              and getattr(TrialRecord.of(t), metric) is not None]
    _plot(png, points, front, others, metric, label, score.label, score.direction == 'minimize',
          opened.cfg.budgets.get(metric), opened.study.study_name)
    return {'csv': out / f'pareto_{metric.split("_")[0]}.csv', 'png': png, 'front': rows}


def _plot(path: Path, points: list[tuple[float, float, Any]], front: list[tuple[float, float, Any]],
          others: list[FrozenTrial], metric: str, label: str, score_label: str, minimize: bool,
          budget: float | None, title: str) -> None:
    """The score against ``metric`` for every finished trial, each labelled with its number: the feasible complete
    ones and their Pareto front, the baselines starred; greyed, the pruned ones at their last reported score and,
    in a row past the worst score, those never scored (over a budget, or duplicates of an untrained one).

    Hand-drawn rather than ``optuna.visualization.matplotlib.plot_pareto_front``, which reads only COMPLETE
    trials: pruned and over-budget trials (PRUNED in Optuna) could not be shown greyed, nor trials numbered.
    """
    fig, ax = _axes()
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, color='0.35', label='feasible trials')
    pruned = [(float(getattr(TrialRecord.of(t), metric)), proxy_value(t), t) for t in others]
    scored = [(c, float(v), t) for c, v, t in pruned if v is not None]
    ys = [p[1] for p in [*points, *scored]]
    margin = 0.08 * (max(ys) - min(ys) or 1.0)
    worst = max(ys) + margin if minimize else min(ys) - margin  # the row of the trials without a score
    unscored = [(c, worst, t) for c, v, t in pruned if v is None]
    if scored:
        ax.scatter([p[0] for p in scored], [p[1] for p in scored], s=14, color='0.75',
                   label='pruned (last reported score)')
    if unscored:
        ax.scatter([p[0] for p in unscored], [p[1] for p in unscored], marker='x', s=16, color='0.7',
                   label='over budget / not trained (no score)')
    ax.plot([p[0] for p in front], [p[1] for p in front], '-o', color='tab:red', ms=5, label='Pareto front')
    for kind, color, text in (('paper', 'tab:blue', 'paper: alpha 1/2, G 2'),
                              ('uniform', 'tab:green', 'best uniform within the budget')):
        marked = [p for p in points if TrialRecord.of(p[2]).baseline == kind]
        if marked:
            ax.scatter([p[0] for p in marked], [p[1] for p in marked], marker='*', s=160, color=color, zorder=5,
                       label=text)
    for x, y, t in [*points, *scored, *unscored]:
        ax.annotate(str(t.number), (x, y), xytext=(3, 3), textcoords='offset points', fontsize=6, color='0.3')
    if budget is not None:
        ax.axvline(budget, color='k', ls='--', lw=1, label=f'budget {budget:g}')
    _save(fig, ax, path, label, score_label, title)


def _axes() -> tuple[Any, Any]:
    """A figure and its axes for a report plot (matplotlib's file-only backend)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(6.4, 4.4), dpi=120)


def _save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend, then write the PNG atomically and free the figure."""
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    plt.close(fig)


def write_reports(opened: OpenStudy, search_wall_s: float | None = None, total_wall_s: float | None = None,
                  *, plots: bool = True) -> dict[str, Any]:
    """Write every report of an open study; return what was written (paths and the best trials).

    Args:
        plots: Draw the plots (and the Pareto CSVs); False writes the text reports alone, leaving the files of the
            plots as they are and ``summary.md`` without them (what an interrupted search writes when drawing
            failed, so that its ``summary.md`` is never missing).
    """
    trials = opened.trials()
    out, space, cfg = opened.output, opened.space, opened.cfg
    written: dict[str, Any] = {}
    atomic_write_text(out / 'trials.csv', csv_text(trial_rows(trials, space.num_stages)))
    written['trials'] = out / 'trials.csv'
    if plots:
        written['pareto_gmacs'] = _pareto(opened, trials, 'gmacs', 'GMACs (1e9 multiply-accumulates) at '
                                          + 'x'.join(map(str, space.input_size[1:])))
        proto = opened.protocol or {}
        written['pareto_latency'] = _pareto(
            opened, trials, 'latency_ms',
            f'latency (ms, median, batch {proto.get("batch_size", cfg.latency_batch_size)}, '
            f'{proto.get("device", cfg.latency_device)})')
        written['history'] = _optuna_history(opened, trials)
        written['importances'] = _optuna_importances(opened, trials)
    best = best_trials(trials, 1, score=cfg.score)
    if best:
        t = best[0]
        arch = space.from_optuna_params(t.params)
        recipe = cfg.retrain_train_config(
            {k: list(v) for k, v in space.model_kwargs(arch).items()},
            str(out / 'retrain' / f'trial-{t.number}' / f'seed-{cfg.seed}'),
            experiment=f'search {opened.study.study_name} trial-{t.number} seed {cfg.seed}')
        atomic_write_yaml(out / 'best.yaml', recipe.to_dict())
        written['best'] = out / 'best.yaml'
    summary = _summary(opened, trials, written, search_wall_s, total_wall_s)
    atomic_write_text(out / 'summary.md', summary)
    written['dashboard_note'] = _dashboard_note(opened, summary)
    written['summary'] = out / 'summary.md'
    return written


def _dashboard_note(opened: OpenStudy, summary: str) -> bool:
    """``summary.md`` as the study's optuna-dashboard note (``optuna_dashboard.save_note``, kept in the storage's
    study system attributes, so the dashboard shows the verdicts next to its own plots wherever the storage is
    read); rewritten only when the text changed. False when optuna-dashboard is not installed (an optional extra)
    or the study was opened to be read only (``report``, ``verify``: a journal is never appended to by them)."""
    if not opened.writable:
        return False
    try:
        from optuna_dashboard import get_note, save_note
    except ImportError:
        return False
    if get_note(opened.study) != summary:
        save_note(opened.study, summary)
    return True


def _optuna_history(opened: OpenStudy, trials: list[FrozenTrial]) -> Path | None:
    """Optuna's own optimization-history plot (``optuna.visualization.matplotlib``) as ``optuna_history.png``;
    None for a multi-objective study or before a trial completed."""
    if opened.cfg.multi_objective or not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    from optuna.visualization.matplotlib import plot_optimization_history
    return _save_optuna(opened.output / 'optuna_history.png', plot_optimization_history, opened.study,
                        target_name=opened.cfg.score.column)


IMPORTANCE_MIN_TRIALS = 2
"""Complete trials Optuna's parameter importances need at least (with parameters that differ between them)."""


def importance_skipped(trials: list[FrozenTrial]) -> str | None:
    """Why ``optuna_importances.png`` is not drawn for ``trials`` (one clause), or None when it is."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    if len(complete) < IMPORTANCE_MIN_TRIALS:
        return f'{len(complete)} complete trial(s); parameter importances need {IMPORTANCE_MIN_TRIALS}'
    if not any(len({str(t.params.get(name)) for t in complete}) > 1 for name in complete[0].params):
        return 'every complete trial has the same parameters; there is nothing to attribute'
    return None


def _optuna_importances(opened: OpenStudy, trials: list[FrozenTrial]) -> Path | None:
    """Optuna's parameter-importance plot of the proxy score over the per-stage choices as
    ``optuna_importances.png``; None when ``importance_skipped`` gives a reason.

    The evaluator is Optuna's default, PED-ANOVA (deterministic, no scikit-learn); it takes lower as better, so the
    target is the negated ``ProxyScore.goodness``.
    """
    if importance_skipped(trials) is not None:
        return None
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization.matplotlib import plot_param_importances
    score = opened.cfg.score
    return _save_optuna(opened.output / 'optuna_importances.png', plot_param_importances, opened.study,
                        evaluator=PedAnovaImportanceEvaluator(), target=lambda t: -score.goodness(t.values[0]),
                        target_name=score.column)


def _save_optuna(path: Path, plot: Any, study: Any, **kwargs: Any) -> Path:
    """Draw one of ``optuna.visualization.matplotlib``'s plots of ``study`` and write it atomically as ``path``."""
    import warnings

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Optuna marks its matplotlib backend experimental
        ax = plot(study, **kwargs)
    fig: Any = ax.figure  # a Figure (matplotlib types it Figure | SubFigure)
    fig.set_size_inches(6.4, 4.4)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=120))
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    return '-' if value is None or value == '' else f'{float(value):.{digits}f}'


def _summary(opened: OpenStudy, trials: list[FrozenTrial], written: dict[str, Any], wall: float | None,
             total: float | None) -> str:
    cfg, space = opened.cfg, opened.space
    data = cfg.proxy_train_config().data
    prov = provenance()
    lines = [markdown_header(f'Search {opened.study.study_name}', prov), '']
    (lo, _), (hi, _) = space.bounds('macs')
    lines += [
        '"GMACs" are 1e9 multiply-accumulates, the SPConv paper\'s "GFLOPs". Costs are counted at '
        f'{"x".join(map(str, space.input_size))}; proxy scores ({cfg.score.label} after the last epoch) come from '
        f'{cfg.proxy_epochs} epoch(s) on '
        f'{data.train_samples or "all"} {data.dataset} images at {cfg.proxy_img_size}px, scored on '
        f'{data.val_samples or data.holdout} training images held out (seed 0), never the test split; precise BN '
        f'on {cfg.train.precise_bn_batches} batches before each evaluation.', '',
        _map_sizes(space, cfg.proxy_img_size), '',
        f'- Model: `{space.model}`, {space.num_stages} stages, {space.size:,} configurations, '
        f'{lo / 1e9:.3f}-{hi / 1e9:.3f} GMACs',
        f'- Budgets: {describe_budgets(cfg.budgets)}',
        f'- Study: `{opened.study.study_name}` in {opened.spec.display()} (`{opened.spec.cli_hint()}`)',
    ]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    over = sum(1 for t in trials if TrialRecord.of(t).status.startswith('over budget'))
    lines.append(f'- Trials: {len(trials)} ({", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))}); '
                 f'{over} over budget, ended before training')
    n_finished = sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    if n_finished < cfg.n_trials:
        lines.append(f'- **The study has {n_finished} of the {cfg.n_trials} finished trials asked for** (cut by '
                     f'--timeout, or still running): fewer candidates were compared, so its best is a weaker answer; '
                     f'`--resume` completes it')
    if wall is not None:
        lines.append(f'- Search wall time (this run): {wall / 60:.1f} min')
    if total is not None:
        lines.append(f'- Search and retrain wall time (this run, after start-up): {total / 60:.1f} min')
    lines.append('')
    best = best_trials(trials, score=cfg.score)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    def baseline(kind: str) -> FrozenTrial | None:
        return next((t for t in finished if TrialRecord.of(t).baseline == kind), None)

    lines += ['## The search\'s best against the baselines, proxy scores', '',
              'Proxy scores rank; they do not verify (one short training, one seed): the verification below does.',
              '', f'| | trial | configuration | GMACs | M params | latency (ms) | {cfg.score.label} | feasible |',
              '|---|---|---|---|---|---|---|---|']
    same = best_uniform(space, cfg.budgets) == space.paper_arch()
    picks: list[tuple[str, FrozenTrial | None]] = [
        ('best', best[0] if best else None), ('paper (alpha 1/2, G 2)', baseline('paper')),
        ('best uniform within the budget' + (" (= the paper's)" if same else ''),
         baseline('paper' if same else 'uniform'))]
    for name, pick in picks:
        if pick is None:
            lines.append(f'| {name} | - | none | | | | | |')
            continue
        rec = TrialRecord.of(pick)
        lines.append(f'| {name} | {pick.number} | {space.format(space.from_optuna_params(pick.params))} | '
                     f'{_fmt(rec.gmacs, 3)} | {_fmt(rec.mparams)} | {_fmt(rec.latency_ms, 1)} | '
                     f'{cfg.score.format(proxy_value(pick))} | '
                     f'{"yes" if feasible(pick) else "no"} |')
    lines.append('')
    if written.get('history'):
        lines += [f'![optimization history]({written["history"].name})', '',
                  'Optuna\'s optimization history of the proxy score (`optuna.visualization`): every complete '
                  'trial and the best so far.', '']
    if written.get('importances'):
        lines += [f'![parameter importances]({written["importances"].name})', '',
                  'Optuna\'s parameter importances (PED-ANOVA) of the proxy score over the per-stage choices, '
                  'from the complete trials: which stages\' settings the score depended on in this study.', '']
    else:
        lines += [f'No parameter-importance plot: {importance_skipped(trials)}.', '']
    for key in ('pareto_gmacs', 'pareto_latency'):
        info = written.get(key)
        if info:
            lines += [f'![{key}]({info["png"].name})', '', f'Pareto front: `{info["csv"].name}` '
                      f'({len(info["front"])} configurations).', '']
    lines += _verification(opened, written)
    if 'best' in written:
        best_yaml = shlex.quote(str(written['best']))
        lines += [f'Retrain the best configuration yourself: `python train.py -c {best_yaml} --output runs/train/NAME` '
                  f'(its own output folder is the search\'s retrain of it).', '']
    return '\n'.join(lines)


def _map_sizes(space: Any, proxy_px: int) -> str:
    """One sentence: each stage's map size at the proxy resolution and at the cost resolution."""
    def text(sizes: list[tuple[int, int]]) -> str:
        return ', '.join(f'{h}x{w}' for h, w in sizes)
    proxy, target = space.stage_map_sizes(proxy_px), space.stage_map_sizes(space.input_size[1])
    note = (' Stages at 2x2 or less see their 3x3 convs act almost as 1x1 there, so the proxy ranks those stages\' '
            'choices by another function than the target resolution would.'
            if proxy != target and any(h <= 2 for h, _ in proxy) else '')
    return (f'Stage maps (the SP sites\' outputs) are {text(proxy)} at the proxy\'s {proxy_px}px and '
            f'{text(target)} at the costs\' {space.input_size[1]}px.{note}')


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []


def _table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    return ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns),
            *('| ' + ' | '.join(r.get(c, '') for c in columns) + ' |' for r in rows), '']


def _verification(opened: OpenStudy, written: dict[str, Any]) -> list[str]:
    """The verification section: per candidate mean +- CI, the comparisons and their verdicts, the plot."""
    cfg, out = opened.cfg, opened.output
    per, comparisons = _read_csv(out / 'verify.csv'), _read_csv(out / 'comparisons.csv')
    if not per:
        return []
    seeds = ', '.join(str(cfg.seed + i) for i in range(cfg.retrain_seeds))
    lines = ['## Verification: retrained on paired seeds, judged on the test split', '',
             f'Each architecture retrained {cfg.retrain_seeds} time(s) with the same seeds ({seeds}), '
             f'{cfg.retrain_epochs} epoch(s) on {cfg.retrain_train_samples or "all"} training images, top-1 of the '
             f'last epoch on {cfg.retrain_val_samples or "all"} images of the test split (which no selection saw). '
             f'Mean and 95 % Student-t interval over seeds (`verify.csv`; every run in `retrain.csv`, under '
             f'`retrain/`).', '']
    lines += _table(per, ['name', 'role', 'config', 'gmacs', 'mparams', 'seeds', 'mean_top1', 'ci95_low', 'ci95_high',
                          'top1_per_seed'])
    if comparisons:
        lines += ['The best finalist against each baseline, paired by seed: mean difference of top-1 (points) with '
                  'its 95 % interval, paired t-test and Wilcoxon p, t p Holm-adjusted over these comparisons. '
                  '"beats" only when the interval lies above 0, "loses" below, "matches" otherwise; `macs_ratio` is '
                  'the finalist\'s GMACs over the baseline\'s (<= 1: at equal or lower cost).', '']
        lines += _table(comparisons, ['finalist', 'baseline', 'macs_ratio', 'seeds', 'difference', 'ci95_low',
                                      'ci95_high', 'p_t', 'p_wilcoxon', 'p_holm', 'verdict'])
    if cfg.retrain_seeds < 2:
        lines += ['One seed per architecture: no interval, every verdict "matches". Use --retrain-seeds 3 or more.',
                  '']
    png = out / 'verify.png'
    _plot_verification(png, per, opened.study.study_name)
    written['verify_png'] = png
    lines += [f'![verification]({png.name})', '']
    return lines


def _plot_verification(path: Path, per: list[dict[str, str]], title: str) -> None:
    fig, ax = _axes()
    colors = {'finalist': 'tab:red', 'paper': 'tab:blue', 'uniform': 'tab:green', 'random': '0.4'}
    for row in per:
        x, mean = float(row['gmacs']), float(row['mean_top1'])
        low, high = float(row['ci95_low']), float(row['ci95_high'])
        yerr = None if math.isnan(low) else [[mean - low], [high - mean]]
        ax.errorbar([x], [mean], yerr=yerr, fmt='o', capsize=4, color=colors.get(row['role'], 'k'),
                    label=f'{row["name"]} ({row["role"]})')
    _save(fig, ax, path, 'GMACs (1e9 multiply-accumulates)', 'test top-1 (%), mean and 95 % CI over seeds', title)
