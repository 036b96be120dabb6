"""The objective of one trial: cost it, check its budgets, time it, proxy-train it.

1. sample an architecture (``stage<i>`` categoricals; the paper's alpha 1/2, G 2 is the first,
   enqueued trial of every study);
2. look up its exact GMACs and parameters; over a budget -> record the constraints
   (``trial.set_constraint``), end the trial as PRUNED, **no training**;
3. measure its latency on the target device (cached); over the latency budget -> the same;
4. an architecture trained before reuses that result; otherwise proxy-train it on every process
   (``ProcessGroup.train``), reporting the proxy score (``--proxy-score``: validation loss by default,
   or top-1) after each epoch to the pruner; the value is the last epoch's score (``score.py``).

Everything the trial learns is stored in its ``TrialRecord``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..space import Architecture
from ..train import TrainConfig, TrainResult
from .budgets import Costs, LatencyCache, constraints, measure_config_latency, violations
from .processes import ProcessGroup
from .record import TrialRecord
from .score import score_of
from .storage import requeue, this_worker
from .study import PRUNE_FROM_EPOCH, OpenStudy

__all__ = ['FINISHED', 'Cancelled', 'Objective']

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""States of a trial that counts towards ``n_trials``."""


class Cancelled(Exception):
    """A trial started after the study already had enough trials in flight (parallel workers raced)."""


class Objective:
    """``study.optimize``'s objective for one open study.

    Args:
        opened: The open study (config, space, latency protocol and cache).
        group: The processes that train each candidate.
        log: Where progress lines go.
    """

    def __init__(self, opened: OpenStudy, group: ProcessGroup, log: Callable[[str], None]) -> None:
        self.opened = opened
        self.cfg = opened.cfg
        self.space = opened.space
        self.study = opened.study
        self.group = group
        self.log = log

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            # Optuna fails the trial; queue its parameters again so that --resume runs it, as after a kill
            TrialRecord.of(trial).update(trial, status='interrupted (Ctrl-C); re-queued')
            requeue(self.study, trial)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | tuple[float, float]:
        cfg, space = self.cfg, self.space
        record = TrialRecord.of(trial)
        record.update(trial, worker=this_worker())
        if not record.baseline and record.retry_of is None:
            self._check_slot(trial, record)
        t0 = time.perf_counter()
        arch = space.suggest(trial)
        cost = space.cost(arch)
        costs = Costs(cost.macs / 1e9, cost.params / 1e6)
        kwargs = space.model_kwargs(arch)
        record.update(trial, sp_alpha=list(kwargs['sp_alpha']), sp_groups=list(kwargs['sp_groups']),
                      gmacs=costs.gmacs, mparams=costs.mparams)
        head = (f'trial {trial.number} [{self._finished() + 1}/{cfg.n_trials}] {space.format(arch)}'
                f'{f" ({record.baseline} baseline)" if record.baseline else ""} | {costs.gmacs:.3f} GMACs '
                f'{costs.mparams:.2f}M')
        over = self._record_constraints(trial, costs)
        if over:
            return self._over_budget(trial, record, head, over)
        if self.opened.protocol is not None:
            latency = self._latency(arch)
            costs = Costs(costs.gmacs, costs.mparams, latency['median_ms'])
            record.update(trial, latency_ms=latency['median_ms'], latency=latency)
            head += f' {latency["median_ms"]:.1f} ms'
            over = self._record_constraints(trial, costs)
            if over:
                return self._over_budget(trial, record, head, over)
        duplicate = self._trained_before(trial)
        if duplicate is not None:
            return self._reuse(trial, record, duplicate, head)
        self.log(head + ' | training')
        result = self._train(trial, record, cfg.proxy_train_config(dict(kwargs)))
        record.update(trial, epochs=result.epochs_run, train_s=round(result.wall_s, 2),
                      images_per_s=round(result.images_per_s, 1), peak_mem_mb=round(result.peak_mem_mb, 1),
                      processes=self.group.accelerator.num_processes, final_top1=result.final_top1,
                      best_top1=result.best_top1, final_val_loss=result.final_val_loss,
                      trial_s=round(time.perf_counter() - t0, 2))
        if result.stopped_by == 'nonfinite':
            record.update(trial, status='diverged: the proxy loss became non-finite')
            self.log(f'  trial {trial.number}: diverged (non-finite loss) after {result.epochs_run} epoch(s)')
            raise optuna.TrialPruned('non-finite loss')
        if result.stopped_by == 'callback':
            record.update(trial, status=f'pruned after epoch {result.epochs_run}')
            self.log(f'  trial {trial.number}: pruned after epoch {result.epochs_run} '
                     f'(top1 {result.final_top1:.2f}, loss {result.final_val_loss:.4f}, {result.wall_s:.1f} s)')
            raise optuna.TrialPruned(f'pruned after epoch {result.epochs_run}')
        record.update(trial, status='complete')
        value = score_of(result.history[-1], cfg.score)  # the last epoch's, as reported to the pruner
        self.log(f'  trial {trial.number}: {cfg.score.column} {cfg.score.format(value)} (top1 {result.final_top1:.2f}) '
                 f'after {result.epochs_run} epoch(s) ({result.wall_s:.1f} s)')
        if cfg.multi_objective:
            second = costs.gmacs if cfg.mo_metric == 'gmacs' else costs.latency_ms
            assert second is not None
            return value, second
        return value

    def _finished(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False) if t.state in FINISHED)

    def _check_slot(self, trial: optuna.Trial, record: TrialRecord) -> None:
        """Cancel a freshly sampled trial that would exceed ``n_trials`` (parallel workers raced for the last slot)."""
        trials = self.study.get_trials(deepcopy=False)
        others = [t for t in trials if t.number != trial.number]
        finished = sum(1 for t in others if t.state in FINISHED)
        waiting = sum(1 for t in others if t.state == TrialState.WAITING)
        ahead = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number)
        if finished + ahead + waiting + 1 > self.cfg.n_trials:
            record.update(trial, status='cancelled: the study already had enough trials in flight')
            self.log(f'trial {trial.number}: cancelled before any work: the study already has {finished} finished '
                     f'and {ahead + waiting} queued or running trial(s) of {self.cfg.n_trials} (another worker took '
                     'the slot)')
            raise Cancelled

    def _record_constraints(self, trial: optuna.Trial, costs: Costs) -> list[str]:
        have = trial.constraints
        for key, value in constraints(costs, self.cfg.budgets).items():
            if key not in have:
                trial.set_constraint(key, value)
        over = violations(costs, self.cfg.budgets)
        # a plain attribute too: optuna-dashboard shows over-budget and pruned trials alike as PRUNED and does not
        # read Optuna's constraint storage; `feasible` is visible there and in `optuna trials`
        TrialRecord.of(trial).update(trial, feasible=not over)
        return over

    def _over_budget(self, trial: optuna.Trial, record: TrialRecord, head: str, over: list[str]) -> float:
        record.update(trial, status='over budget: ' + '; '.join(over))
        self.log(f'{head} | over budget ({"; ".join(over)}): not trained')
        raise optuna.TrialPruned('over budget')

    def _latency(self, arch: Architecture) -> dict[str, Any]:
        protocol, cache = self.opened.protocol, self.opened.latency_cache
        assert protocol is not None and cache is not None
        key = LatencyCache.key(self.space, arch, protocol)
        found = cache.get(key)
        if found is None:
            found = measure_config_latency(self.space, arch, protocol)
            if found['stable']:  # an unstable value is used for this trial only, and measured again next time
                cache.put(key, found)
            else:
                self.log(f'  latency of {self.space.format(arch)} unstable after {found["attempts"]} attempts '
                         f'(quartiles {found["p25_ms"]:.1f}-{found["p75_ms"]:.1f} ms, load {found["load_1min"]}): '
                         f'another job is using this machine')
        return found

    def _trained_before(self, trial: optuna.Trial) -> FrozenTrial | None:
        for other in self.study.get_trials(deepcopy=False, states=FINISHED):
            if other.number != trial.number and other.params == trial.params and TrialRecord.of(other).trained:
                return other
        return None

    def _reuse(self, trial: optuna.Trial, record: TrialRecord, other: FrozenTrial,
               head: str) -> float | tuple[float, float]:
        """An architecture trained before gets its earlier result instead of a second training."""
        earlier = TrialRecord.of(other)
        record.update(trial, duplicate_of=other.number, epochs=earlier.epochs, final_top1=earlier.final_top1,
                      best_top1=earlier.best_top1, final_val_loss=earlier.final_val_loss)
        if other.state == TrialState.PRUNED:
            record.update(trial, status=f'duplicate of pruned trial {other.number}')
            self.log(f'{head} | same as pruned trial {other.number}: not trained')
            raise optuna.TrialPruned('duplicate of a pruned trial')
        record.update(trial, status=f'duplicate of trial {other.number}')
        self.log(f'{head} | same as trial {other.number}: its result reused')
        return other.values[0] if not self.cfg.multi_objective else (other.values[0], other.values[1])

    def _train(self, trial: optuna.Trial, record: TrialRecord, train_cfg: TrainConfig) -> TrainResult:
        prune_allowed = not self.cfg.multi_objective and not record.baseline
        failure: list[BaseException] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            try:
                self.log(f'  trial {trial.number} epoch {epoch}/{train_cfg.epochs}: top1 {metrics["top1"]:.2f} '
                         f'val_loss {metrics["val_loss"]:.4f} train_loss {metrics["train_loss"]:.3f} '
                         f'{metrics.get("images_per_s", 0):.0f} img/s')
                if self.cfg.multi_objective:
                    return False
                trial.report(score_of(metrics, self.cfg.score), epoch)
                # asked even for the baseline and after the last epoch: successive halving records its rungs
                # there, which the others are ranked against; but a candidate that trained every epoch is
                # complete, whatever the pruner thinks of its last score
                prune = trial.should_prune()
                return prune_allowed and prune and PRUNE_FROM_EPOCH <= epoch < train_cfg.epochs
            except BaseException as e:  # stop every process together, then re-raise below
                failure.append(e)
                return True

        result = self.group.train(train_cfg, trial.number, on_epoch)
        if failure:
            raise failure[0]
        return result
