"""``tools/timm_scripts.py``: its input check, the flags it reads from timm's scripts, its comparisons, and the
optuna-dashboard step (the run of timm's scripts themselves is recorded in ``results/timm_scripts.md``)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from helpers import ROOT, load_script

timm_scripts = load_script('timm_scripts_tool', ROOT / 'tools' / 'timm_scripts.py')


def test_a_folder_without_timms_scripts_is_one_line_and_nothing_is_written(tmp_path):
    (tmp_path / 'train.py').write_text('')
    report = tmp_path / 'report.md'
    for folder, wanted in ((tmp_path / 'nope', 'is not a folder'), (tmp_path, 'has no validate.py, benchmark.py'),
                           ('', 'is empty')):
        done = subprocess.run([sys.executable, str(ROOT / 'tools' / 'timm_scripts.py'), '--timm-scripts', str(folder),
                               '--work-dir', str(tmp_path / 'work'), '--report', str(report)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 2 and done.stderr.count('\n') == 1, done.stderr
        assert done.stderr.startswith('error: --timm-scripts') and wanted in done.stderr
    assert not report.exists() and not (tmp_path / 'work').exists()


def test_the_flags_a_script_defines_are_read_from_its_parser(tmp_path):
    old = tmp_path / 'old.py'
    old.write_text("parser.add_argument('--model', '-m')\nparser.add_argument('--model-kwargs', nargs='*')\n"
                   "# --device is mentioned here but not defined\n")
    new = tmp_path / 'new.py'
    new.write_text('group.add_argument("--device", default="cuda", type=str)\n'
                   "group.add_argument('--device-modules', default=None, type=str, nargs='+')\n")
    assert timm_scripts.script_flags(old) == {'--device': False, '--device-modules': False, '--model-kwargs': True}
    assert timm_scripts.script_flags(new) == {'--device': True, '--device-modules': True, '--model-kwargs': False}


def test_validate_results_are_compared_with_the_runs_own_log(tmp_path):
    (tmp_path / 'log.csv').write_text('epoch,top1,top5\n1,10.0,50.0\n2,12.0,62.0\n')
    ours = timm_scripts.run_metrics(tmp_path)
    assert ours == {'top1': 12.0, 'top5': 62.0}
    result = timm_scripts.timm_result('Test: ...\n--result\n{"model": "m", "top1": 12.0, "top5": 62.0}\n')
    assert timm_scripts.compare_with_run(result, ours).endswith('the same')
    assert timm_scripts.compare_with_run({'top1': 12.0, 'top5': 54.0}, ours).endswith('DIFFERENT')
    assert timm_scripts.compare_with_run(timm_scripts.timm_result('no result'), ours) == 'no --result JSON'


def test_a_failed_step_names_its_error_line(tmp_path):
    step = timm_scripts.Step('fails', [sys.executable, '-c', 'import no_such_module_here'])
    timm_scripts.run_step(step, tmp_path)
    assert step.code == 1 and step.note == "ModuleNotFoundError: No module named 'no_such_module_here'"
    assert step.tail[-1] == step.note


@pytest.mark.skipif(shutil.which('optuna-dashboard', path=str(Path(sys.executable).parent)) is None,
                    reason='optuna-dashboard is not installed')
def test_optuna_dashboard_serves_a_study_and_is_stopped(tmp_path):
    storage = f'sqlite:///{tmp_path}/study.db'
    optuna.create_study(study_name='tiny', storage=storage).optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=2)
    step = timm_scripts.dashboard_step(storage, tmp_path)
    assert step.code == 0, step.tail
    assert step.note.startswith('GET /api/studies -> 200: 1 study(ies) (tiny)')


def test_a_flag_the_script_lacks_is_named(tmp_path):
    script = tmp_path / 'benchmark.py'
    script.write_text("parser.add_argument('--model', '-m')\n")
    scripts = {'benchmark.py': script}
    cmd = ['python', '-m', 'timm_plugins.run', str(script), '--model', 'm', '--device', 'cpu', '--model-kwargs', 'a=1']
    assert timm_scripts.missing_flags(cmd, scripts) == ['--device', '--model-kwargs']
    assert timm_scripts.missing_flags(['python', 'train.py', '--device', 'cpu'], scripts) == []


def test_the_small_image_report_pairs_each_training_length_and_names_the_runs_commits():
    """``tools/small_imagefolder.py``'s table on constructed runs: one paired verdict per training length."""
    import argparse
    tool = load_script('small_imagefolder_tool', ROOT / 'tools' / 'small_imagefolder.py')

    def runs(tops: list[float], commit: str) -> list[dict[str, object]]:
        return [{'final_top1': t, 'wall_s': 10.0, 'commit': commit} for t in tops]
    rows = [{'name': 'm (sp_alpha vanilla)', 'epochs': 4,
             'runs': {'default': runs([70.0, 71.0, 72.0], 'a' * 40),
                      'augmentation off': runs([75.0, 76.5, 77.0], 'a' * 40)}},
            {'name': 'm (sp_alpha vanilla)', 'epochs': 10,
             'runs': {'default': runs([80.0, 81.0, 79.5], 'b' * 40),
                      'augmentation off': runs([80.2, 80.4, 80.0], 'b' * 40)}}]
    args = argparse.Namespace(epochs=[4, 10], seeds=[0, 1, 2], train_samples=8000, val_samples=2000)
    from spsearch.provenance import provenance
    text = tool.render(rows, args, provenance())
    verdicts = [line for line in text.splitlines() if line.endswith(' off |')]
    assert len(verdicts) == 2
    assert '| 4 |' in verdicts[0] and 'default loses off' in verdicts[0]
    assert '| 10 |' in verdicts[1] and 'default matches off' in verdicts[1]
    assert '`aaaaaaa`, `bbbbbbb`' in text
