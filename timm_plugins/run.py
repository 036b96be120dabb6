"""``python -m timm_plugins.run SCRIPT [ARGS ...]``: one of timm's own scripts, with the SP models registered.

timm's ``train.py`` can import a module itself (``--device-modules timm_plugins``); ``validate.py``,
``benchmark.py``, ``inference.py`` and the others cannot, and timm finds a model only once the module
registering it was imported. This imports ``timm_plugins`` and then runs the script as ``python SCRIPT
ARGS`` would (``runpy``: ``__name__ == '__main__'``, ``sys.argv``, the script's folder first on ``sys.path``)::

    python -m timm_plugins.run pytorch-image-models/validate.py --model sp_resnet20 --data-dir DATA ...
    python -m timm_plugins.run pytorch-image-models/benchmark.py --model sp_resnet50 --bench inference
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import timm_plugins  # noqa: F401  (registers the SP models with timm)

__all__ = ['main']

USAGE = 'usage: python -m timm_plugins.run SCRIPT [ARGS ...]  (SCRIPT: timm\'s validate.py, benchmark.py, ...)'


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]`` (a timm script's path) with ``argv[1:]`` as its arguments, the SP models registered.

    Returns:
        The script's exit code (0 when it returns normally); 2 with one ``error:`` line when no script is given
        or the path is not a file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (['-h'], ['--help']):
        print(USAGE)
        return 0
    if not argv:
        print(f'error: no script given; {USAGE}', file=sys.stderr)
        return 2
    script = Path(argv[0])
    if not script.is_file():
        print(f'error: {script} is not a file: give the path of one of timm\'s scripts (validate.py, benchmark.py, '
              f'... of a pytorch-image-models checkout)', file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name='__main__')
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
