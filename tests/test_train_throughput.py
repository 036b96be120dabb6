"""benchmarks/train_throughput.py: the ImageFolder export, timm log parsing, epoch timing, summaries, bad input,
our rows end to end (in this process), and all three rows in fresh processes where timm's train.py is available."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spsearch.cli import run_cli
from spsearch.errors import DataError

from helpers import ROOT, load_script

tt = load_script('train_throughput', ROOT / 'benchmarks' / 'train_throughput.py')


def _timm_train_py() -> Path | None:
    for candidate in (os.environ.get(tt.TIMM_ENV), ROOT / 'runs' / 'timm_train' / 'train.py'):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    try:
        return tt.export_image_folder(tmp_path_factory.mktemp('export') / 'fm', train_samples=48, val_samples=20,
                                      seed=3)
    except DataError as e:
        pytest.skip(f'Fashion-MNIST not available: {e}')


def test_export_is_the_memory_rows_subset_and_cached(image_folder):
    from PIL import Image

    from spsearch.data import DataConfig, find_fashion_mnist
    from spsearch.data.datasets import load_fashion_mnist, subset_splits

    train, val = subset_splits(DataConfig('fashion-mnist', train_samples=48, val_samples=20, seed=3),
                               *load_fashion_mnist(find_fashion_mnist()), 'fashion-mnist')
    for split_name, split in (('train', train), ('validation', val)):
        present = sorted({tt.FASHION_CLASS_DIRS[label] for label in split.labels.tolist()})
        assert sorted(p.name for p in (image_folder / split_name).iterdir()) == present
        files = sorted((image_folder / split_name).glob('*/*.png'), key=lambda p: p.name)
        assert len(files) == len(split)
        for i, path in enumerate(files):  # named by position in the subset
            assert path.name == f'{i:05d}.png'
            assert path.parent.name == tt.FASHION_CLASS_DIRS[int(split.labels[i])]
            with Image.open(path) as im:
                assert im.mode == 'L' and im.size == (28, 28)
                np.testing.assert_array_equal(np.asarray(im), split.images[i, 0].numpy())
    stamp = (image_folder / 'export.json').stat().st_mtime_ns
    assert tt.export_image_folder(image_folder, train_samples=48, val_samples=20, seed=3) == image_folder
    assert (image_folder / 'export.json').stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not list(image_folder.parent.glob('.*partial'))


TIMM_LOG = '\n'.join([
    'Training with a single process on 1 device (cpu).',
    'Train: 0 [   0/3 (  0%)]  Loss: 2.31 (2.31)  Time: 2.000s,   64.00/s  (2.000s,   64.00/s)  LR: 1.000e-01  '
    'Data: 0.500 (0.500)',
    'Train: 0 [   1/3 ( 50%)]  Loss: 2.20 (2.25)  Time: 1.000s,  128.00/s  (1.500s,   85.33/s)  LR: 9.000e-02  '
    'Data: 0.100 (0.300)',
    'Train: 0 [   2/3 (100%)]  Loss: 2.10 (2.20)  Time: 1.000s,  128.00/s  (1.333s,   96.02/s)  LR: 8.000e-02  '
    'Data: 0.000 (0.200)',
    'Test: [   0/1]  Time: 0.300 (0.300)  Loss:   2.100 ( 2.100)  Acc@1:  20.000 ( 20.000)  Acc@5:  60.000 ( 60.000)',
    'Train: 1 [   0/3 (  33%)]  Loss: 2.0 (2.0)  Time: 0.800s,  160.00/s  (0.800s,  160.00/s)  LR: 5.000e-02  '
    'Data: 0.010 (0.010)',
    'Train: 12 [  40/391 ( 10%)]  Loss: 1.50 (1.61)  Time: 0.250s, 1024.00/s  (0.256s, 1000.00/s)  LR: 3.0e-02',
])


def test_parse_timm_log_takes_the_last_line_of_each_epoch():
    parsed = tt.parse_timm_log(TIMM_LOG)
    assert sorted(parsed) == [0, 1, 12]
    assert parsed[0] == {'update': 2.0, 'updates': 3.0, 'step_s': 1.333, 'images_per_s': 96.02, 'data_s': 0.2}
    assert parsed[1]['images_per_s'] == 160.0
    assert parsed[12] == {'update': 40.0, 'updates': 391.0, 'step_s': 0.256, 'images_per_s': 1000.0}
    assert tt.parse_timm_log('Test: [ 0/1] Time: 0.3 (0.3)\nnothing here') == {}


def test_timed_loader_counts_images_and_delegates():
    class Loader:
        batch_size = 4
        epoch = -1

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 2

        def __iter__(self):
            yield torch.zeros(4, 3), torch.zeros(4)
            yield torch.zeros(3, 3), torch.zeros(3)

    inner = Loader()
    timed = tt.TimedLoader(inner)
    timed.set_epoch(5)
    assert inner.epoch == 5 and len(timed) == 2 and timed.batch_size == 4
    assert [len(b[0]) for b in timed] == [4, 3]
    assert timed.images == 7 and timed.wait_s >= 0


def _result(row, ips_per_epoch, own=(), variant='v'):
    epochs = [{'epoch': i, 'seconds': 100 / ips, 'images': 100, 'data_wait_s': 10 / ips, 'main_cpu_s': 200 / ips,
               'workers_cpu_s': 0.1} for i, ips in enumerate(ips_per_epoch)]
    return tt.RunResult(row, variant, 1, epochs, list(own))


def test_summary_excludes_the_first_epoch_and_takes_medians():
    runs = [_result('timm', [1, 100], own=[5, 101]), _result('timm', [1, 120]), _result('timm', [1, 80]),
            _result('torch', [1, 50]), _result('torch', [1, 60]), _result('torch', [1, 40]),
            _result('memory', [200])]
    rows = tt.summarize(runs)
    assert [r['row'] for r in rows] == ['timm', 'torch', 'memory']
    timm, torch_row, memory = rows
    assert timm['images_per_s'] == pytest.approx(100) and timm['rounds'] == 3
    assert (timm['images_per_s_min'], timm['images_per_s_max']) == pytest.approx((80, 120))
    assert timm['self_reported_images_per_s'] == pytest.approx(101)  # first epoch left out there too
    assert torch_row['ratio_vs_timm'] == pytest.approx(0.5)
    assert torch_row['ratio_best_vs_timm'] == pytest.approx(60 / 120)
    assert memory['ratio_vs_timm'] == pytest.approx(2.0)  # a single epoch counts when it is the only one
    assert memory['data_wait_share'] == pytest.approx(0.1)
    assert memory['main_cpu_ms_per_image'] == pytest.approx(10) and memory['workers_cpu_ms_per_image'] == 1
    assert torch_row['main_cpu_ms_per_image'] == pytest.approx(1e3 * 200 / 50 / 100)
    table = tt.format_table(rows)
    assert '| 0.50x | 0.50x |' in table and '| 2.00x | 1.67x |' in table and '| 10% | 10.00 + 1.00 |' in table
    assert tt.summarize([_result('torch', [1, 50])])[0]['ratio_vs_timm'] is None


def test_our_arguments_resolve_in_our_train_cli(image_folder):
    from spsearch.train import cli as train_cli
    setup = tt.Setup('sp_resnet20', ['sp_alpha=vanilla'], 32, 32, 2, 1, 1, 0, 0.1, 0.9, 5e-4, 48, 20, image_folder,
                     None)
    torch_cfg = train_cli.resolve_config(tt.ours_argv(setup, 'torch', image_folder / 'out'))
    data = torch_cfg.data
    assert (data.dataset, data.loader, data.data_dir) == ('imagefolder', 'torch', str(image_folder))
    assert torch_cfg.model_kwargs == {'sp_alpha': 'vanilla'} and data.batch_size == 32
    assert torch_cfg.mean == tt.MEAN and torch_cfg.warmup_epochs == 0 and torch_cfg.label_smoothing == 0
    memory_cfg = train_cli.resolve_config(tt.ours_argv(setup, 'memory', image_folder / 'out'))
    assert (memory_cfg.data.dataset, memory_cfg.data.loader, memory_cfg.data.train_samples) == (
        'fashion-mnist', 'memory', 48)
    timm = tt.timm_argv(setup, Path('cpu.yaml'), Path('out'), 'x')
    assert timm[:2] == ['-c', 'cpu.yaml'] and timm[-2:] == ['--model-kwargs', 'sp_alpha=vanilla']
    assert timm[timm.index('--lr') + 1] == '0.1' and '--sched-on-updates' in timm


@pytest.mark.parametrize('argv,env,message', [
    ([], None, 'no timm train.py given'),
    (['--timm-train', '/no/such/train.py'], None, 'not found at /no/such/train.py'),
    ([], '/no/such/env_train.py', 'not found at /no/such/env_train.py'),
    (['--timm-train', str(ROOT / 'README.md')], None, "is not timm's train.py"),
    (['--rows', 'memory', '--batch-size', '0'], None, '--batch-size 0 is invalid'),
    (['--rows', 'memory', '--train-samples', '10'], None, 'larger than --train-samples'),
    (['--rows', 'memory', '--variants', 'sp_alpha'], None, 'K=V'),
])
def test_bad_input_is_one_line_exit_2(argv, env, message, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(tt.TIMM_ENV, raising=False)
    if env:
        monkeypatch.setenv(tt.TIMM_ENV, env)
    assert run_cli(lambda: tt.main([*argv, '--work-dir', str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and message in err and '\n' not in err
    if 'timm' in message:
        assert 'clone https://github.com/huggingface/pytorch-image-models' in err and '--timm-train' in err
    assert not list(tmp_path.iterdir())  # nothing exported or run


@pytest.mark.parametrize('row', ['torch', 'memory'])
def test_our_rows_time_every_epoch(row, image_folder, tmp_path):
    setup = tt.Setup('sp_resnet20', [], 16, 32, 2, 0, torch.get_num_threads(), 0, 0.1, 0.9, 5e-4, 48, 20,
                     image_folder, None)
    record = tmp_path / 'epochs.jsonl'
    spec = {'side': 'ours', 'script': str(ROOT / 'train.py'), 'threads': torch.get_num_threads(),
            'record': str(record), 'argv': tt.ours_argv(setup, row, tmp_path / 'out')}
    assert tt.run_child(spec) == 0
    epochs = tt.read_epoch_records(record)
    assert [e['epoch'] for e in epochs] == [0, 1]
    for e in epochs:
        assert e['images'] == 48 and e['seconds'] > e['data_wait_s'] > 0
        assert e['main_cpu_s'] > 0 and e['workers_cpu_s'] >= 0
        # our loop's own figure times the same loop from inside: a little less time, so a little more img/s
        assert e['images'] / e['seconds'] <= e['self_images_per_s'] <= 1.2 * e['images'] / e['seconds']
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['loader']['kind'] == row and summary['dataset']['num_train'] == 48
    from spsearch.train import loop
    assert loop._Run.train_epoch.__name__ == 'train_epoch'  # the timing hook is removed afterwards


@pytest.mark.slow
@pytest.mark.skipif(_timm_train_py() is None, reason="timm's train.py not available (set TIMM_TRAIN_PY)")
def test_all_rows_side_by_side_with_timm_train_py(tmp_path, capsys):
    report = tmp_path / 'report.md'
    rc = tt.main(['--timm-train', str(_timm_train_py()), '--timm-train-source', 'test copy', '--train-samples', '64',
                  '--val-samples', '16', '--batch-size', '16', '--epochs', '2', '--rounds', '1', '--workers', '1',
                  '--threads', '1', '--variants', 'sp_alpha=vanilla', '--work-dir', str(tmp_path), '--json',
                  '--report', str(report)])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    assert [r['row'] for r in rows] == ['timm', 'torch', 'memory']
    for r in rows:
        assert r['images_per_s'] > 0 and r['variant'] == 'sp_alpha=vanilla'
    timm_row = rows[0]
    # timm's own log figure and our timing of its epoch measure the same loop
    assert timm_row['self_reported_images_per_s'] == pytest.approx(timm_row['images_per_s'], rel=0.2)
    assert rows[1]['ratio_vs_timm'] == pytest.approx(rows[1]['images_per_s'] / timm_row['images_per_s'])
    records = tt.read_epoch_records(tmp_path / 'runs' / 'r1-sp_alpha=vanilla-timm' / 'epochs.jsonl')
    assert [(e['epoch'], e['images']) for e in records] == [(0, 64), (1, 64)]
    text = report.read_text()
    assert text.startswith('## Training throughput') and '- Commit:' in text and 'test copy' in text
    assert '| sp_alpha=vanilla | timm train.py' in text


@pytest.mark.slow  # a child process
def test_process_cpu_seconds_counts_live_child_processes():
    import subprocess
    import time

    busy = 'import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ntime.sleep(30)'
    before = tt.process_cpu_seconds()
    child = subprocess.Popen([sys.executable, '-c', busy])
    try:
        deadline = time.monotonic() + 20
        while tt.process_cpu_seconds()[1] - before[1] < 0.35 and time.monotonic() < deadline:
            time.sleep(0.1)
        own, children = tt.process_cpu_seconds()
        assert children - before[1] >= 0.35 and child.poll() is None  # read while the child is alive
        assert own >= before[0]
    finally:
        child.kill()
        child.wait()


def test_profile_only_reports_data_cost_and_compute(tmp_path, capsys):
    report = tmp_path / 'profile.md'
    try:
        rc = tt.main(['--profile-only', '--train-samples', '64', '--val-samples', '16', '--batch-size', '16',
                      '--profile-batches', '2', '--profile-repeats', '1', '--variants', 'sp_alpha=vanilla',
                      '--work-dir', str(tmp_path), '--report', str(report)])
    except DataError as e:
        pytest.skip(f'Fashion-MNIST not available: {e}')
    assert rc == 0
    text = report.read_text()
    assert text.startswith('## Training throughput: profile') and '- Commit:' in text
    costs = {line.split('|')[1].strip(): float(line.split('|')[2]) for line in text.splitlines()
             if line.startswith('| ') and 'CPU ms' not in line}
    assert set(tt.ROW_LABELS.values()) < set(costs) and len(costs) == 4 and all(v > 0 for v in costs.values())
    assert 'sp_alpha=vanilla' in text.split('Model alone')[1]
