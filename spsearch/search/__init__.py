"""The search: Optuna over per-stage SPConv alpha and G under FLOP, parameter and latency budgets.

Entry points (``run``): ``search(cfg)`` (what ``search.py`` runs), ``retrain(cfg)`` and ``report(cfg)``
on an existing study. Modules, in the order a search uses them: ``config`` (``SearchConfig``),
``study`` (open and validate a study: ``OpenStudy``), ``budgets`` (constraints, latency protocol
and bounds), ``objective`` (one trial), ``processes`` (the hand-off under ``accelerate launch``),
``record`` (``TrialRecord``: what is stored with each trial), ``storage`` (URLs, journal files,
crash recovery), ``reports`` and ``retraining``.
"""
from .budgets import Costs, LatencyCache, check_space_budgets, constraints
from .config import SearchConfig
from .record import TrialRecord
from .reports import best_trials, pareto_front, write_reports
from .retraining import retrain_winners
from .run import report, retrain, search
from .storage import StorageSpec, open_storage, recover_orphans
from .study import OpenStudy, open_existing, open_search

__all__ = [
    'Costs', 'LatencyCache', 'OpenStudy', 'SearchConfig', 'StorageSpec', 'TrialRecord', 'best_trials',
    'check_space_budgets', 'constraints', 'open_existing', 'open_search', 'open_storage', 'pareto_front',
    'recover_orphans', 'report', 'retrain', 'retrain_winners', 'search', 'write_reports',
]
