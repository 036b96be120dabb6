"""The architecture holds: the library never imports the layer above it, its first-level packages import
each other without cycles, trial attributes go through ``TrialRecord``, retraining runs the library's entry
point, and every option is one dataclass field."""
from __future__ import annotations

import ast
from pathlib import Path

from spsearch.options import flat_fields
from spsearch.search import SearchConfig
from spsearch.search.retraining import launch_command
from spsearch.train import TrainConfig

from helpers import ROOT

PACKAGE = ROOT / 'spsearch'


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    package = package.removesuffix('.__init__')
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                prefix = '.'.join(base)
                out += [f'{prefix}.{node.module}'] if node.module else [f'{prefix}.{a.name}' for a in node.names]
            elif node.module == 'spsearch':  # from spsearch import search
                out += [f'spsearch.{a.name}' for a in node.names]
            elif node.module:
                out.append(node.module)
    return out


def _unit(module: str) -> str:
    """``spsearch.search.study`` -> ``search``; ``spsearch.timing`` -> ``timing``."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_the_library_never_imports_timm_plugins():
    for path in PACKAGE.rglob('*.py'):
        assert not [m for m in _imports(path) if m.split('.')[0] == 'timm_plugins'], path
        names = [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)]
        assert not [n for n in names if n == 'timm_plugins' or str(n).startswith('timm_plugins.')], path  # importlib


def test_first_level_packages_import_each_other_without_cycles():
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob('*.py'):
        src = _unit('.'.join(path.relative_to(ROOT).with_suffix('').parts))
        if not src or src == '__init__':
            continue
        for target in _imports(path):
            if target.startswith('spsearch.') and _unit(target) not in (src, ''):
                edges.setdefault(src, set()).add(_unit(target))
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, f'import cycle: {" -> ".join(trail + [node, nxt])}'
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert edges['ops'] <= {'timing'} and 'cost' not in edges['ops']


def test_trial_attributes_are_read_and_written_only_through_the_trial_record():
    """Outside ``record.py`` no code touches a trial's user attributes (a study's own ones live in ``study.py``)."""
    for path in PACKAGE.rglob('*.py'):
        if path.name == 'record.py':
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ('user_attrs', 'set_user_attr', 'set_trial_user_attr'):
                receiver = ast.unparse(node.value)
                assert path.name == 'study.py' and 'study' in receiver, (path, node.lineno, ast.unparse(node))


def test_retraining_launches_the_library_entry_point(tmp_path):
    cmd = launch_command(tmp_path / 'x.yaml', 1, resume=False)
    assert cmd[cmd.index('--module') + 1] == 'spsearch.train'
    assert not any(part.endswith('train.py') for part in cmd)
    assert 'train.py' not in (PACKAGE / 'search' / 'retraining.py').read_text()


def test_every_option_has_one_field_and_unique_flat_names():
    """``flat_fields`` raises on a name used twice in a tree of configs; the search offers the recipe's options."""
    train_names = {f.name for f in flat_fields(TrainConfig)}
    search_names = {f.name for f in flat_fields(SearchConfig)}
    assert {'lr', 'opt', 'batch_size', 'dataset', 'weight_decay'} <= train_names & search_names
    assert 'epochs' not in search_names and 'model_kwargs' not in search_names  # set per proxy/retrain run
