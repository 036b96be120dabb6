"""``python -m spsearch.search``: the search CLI (``spsearch.search.cli``)."""
from ..cli import run_cli
from .cli import main

raise SystemExit(run_cli(main))
