"""The search: Optuna over per-stage SPConv alpha and G under FLOP, parameter and latency budgets.

``run_search(SearchConfig(...))`` is what ``search.py`` calls: ``config`` (options), ``budgets``
(constraints and the latency cache), ``storage`` (URLs, journal files, crash recovery),
``driver`` (the trial loop, pruning, several processes), ``reports`` and ``retrain``.
"""
from .budgets import Costs, LatencyCache, check_space_budgets, constraints
from .config import SearchConfig
from .driver import SearchRun, run_search
from .reports import best_trials, pareto_front, write_reports
from .retrain import retrain
from .storage import StorageSpec, open_storage, recover_orphans

__all__ = [
    'Costs', 'LatencyCache', 'SearchConfig', 'SearchRun', 'StorageSpec', 'best_trials', 'check_space_budgets',
    'constraints', 'open_storage', 'pareto_front', 'recover_orphans', 'retrain', 'run_search', 'write_reports',
]
