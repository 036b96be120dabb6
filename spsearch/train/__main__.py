"""``python -m spsearch.train``: the training CLI (``spsearch.train.cli``); ``accelerate launch -m spsearch.train``."""
from ..cli import run_cli
from .cli import main

raise SystemExit(run_cli(main))
