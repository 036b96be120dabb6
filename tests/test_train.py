"""Training loop and train.py: real Fashion-MNIST learning, exact resume after kill -9, DDP on two CPU
processes agreeing with one, exported weights loading in timm, and every bad input as one line + exit 2."""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml

from spsearch.errors import ConfigError, SPSearchError
from spsearch.train import TrainConfig, load_checkpoint, train
from spsearch.train import cli as train_cli
from spsearch.train.loop import precise_bn

from helpers import ROOT, cli_args, end_process, needs_fmnist, run_while_paused

TINY = dict(model='sp_resnet20', dataset='fashion-mnist', img_size=16, train_samples=512, val_samples=256,
            batch_size=64, epochs=3, lr=0.05, warmup_epochs=1, sched='cosine', progress=False, workers=0)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from spsearch.cli import run_cli
    try:
        code = run_cli(lambda: train_cli.main(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@needs_fmnist
def test_real_fashion_mnist_training_learns(tmp_path):
    """2 epochs on 3,000 real training images reach > 45% on 2,000 real test images (chance: 10%; measured 63.9%)."""
    cfg = TrainConfig.from_dict(dict(model='sp_resnet20', dataset='fashion-mnist', train_samples=3000, val_samples=2000,
                                     epochs=2, batch_size=32, lr=0.1, sched='cosine', progress=False,
                                     output=str(tmp_path / 'run')))
    result = train(cfg)
    assert result.epochs_run == 2 and result.stopped_by is None
    assert result.final_top1 > 45.0, result.history
    out = tmp_path / 'run'
    assert {'args.yaml', 'log.csv', 'last.pth', 'best.pth', 'model.safetensors', 'summary.json'} <= {
        p.name for p in out.iterdir()}
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['final_top1'] == pytest.approx(result.final_top1)
    assert summary['dataset']['num_train'] == 3000
    assert summary['images_per_s'] > 0 and summary['peak_mem_mb'] > 0
    assert summary['commit'] and summary['versions']['torch'] and summary['machine']['cpu']
    assert yaml.safe_load((out / 'args.yaml').read_text())['train_samples'] == 3000
    assert len((out / 'log.csv').read_text().strip().splitlines()) == 3
    # exported weights load through timm's pretrained path
    model = timm.create_model('sp_resnet20', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors')))
    ref = safetensors.torch.load_file(str(out / 'model.safetensors'))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref[name]), name


@pytest.mark.slow
@needs_fmnist
def test_kill_9_then_resume_ends_bit_identical(tmp_path):
    """An uninterrupted run and a run killed (SIGKILL) after epoch 1 then resumed end with the same weights.

    All three runs are processes with the same thread count: a float sum over 2 threads differs in its last bits from
    one over 4, so a reference trained in this process (conftest's thread cap) differs from a child on a machine whose
    default is another count. Resume is exact on the same machine and settings, not across thread counts.
    """
    epochs = TINY['epochs']
    argv = cli_args(dict(TINY, ema=True)) + ['--model-kwargs', 'drop_rate=0.2', 'sp_alpha=(0.5,vanilla,0.25)']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}

    def train_py(*extra: str) -> list[str]:
        return [sys.executable, str(ROOT / 'train.py'), *argv, *extra]

    ref_out = tmp_path / 'uninterrupted'
    done = subprocess.run(train_py('--output', str(ref_out)), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / 'interrupted'
    proc = subprocess.Popen(train_py('--output', str(out)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (out / 'last.pth').exists() and load_checkpoint(out / 'last.pth')['epoch'] >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, 'the run finished before it could be killed'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(out / 'last.pth')['epoch']
    assert 1 <= killed_at < epochs
    assert not (out / 'model.safetensors').exists()

    done = subprocess.run(train_py('--output', str(out), '--resume'), cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a = safetensors.torch.load_file(str(ref_out / 'model.safetensors'))
    b = safetensors.torch.load_file(str(out / 'model.safetensors'))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ema_a = safetensors.torch.load_file(str(ref_out / 'model_ema.safetensors'))
    ema_b = safetensors.torch.load_file(str(out / 'model_ema.safetensors'))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    def metrics(run: Path) -> list[tuple[str, ...]]:
        rows = list(csv.DictReader((run / 'log.csv').open()))
        return [(r['epoch'], r['train_loss'], r['val_loss'], r['top1'], r['ema_top1'], r['lr']) for r in rows]
    assert metrics(ref_out) == metrics(out) and len(metrics(out)) == epochs


@pytest.mark.slow
@needs_fmnist
def test_two_cpu_processes_under_accelerate_agree_with_one(tmp_path):
    """DDP over gloo with two CPU processes; its gathered metrics equal a one-process evaluation of its weights."""
    out = tmp_path / 'ddp'
    argv = cli_args(dict(TINY, epochs=1, val_samples=301)) + ['--output', str(out)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    done = subprocess.run(
        [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
         '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '29517',
         str(ROOT / 'train.py'), *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['num_processes'] == 2
    assert summary['dataset']['num_val'] == 301
    eval_out = tmp_path / 'eval'
    cfg = TrainConfig.from_dict({**TINY, 'val_samples': 301, 'evaluate_only': True, 'output': str(eval_out),
                                 'checkpoint': str(out / 'model.safetensors')})
    single = train(cfg)
    assert single.final_top1 == pytest.approx(summary['final_top1'], abs=1e-9)
    assert single.final_top5 == pytest.approx(summary['final_top5'], abs=1e-9)
    assert json.loads((eval_out / 'eval.json').read_text())['val_samples'] == 301


def test_yaml_config_then_flags_and_args_yaml_round_trip(tmp_path):
    config = tmp_path / 'c.yaml'
    config.write_text(yaml.safe_dump({'model': 'sp_resnet20', 'epochs': 7, 'lr': 0.2,
                                      'model_kwargs': {'sp_alpha': 'vanilla', 'sp_groups': 4}}))
    cfg = train_cli.resolve_config(['-c', str(config), '--epochs', '3', '--model-kwargs', 'sp_groups=2',
                                    '--output', str(tmp_path / 'o')])
    assert (cfg.epochs, cfg.lr, cfg.model_kwargs) == (3, 0.2, {'sp_alpha': 'vanilla', 'sp_groups': 2})
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


def test_synthetic_smoke_with_ema_clip_and_channels_last(tmp_path):
    cfg = TrainConfig.from_dict(dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=128,
                                     val_samples=64, batch_size=32, epochs=1, ema=True, clip_grad=1.0,
                                     channels_last=True, label_smoothing=0.1, opt='adamw', lr=1e-3, sched='step',
                                     progress=False, output=None))
    result = train(cfg)
    assert result.epochs_run == 1 and result.output is None
    assert 'ema_top1' in result.history[0]


def test_epoch_callback_stops_the_run(tmp_path):
    seen = []

    def callback(epoch, metrics):
        seen.append((epoch, metrics['top1']))
        return epoch >= 2

    cfg = TrainConfig.from_dict(dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64,
                                     val_samples=32, batch_size=32, epochs=5, progress=False))
    result = train(cfg, epoch_callback=callback)
    assert result.stopped_by == 'callback' and result.epochs_run == 2 and [e for e, _ in seen] == [1, 2]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    """After a good epoch, a forward hook turns the outputs into NaN: exit 1, message, last.pth of epoch 1 kept."""
    poison = {'on': False}

    def hook(module, inputs, output):
        return output * float('nan') if poison['on'] and module.__class__.__name__ == 'CifarResNet' else None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    out = tmp_path / 'nan'
    try:
        cfg = TrainConfig.from_dict(dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64,
                                         val_samples=32, batch_size=32, epochs=3, progress=False, output=str(out)))
        result = train(cfg, epoch_callback=lambda epoch, m: poison.update(on=True) or False)
    finally:
        handle.remove()
    assert result.stopped_by == 'nonfinite'
    assert 'non-finite' in result.message and 'last.pth' in result.message
    assert load_checkpoint(out / 'last.pth')['epoch'] == 1
    assert not (out / 'model.safetensors').exists()


@pytest.mark.parametrize('case', ['missing_dir', 'empty_dir', 'truncated_cifar', 'bad_yaml', 'unknown_key',
                                  'unknown_model', 'batch_too_large', 'bad_model_kwargs', 'bad_choice', 'fp16_cpu',
                                  'resume_without_output', 'input_too_small', 'output_is_a_file',
                                  'output_under_a_file', 'model_kwargs_not_a_mapping', 'nesterov_without_momentum'])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    out = tmp_path / 'out'
    base = ['--epochs', '1', '--output', str(out), '--no-progress', '--img-size', '16']
    if case == 'missing_dir':
        argv = ['--dataset', 'cifar10', '--data-dir', str(tmp_path / 'nope')] + base
    elif case == 'empty_dir':
        (tmp_path / 'empty').mkdir()
        argv = ['--dataset', 'imagefolder', '--data-dir', str(tmp_path / 'empty')] + base
    elif case == 'truncated_cifar':
        folder = tmp_path / 'cifar-10-batches-py'
        folder.mkdir()
        for name in ['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch',
                     'batches.meta']:
            (folder / name).write_bytes(b'\x80\x04\x95garbage')
        argv = ['--dataset', 'cifar10', '--data-dir', str(folder)] + base
    elif case == 'bad_yaml':
        (tmp_path / 'c.yaml').write_text('model: [unclosed\n')
        argv = ['-c', str(tmp_path / 'c.yaml')] + base
    elif case == 'unknown_key':
        (tmp_path / 'c.yaml').write_text('modle: sp_resnet20\n')
        argv = ['-c', str(tmp_path / 'c.yaml')] + base
    elif case == 'unknown_model':
        argv = ['--model', 'sp_resnet21', '--dataset', 'synthetic'] + base
    elif case == 'batch_too_large':
        argv = ['--dataset', 'synthetic', '--train-samples', '100', '--batch-size', '128'] + base
    elif case == 'bad_model_kwargs':
        argv = ['--dataset', 'synthetic', '--model-kwargs', 'sp_alpha=1.5'] + base
    elif case == 'bad_choice':
        argv = ['--dataset', 'imagenet'] + base
    elif case == 'input_too_small':
        argv = ['--dataset', 'synthetic', '--model', 'sp_vgg16_cifar', *base[:-1], '8']
    elif case in ('output_is_a_file', 'output_under_a_file'):
        (tmp_path / 'afile').write_text('x')
        target = tmp_path / 'afile' if case == 'output_is_a_file' else tmp_path / 'afile' / 'run'
        argv = ['--dataset', 'synthetic', *base[:2], '--output', str(target), *base[4:]]
    elif case == 'model_kwargs_not_a_mapping':
        (tmp_path / 'c.yaml').write_text('model_kwargs: [1, 2]\n')
        argv = ['-c', str(tmp_path / 'c.yaml'), '--dataset', 'synthetic'] + base
    elif case == 'nesterov_without_momentum':
        argv = ['--dataset', 'synthetic', '--momentum', '0'] + base
    elif case == 'resume_without_output':
        argv = ['--dataset', 'synthetic', '--resume', '--epochs', '1', '--no-progress']
    else:
        argv = ['--dataset', 'synthetic', '--mixed-precision', 'fp16', '--device', 'cpu'] + base  # GPU or not
    code, _, err = run_main(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'Traceback' not in err
    assert not out.exists() or not any(out.iterdir())


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    out = tmp_path / 'run'
    argv = cli_args(dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32,
                         batch_size=32, epochs=1, progress=False)) + ['--output', str(out)]
    assert run_main(argv, capsys)[0] == 0
    before = (out / 'last.pth').read_bytes()
    code, _, err = run_main(argv, capsys)
    assert code == 2 and 'already holds a run' in err and '--resume' in err
    assert (out / 'last.pth').read_bytes() == before


def test_resume_with_another_thread_count_says_it_is_not_bit_identical(tmp_path, capsys):
    """Threads change float sums' last bits: a resume with another count continues but says so, naming the fix."""
    out = tmp_path / 'run'

    def argv(epochs: int) -> list[str]:
        return cli_args(dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32,
                             batch_size=32, epochs=epochs, progress=False)) + ['--output', str(out)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert run_main(argv(1), capsys)[0] == 0
        assert load_checkpoint(out / 'last.pth')['torch_threads'] == 1
        with warnings.catch_warnings(record=True) as same:
            warnings.simplefilter('always')
            code = run_main(argv(2) + ['--resume'], capsys)[0]
        torch.set_num_threads(2)
        with pytest.warns(UserWarning, match='the run used 1 torch threads and this process has 2') as other:
            code2 = run_main(argv(3) + ['--resume'], capsys)[0]
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and not [w for w in same if 'threads' in str(w.message)]
    assert code2 == 0 and any('OMP_NUM_THREADS=1' in str(w.message) for w in other)


def test_the_library_entry_point_and_the_repository_script_are_one_cli():
    """``python -m spsearch.train`` works from anywhere (an installed copy retrains with it); train.py is its shim."""
    done = subprocess.run([sys.executable, '-m', 'spsearch.train', '--help'], capture_output=True, text=True,
                          timeout=120, cwd='/')
    assert done.returncode == 0 and '--model-kwargs' in done.stdout and '--batch-size' in done.stdout, done.stderr
    shim = (ROOT / 'train.py').read_text()
    assert 'from spsearch.train.cli import' in shim


def test_every_train_option_is_a_flag_and_a_yaml_key(tmp_path):
    """Each option is spelled once (a TrainConfig field): its flag and its YAML key follow from it."""
    from spsearch.options import flat_fields
    parser = train_cli.build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    names = TrainConfig.field_names()
    assert names == [f.name for f in flat_fields(TrainConfig)]
    assert {'--' + n.replace('_', '-') for n in names} <= flags
    cfg = TrainConfig.from_dict({'lr': 0.3, 'batch_size': 16, 'train_samples': 10, 'mean': [0.5]})
    assert (cfg.lr, cfg.data.batch_size, cfg.data.train_samples, cfg.mean) == (0.3, 16, 10, (0.5,))
    assert set(cfg.to_dict()) == set(names)


def _norm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if 'running_' in k}


def test_precise_bn_recomputes_stale_statistics_and_keeps_converged_ones():
    """Stale running statistics change the evaluated outputs; precise BN gives back those of the current weights,
    and on a model whose statistics already are its weights' it changes nothing."""
    from spsearch.data import DataConfig, create_loaders
    torch.manual_seed(0)
    model = timm.create_model('sp_resnet20', num_classes=10, sp_alpha=(0.5, 'vanilla', 0.25))
    loaders = create_loaders(DataConfig('synthetic', batch_size=16, train_samples=64, val_samples=16),
                             input_size=(3, 16, 16))
    x = next(iter(loaders.val))[0]
    precise_bn(model, loaders.train, 3)
    converged = _norm_buffers(model)
    with torch.no_grad():
        expected = model.eval()(x)
    precise_bn(model, loaders.train, 3)  # the same weights and batches: nothing to change
    for k, v in _norm_buffers(model).items():
        torch.testing.assert_close(v, converged[k], msg=k)
    assert not model.training  # the mode is restored
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.add_(3.0)
            elif name.endswith('running_var'):
                buffer.mul_(20.0)
        stale = model(x)
    assert (stale - expected).abs().max() > 0.1 * expected.abs().max()
    precise_bn(model, loaders.train, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_precise_bn_is_on_by_default_and_changes_the_evaluation():
    """Same seed, same training: only the norms' statistics at evaluation differ (0 batches: off)."""
    base = dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32,
                batch_size=32, epochs=1, progress=False)
    assert TrainConfig.from_dict(base).precise_bn_batches > 0
    on = train(TrainConfig.from_dict({**base, 'precise_bn_batches': 2}))
    off = train(TrainConfig.from_dict({**base, 'precise_bn_batches': 0}))
    assert on.history[0]['train_loss'] == off.history[0]['train_loss']
    assert on.history[0]['val_loss'] != off.history[0]['val_loss']


def test_stale_bn_eval_scores_the_run_precise_bn_did_not_change():
    """--stale-bn-eval: its stale_* columns are the metrics of the same run with precise BN off (bit for bit: the
    running statistics are put back before each epoch), and the precise-BN metrics are those of a run without it."""
    base = dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32,
                batch_size=32, epochs=2, progress=False)
    both = train(TrainConfig.from_dict({**base, 'precise_bn_batches': 2, 'stale_bn_eval': True}))
    precise = train(TrainConfig.from_dict({**base, 'precise_bn_batches': 2}))
    off = train(TrainConfig.from_dict({**base, 'precise_bn_batches': 0}))
    for epoch in range(2):
        assert both.history[epoch]['stale_val_loss'] == off.history[epoch]['val_loss']
        assert both.history[epoch]['stale_top1'] == off.history[epoch]['top1']
        assert both.history[epoch]['val_loss'] == precise.history[epoch]['val_loss']
        assert 'stale_top1' not in precise.history[epoch]
    assert both.history[1]['stale_val_loss'] != both.history[1]['val_loss']


def test_a_log_file_gets_plain_progress_lines_not_a_bar(tmp_path):
    """Without a terminal (retrains, CI, nohup) there is no tqdm bar with carriage returns in the log, only a plain
    line every --log-interval steps and the epoch line."""
    done = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--model', 'sp_resnet20', '--dataset', 'synthetic',
                           '--train-samples', '256', '--batch-size', '32', '--log-interval', '4', '--epochs', '1',
                           '--img-size', '16', '--output', 'none'], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, 'PYTHONPATH': str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert '\r' not in log and '%|' not in log
    assert 'epoch 1/1 step 4/8: loss ' in done.stdout and 'epoch 1/1  lr' in done.stdout


@needs_fmnist
def test_a_run_folder_loads_back_whole_through_timm(tmp_path):
    """``local-dir:<run>`` rebuilds the trained model (SP settings, 10-class head, 1 input channel) with its weights,
    timm's data config gives the trained input size and normalisation, and ``timm.models.load_checkpoint(...,
    use_ema=True)`` finds the EMA weights in ``last.pth``."""
    from timm.data import resolve_data_config
    from timm.models import load_checkpoint as timm_load_checkpoint

    out = tmp_path / 'run'
    kwargs = {'sp_alpha': (0.5, 'vanilla', 0.25), 'sp_groups': (2, 1, 4), 'in_chans': 1}
    cfg = TrainConfig.from_dict(dict(TINY, epochs=1, ema=True, model_kwargs=kwargs, output=str(out)))
    train(cfg)
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    weights = safetensors.torch.load_file(str(out / 'model.safetensors'))
    assert loaded.num_classes == 10 and loaded.state_dict().keys() == weights.keys()
    assert all(torch.equal(t, weights[k]) for k, t in loaded.state_dict().items())
    data = resolve_data_config({}, model=loaded)
    assert data['input_size'] == (1, 16, 16) and data['crop_pct'] == 1.0
    assert data['mean'] == pytest.approx((0.2860,), abs=1e-3) and data['std'] == pytest.approx((0.3530,), abs=1e-3)
    ema = timm.create_model('sp_resnet20', num_classes=10, **kwargs)
    timm_load_checkpoint(ema, str(out / 'last.pth'), use_ema=True)
    ema_weights = safetensors.torch.load_file(str(out / 'model_ema.safetensors'))
    assert all(torch.equal(t, ema_weights[k]) for k, t in ema.state_dict().items())
    assert not all(torch.equal(ema_weights[k], weights[k]) for k in weights if weights[k].is_floating_point())


def test_timm_spellings_are_flags_and_yaml_keys(tmp_path):
    """timm's train.py flags (and its args.yaml keys) map onto the same options."""
    cfg = train_cli.resolve_config(['-b', '32', '--smoothing', '0.1', '--model-ema', '--model-ema-decay', '0.99',
                                    '--torchcompile', '--amp', '--amp-dtype', 'bfloat16', '--initial-checkpoint',
                                    'w.safetensors', '--mixup', '0.2', '--cutmix', '1.0', '--reprob', '0.25',
                                    '--output', 'none'])
    assert (cfg.data.batch_size, cfg.label_smoothing, cfg.ema, cfg.ema_decay, cfg.compile) == (
        32, 0.1, True, 0.99, True)
    assert (cfg.mixed_precision, cfg.checkpoint, cfg.mixup, cfg.cutmix, cfg.reprob) == (
        'bf16', 'w.safetensors', 0.2, 1.0, 0.25)
    assert train_cli.resolve_config(['--amp', '--output', 'none']).mixed_precision == 'fp16'  # timm's default dtype
    timm_args = tmp_path / 'args.yaml'
    timm_args.write_text(yaml.safe_dump({'smoothing': 0.2, 'model_ema': True, 'model_ema_decay': 0.9, 'amp': True,
                                         'amp_dtype': 'bfloat16', 'torchcompile': False, 'batch_size': 16,
                                         'output': None}))
    cfg = train_cli.resolve_config(['-c', str(timm_args)])
    assert (cfg.label_smoothing, cfg.ema, cfg.ema_decay, cfg.mixed_precision, cfg.data.batch_size) == (
        0.2, True, 0.9, 'bf16', 16)
    for argv, message in ((['--amp', '--mixed-precision', 'fp16', '--amp-dtype', 'bfloat16'], 'give one'),
                          (['--amp-dtype', 'bfloat16'], 'goes with --amp'),
                          (['--mixup', '0.2', '-b', '33'], 'must be even'),
                          (['--momentum', '0'], 'needs --momentum > 0')):
        with pytest.raises(SPSearchError, match=message):
            train_cli.resolve_config([*argv, '--output', 'none'])


def test_mixup_cutmix_and_random_erasing_train(tmp_path):
    """timm's Mixup (soft targets, SoftTargetCrossEntropy) and RandomErasing run in the loop; loss stays finite."""
    cfg = TrainConfig.from_dict(dict(TINY, dataset='synthetic', epochs=1, mixup=0.4, cutmix=1.0, reprob=0.5,
                                     label_smoothing=0.1, output=None))
    result = train(cfg)
    assert result.epochs_run == 1 and result.stopped_by is None and math.isfinite(result.history[0]['train_loss'])


def test_initial_checkpoint_starts_training_from_those_weights(tmp_path):
    """--initial-checkpoint (timm's name for --checkpoint when training) loads the weights before the first step;
    weights of another model are one line."""
    first = train(TrainConfig.from_dict(dict(TINY, dataset='synthetic', epochs=1, output=str(tmp_path / 'a'))))
    weights = safetensors.torch.load_file(str(first.weights))
    args = dict(TINY, dataset='synthetic', epochs=1, lr=1e-12, weight_decay=0.0, opt='momentum', momentum=0.0,
                checkpoint=first.weights, output=str(tmp_path / 'b'))
    second = train(TrainConfig.from_dict(args))
    after = safetensors.torch.load_file(str(second.weights))
    for k, v in weights.items():
        if 'running' not in k and 'num_batches' not in k:
            torch.testing.assert_close(after[k], v, msg=k)
    with pytest.raises(ConfigError, match='does not fit'):
        train(TrainConfig.from_dict({**args, 'model_kwargs': {'sp_alpha': 'vanilla'}, 'output': None}))


def test_precision_from_accelerate_launch_is_honoured_and_checked():
    """Flags/YAML first, then accelerate's setting (ACCELERATE_MIXED_PRECISION); fp16 without a GPU is refused
    whichever source asks for it, instead of running fp32 while summary.json says fp16."""
    from spsearch.train.loop import resolve_precision
    cfg = TrainConfig.from_dict(dict(TINY, output=None))
    assert resolve_precision(cfg, {}) == ('no', 'accelerate launch --mixed_precision (or its config)')
    assert resolve_precision(cfg, {'ACCELERATE_MIXED_PRECISION': 'bf16'})[0] == 'bf16'
    assert resolve_precision(cfg.replace(mixed_precision='bf16'), {'ACCELERATE_MIXED_PRECISION': 'no'})[0] == 'bf16'
    with pytest.raises(ConfigError, match='not supported here'):
        resolve_precision(cfg, {'ACCELERATE_MIXED_PRECISION': 'fp8'})
    with pytest.raises(ConfigError, match='accelerate launch --mixed_precision .* fp16 needs a GPU'):
        resolve_precision(cfg.replace(device='cpu'), {'ACCELERATE_MIXED_PRECISION': 'fp16'})


def test_grad_accumulation_makes_the_same_updates_as_a_batch_twice_as_large(tmp_path, one_thread):
    """--grad-accum-steps 2 at batch 32 updates a norm-free model as batch 64 does (accelerate's accumulation:
    the loss divided, the optimizer, cosine schedule and EMA stepped once per update); the step counts follow
    updates, and an epoch's leftover batches (fewer than a group) are left out."""
    base = dict(TINY, model='test_vit', model_kwargs={'img_size': 16, 'patch_size': 4}, dataset='synthetic',
                train_samples=256, val_samples=64, epochs=2, augment=False, precise_bn_batches=0, ema=True,
                ema_decay=0.9, clip_grad=1.0)
    one = TrainConfig.from_dict(dict(base, batch_size=64, output=str(tmp_path / 'big')))
    two = TrainConfig.from_dict(dict(base, batch_size=32, grad_accum_steps=2, output=str(tmp_path / 'accum')))
    for cfg in (one, two):
        train(cfg)
    states = [load_checkpoint(Path(str(cfg.output)) / 'last.pth') for cfg in (one, two)]
    assert states[0]['num_updates'] == states[1]['num_updates'] == 8  # 2 epochs x 4 updates
    assert states[0]['scheduler'] == states[1]['scheduler']
    for key in ('model', 'state_dict_ema'):
        for name, value in states[0][key].items():
            torch.testing.assert_close(states[1][key][name], value, rtol=1e-4, atol=1e-5, msg=f'{key} {name}')
    train(TrainConfig.from_dict(dict(base, batch_size=32, grad_accum_steps=3, epochs=1, output=str(tmp_path / 'c'))))
    assert load_checkpoint(tmp_path / 'c' / 'last.pth')['num_updates'] == 2  # 8 batches: 2 groups of 3, 2 left out
    with pytest.raises(ConfigError, match='--grad-accum-steps 9 needs at least 9 training batches per epoch'):
        train(TrainConfig.from_dict(dict(base, batch_size=32, grad_accum_steps=9, output=None)))


def test_checkpoint_history_keeps_the_best_epochs_as_timms_saver_does(tmp_path):
    """timm's CheckpointSaver rules: keep while fewer than N, else only a strictly better epoch, dropping the
    worst; model_best when an epoch beats every kept one."""
    from spsearch.train.checkpoint import CheckpointHistory
    hist = CheckpointHistory(tmp_path, 2)
    names = lambda paths: [p.name for p in paths]  # noqa: E731
    steps = [(hist.update(e, m)) for e, m in ((1, 50.0), (2, 40.0), (3, 40.0), (4, 60.0), (5, 55.0))]
    assert [(names(w), names(d)) for w, d in steps] == [
        (['checkpoint-1.pth.tar', 'model_best.pth.tar'], []), (['checkpoint-2.pth.tar'], []), ([], []),
        (['checkpoint-4.pth.tar', 'model_best.pth.tar'], ['checkpoint-2.pth.tar']),
        (['checkpoint-5.pth.tar'], ['checkpoint-1.pth.tar'])]
    assert hist.state() == [[60.0, 'checkpoint-4.pth.tar'], [55.0, 'checkpoint-5.pth.tar']]


def test_checkpoint_hist_files_survive_resume_and_load_in_timm(tmp_path, one_thread):
    """--checkpoint-hist 2: the two best epochs' checkpoints (by the epoch score), model_best.pth.tar = best.pth;
    a run resumed after epoch 2 ends with the same files as an uninterrupted one; timm's load_checkpoint reads
    them; last.pth still resumes exactly."""
    from timm.models import load_checkpoint as timm_load_checkpoint
    args = dict(TINY, dataset='synthetic', train_samples=128, val_samples=64, batch_size=32, epochs=4,
                precise_bn_batches=2, checkpoint_hist=2, sched='none')  # the split run's schedule is the same
    whole = train(TrainConfig.from_dict(dict(args, output=str(tmp_path / 'whole'))))
    train(TrainConfig.from_dict(dict(args, epochs=2, output=str(tmp_path / 'split'))))
    train(TrainConfig.from_dict(dict(args, resume=True, output=str(tmp_path / 'split'))))
    scores = [row['top1'] for row in whole.history]
    best_two = sorted(range(4), key=lambda e: -scores[e])[:2]  # stable: the earlier epoch wins a tie
    for run in ('whole', 'split'):
        files = sorted(p.name for p in (tmp_path / run).glob('*.pth.tar'))
        assert files == sorted([*(f'checkpoint-{e + 1}.pth.tar' for e in best_two), 'model_best.pth.tar']), run
        assert (tmp_path / run / 'model_best.pth.tar').read_bytes() == (tmp_path / run / 'best.pth').read_bytes()
    assert load_checkpoint(tmp_path / 'split' / 'last.pth')['checkpoint_hist'] == load_checkpoint(
        tmp_path / 'whole' / 'last.pth')['checkpoint_hist']
    model = timm.create_model('sp_resnet20', num_classes=10)
    timm_load_checkpoint(model, str(tmp_path / 'whole' / f'checkpoint-{best_two[0] + 1}.pth.tar'))
    state = load_checkpoint(tmp_path / 'whole' / f'checkpoint-{best_two[0] + 1}.pth.tar')
    assert state['epoch'] == best_two[0] + 1 and state['metric'] == max(scores)
    assert all(torch.equal(v, state['model'][k]) for k, v in model.state_dict().items())


def test_pretrained_path_fine_tunes_from_a_file_with_timms_head_adaptation(tmp_path, one_thread, monkeypatch):
    """--pretrained-path FILE is timm's pretrained_cfg_overlay=dict(file=FILE, num_classes=-1): the body starts from
    the file, the classifier is re-initialised (here 12 classes: --num-classes wider than the data only with such
    weights). Registered weights that cannot be fetched, a model without any, a missing file and a head that does
    not fit the data are one line each, before anything is written."""
    import huggingface_hub.constants

    from spsearch.train.loop import build_model
    first = train(TrainConfig.from_dict(dict(TINY, dataset='synthetic', train_samples=64, val_samples=32, epochs=1,
                                             output=str(tmp_path / 'a'))))
    weights = safetensors.torch.load_file(str(first.weights))
    args = dict(TINY, dataset='synthetic', train_samples=64, val_samples=32, epochs=1, lr=1e-12, weight_decay=0.0,
                opt='momentum', momentum=0.0, precise_bn_batches=0)
    cfg = train_cli.resolve_config([*cli_args(args), '--pretrained-path', str(first.weights), '--num-classes', '12',
                                    '--output', str(tmp_path / 'b')])
    assert cfg.pretrained and cfg.num_classes == 12
    tuned = train(cfg)
    after = safetensors.torch.load_file(str(tuned.weights))
    assert after['fc.weight'].shape == (12, weights['fc.weight'].shape[1])
    for k, v in weights.items():
        if not k.startswith('fc.') and 'running' not in k and 'num_batches' not in k:
            torch.testing.assert_close(after[k], v, msg=k)
    assert json.loads((tmp_path / 'b' / 'config.json').read_text())['num_classes'] == 12
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # as without a network, at once
    with pytest.raises(ConfigError, match=r'cannot fetch the pretrained weights of resnet18 from '
                                          r'hf-hub:timm/resnet18\.\S+ \(no network.*pass --pretrained-path FILE'):
        build_model(TrainConfig.from_dict(dict(model='resnet18', output=None)), 10, pretrained=True)
    for extra, message in (({'pretrained': True}, 'sp_resnet20 .tag untrained. has no registered pretrained weights'),
                           ({'pretrained_path': str(tmp_path / 'nope.safetensors')}, 'nope.safetensors does not exist'),
                           ({'num_classes': 12}, 'num-classes 12 but synthetic has 10 classes; leave it out'),
                           ({'num_classes': 4, 'pretrained': True}, 'fewer than the 10 classes')):
        with pytest.raises(ConfigError, match=message):
            train(TrainConfig.from_dict({**args, **extra, 'output': str(tmp_path / 'c')}))
        assert not (tmp_path / 'c').exists()


def test_timm_args_yaml_runs_with_timms_meaning(tmp_path, capsys, monkeypatch):
    """An args.yaml as timm's train.py writes it (tests/golden/timm_args.yaml: every option at timm's default):
    the options we implement take effect under timm's keys and values (smoothing, epochs, lr from lr_base and the
    global batch, dataset '' = ImageFolder, output '' = the default folder, ...); timm's options we lack are ignored
    at their defaults with one note line, refused with one error line (exit 2) when set; our own args.yaml still
    round-trips without a note."""
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    timm_yaml = yaml.safe_load((ROOT / 'tests' / 'golden' / 'timm_args.yaml').read_text())
    path = tmp_path / 'args.yaml'
    path.write_text(yaml.safe_dump(timm_yaml, default_flow_style=False))
    cfg = train_cli.resolve_config(['-c', str(path)])
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith(f'note: {path} holds timm option(s) not implemented here')
    assert all(k in note[0] for k in ('clip_mode', 'hflip', 'color_jitter', 'sched_on_updates', 'val_split'))
    assert (cfg.model, cfg.data.dataset, cfg.data.data_dir, cfg.epochs, cfg.label_smoothing, cfg.weight_decay) == (
        'resnet50', 'imagefolder', None, 300, 0.1, 2e-5)
    assert (cfg.lr, cfg.warmup_epochs, cfg.decay_milestones, cfg.data.seed, cfg.data.workers) == (
        0.05, 5, (90, 180, 270), 42, 4)  # lr: 0.1 x 128 / 256, timm's linear scaling
    assert (cfg.ema, cfg.ema_decay, cfg.compile, cfg.mixed_precision, cfg.checkpoint_hist, cfg.grad_accum_steps) == (
        False, 0.9998, False, 'no', 10, 1)
    assert (cfg.checkpoint, cfg.resume, cfg.pretrained, cfg.data.scale, cfg.data.augment) == (
        None, None, False, None, True)
    assert cfg.output is not None and cfg.output.startswith('runs/train/imagefolder-resnet50-')
    assert cfg.device == 'auto'  # timm's 'cuda': accelerate picks the GPU (ours: auto or cpu)

    run = {**timm_yaml, 'data': str(tmp_path / 'imgs'), 'model': 'sp_resnet20', 'lr': None, 'lr_base': 0.2,
           'opt': 'lamb', 'batch_size': 64, 'grad_accum_steps': 2, 'amp': True, 'amp_dtype': 'bfloat16',
           'aa': 'rand-m9-mstd0.5-inc1', 'smoothing': 0.2, 'model_ema': True, 'checkpoint_hist': 3,
           'pretrained_path': 'w.safetensors', 'num_classes': 5, 'torchcompile': 'inductor', 'scale': [0.5, 1.0],
           'no_aug': False, 'output': str(tmp_path / 'out'), 'validation_batch_size': 32}
    path.write_text(yaml.safe_dump(run, default_flow_style=False))
    cfg = train_cli.resolve_config(['-c', str(path), '--epochs', '2'])
    assert (cfg.data.data_dir, cfg.lr, cfg.data.batch_size, cfg.grad_accum_steps) == (
        str(tmp_path / 'imgs'), pytest.approx(0.2 * (128 / 256) ** 0.5), 64, 2)  # lamb: sqrt scaling
    assert (cfg.mixed_precision, cfg.data.aa, cfg.label_smoothing, cfg.ema, cfg.checkpoint_hist, cfg.epochs) == (
        'bf16', 'rand-m9-mstd0.5-inc1', 0.2, True, 3, 2)
    assert (cfg.pretrained, cfg.pretrained_path, cfg.num_classes, cfg.compile, cfg.data.scale) == (
        True, 'w.safetensors', 5, True, (0.5, 1.0))
    assert (cfg.output, cfg.data.eval_batch_size) == (str(tmp_path / 'out'), 32)
    capsys.readouterr()

    for changes, message in (({'clip_mode': 'agc', 'hflip': 0.0}, "clip_mode: 'agc' .timm default 'norm'.; hflip"),
                             ({'val_split': 'val'}, "val_split: 'val'"),
                             ({'dataset': 'hfds/beans'}, "timm data set 'hfds/beans' is not read here"),
                             ({'torchcompile': 'eager'}, "torchcompile 'eager'"),
                             ({'device': 'cuda:1'}, "device 'cuda:1': pick the GPU with CUDA_VISIBLE_DEVICES")):
        path.write_text(yaml.safe_dump({**timm_yaml, **changes}, default_flow_style=False))
        code, out, err = run_main(['-c', str(path)], capsys)
        assert code == 2 and err.count('\n') == 1 and err.startswith('error: ') and re.search(message, err), err

    ours = tmp_path / 'ours.yaml'
    for device in ('auto', 'cpu'):  # every option of ours, the timm-named ones included, passes through unchanged
        mine = TrainConfig.from_dict(dict(TINY, output=None, checkpoint_hist=2, device=device))
        ours.write_text(yaml.safe_dump(mine.to_dict()))
        assert train_cli.resolve_config(['-c', str(ours)]) == mine
    assert capsys.readouterr().err == ''


# -- accelerate: device, launch size, trackers, precision as run; timm's own scripts --------------------------

SMALL = dict(model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32, batch_size=32,
             epochs=2, precise_bn_batches=1, progress=False)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's state is a process-wide singleton: a test that runs another precision starts and ends afresh."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_picks_the_device_and_only_device_cpu_forces_cpu(monkeypatch):
    """MPS (or XPU, NPU, ...) is used, not forced to CPU; --device cpu and accelerate launch --cpu force CPU; several
    processes without a collective backend (MPS has none) join over gloo on CPU; fp16 is refused only on CPU."""
    import accelerate.utils

    from spsearch.train.launch import device_type, use_cpu
    from spsearch.train.loop import resolve_precision
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(accelerate.utils, 'is_mps_available', lambda *a, **k: True)
    assert not use_cpu('auto', {}) and device_type('auto', {}) == 'mps'
    assert use_cpu('cpu', {}) and device_type('cpu', {}) == 'cpu'
    assert use_cpu('auto', {'ACCELERATE_USE_CPU': 'True'}) and not use_cpu('auto', {'ACCELERATE_USE_CPU': 'False'})
    assert use_cpu('auto', {'WORLD_SIZE': '2'})
    cfg = TrainConfig.from_dict(dict(SMALL, output=None, mixed_precision='fp16'))
    assert resolve_precision(cfg, {}) == ('fp16', '--mixed-precision')
    with pytest.raises(ConfigError, match='fp16 needs a GPU'):
        resolve_precision(cfg.replace(device='cpu'), {})
    monkeypatch.setattr(accelerate.utils, 'is_mps_available', lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert device_type('auto', {}) == 'cuda' and not use_cpu('auto', {'WORLD_SIZE': '2'})


def test_an_accelerate_config_asking_for_more_processes_is_said_in_one_line(tmp_path):
    """accelerate launches a MULTI_CPU config as one process, and plain python never reads a config: either is
    one line (an error under accelerate launch, a note under python), not a silent one-process run."""
    from spsearch.train.launch import launch_mismatch
    config = tmp_path / 'multi_cpu.yaml'
    config.write_text(yaml.safe_dump({'compute_environment': 'LOCAL_MACHINE', 'distributed_type': 'MULTI_CPU',
                                      'num_processes': 2, 'num_machines': 1, 'mixed_precision': 'no',
                                      'use_cpu': True}))
    launched = {'ACCELERATE_MIXED_PRECISION': 'no', 'ACCELERATE_USE_CPU': 'True'}
    launcher = ['python', '/venv/bin/accelerate', 'launch', '--config_file', str(config), 'train.py']
    message, is_error = launch_mismatch(1, launched, launcher)
    assert is_error and '\n' not in message
    assert f'{config} asks for 2 MULTI_CPU processes but accelerate launch started 1' in message
    assert 'accelerate launch --multi_gpu --num_processes 2' in message
    message, is_error = launch_mismatch(1, {}, [], default_config=config)
    assert not is_error and 'plain python runs 1 process' in message
    assert launch_mismatch(2, launched, launcher) is None
    assert launch_mismatch(1, launched, [*launcher[:3], '--num_processes', '1', *launcher[3:]]) is None
    assert launch_mismatch(1, {}, [], default_config=tmp_path / 'none.yaml') is None
    # the script's own arguments are not the launcher's
    assert launch_mismatch(1, launched, ['python', '-m', 'accelerate.commands.launch', 'train.py', '--num_processes',
                                         '4'], default_config=tmp_path / 'none.yaml') is None


@pytest.mark.slow
def test_accelerate_config_files_really_run_two_processes_or_say_why_not(tmp_path):
    """A config file with 2 processes (distributed_type MULTI_GPU: on CPU too, over gloo) runs 2 processes and the
    final line is printed once; a MULTI_CPU one, which accelerate launches as 1 process, is refused in one line
    before anything is written."""
    base = {'compute_environment': 'LOCAL_MACHINE', 'num_processes': 2, 'num_machines': 1, 'machine_rank': 0,
            'mixed_precision': 'no', 'gpu_ids': 'all', 'main_process_port': 29531}
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore', 'PYTHONPATH': str(ROOT)}
    argv = cli_args(dict(SMALL, epochs=1)) + ['--progress']
    runs = {}
    for kind in ('MULTI_GPU', 'MULTI_CPU'):
        config = tmp_path / f'{kind}.yaml'
        config.write_text(yaml.safe_dump({**base, 'distributed_type': kind, 'use_cpu': kind == 'MULTI_CPU'}))
        runs[kind] = subprocess.run(
            [sys.executable, '-m', 'accelerate.commands.launch', '--config_file', str(config), str(ROOT / 'train.py'),
             *argv, '--output', str(tmp_path / kind)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    ok = runs['MULTI_GPU']
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / 'MULTI_GPU' / 'summary.json').read_text())['num_processes'] == 2
    assert len([line for line in ok.stdout.splitlines() if line.startswith('finished 1 epochs')]) == 1, ok.stdout
    assert len([line for line in ok.stdout.splitlines() if line.startswith('epoch 1/1 ')]) == 1, ok.stdout
    refused = runs['MULTI_CPU']  # train.py exits 2; accelerate's launcher reports that with its own traceback, exit 1
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'asks for 2 MULTI_CPU processes but accelerate launch started 1' in errors[0], \
        refused.stderr[-3000:]
    assert 'returned non-zero exit status 2' in refused.stderr
    assert not (tmp_path / 'MULTI_CPU').exists()


def test_log_with_a_missing_tracker_is_one_line_naming_pip_install(tmp_path, capsys, monkeypatch):
    import accelerate.tracking
    monkeypatch.setattr(accelerate.tracking, 'get_available_trackers', lambda: [])
    for asked, wanted in ((['tensorboard'], 'pip install tensorboard'), (['wandb', 'comet_ml'], 'pip install wandb '
                                                                                              'comet-ml'),
                          (['all'], 'no experiment tracker is installed; pip install tensorboard')):
        out = tmp_path / asked[0]
        code, stdout, err = run_main(cli_args(dict(SMALL, log_with=asked)) + ['--output', str(out)], capsys)
        assert code == 2 and err.count('\n') == 1 and wanted in err, err
        assert not out.exists()
    code, _, err = run_main(cli_args(dict(SMALL, log_with=['tensorboard'])) + ['--output', 'none'], capsys)
    assert code == 2 and 'give --output' in err
    # a search checks its retrains' trackers before it starts, not after the search
    from spsearch.cli import run_cli
    from spsearch.search import cli as search_cli
    out = tmp_path / 'search'
    code = run_cli(lambda: search_cli.main(['-c', str(ROOT / 'configs/search/quick.yaml'), '--output', str(out),
                                            '--log-with', 'tensorboard']))
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and 'pip install tensorboard' in err, err
    assert not out.exists()


def _event_scalars(folder: Path) -> dict[str, list[int]]:
    """TensorBoard event files under ``folder`` as {tag: [steps]} (TFRecord framing, read with the proto that the
    installed writer ships)."""
    try:
        from tensorboard.compat.proto import event_pb2  # type: ignore[import-not-found]
    except ImportError:
        from tensorboardX.proto import event_pb2  # type: ignore[import-not-found]
    found: dict[str, list[int]] = {}
    for path in folder.rglob('events.out.tfevents.*'):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            length = int.from_bytes(data[pos:pos + 8], 'little')
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(int(event.step))
    return found


def test_log_with_tensorboard_logs_every_epoch_into_the_run_folder_and_no_secret(tmp_path, monkeypatch):
    from accelerate.tracking import get_available_trackers
    if 'tensorboard' not in [str(t) for t in get_available_trackers()]:
        pytest.skip('no TensorBoard writer installed (pip install tensorboard)')
    monkeypatch.setenv('WANDB_API_KEY', 'sk-test-secret-1234')
    out = tmp_path / 'run'
    result = train(TrainConfig.from_dict(dict(SMALL, log_with=['tensorboard'], output=str(out))))
    assert result.epochs_run == 2
    scalars = _event_scalars(out / 'spsearch')
    for tag in ('top1', 'val_loss', 'train_loss', 'lr'):
        assert scalars.get(tag) == [1, 2], scalars
    assert yaml.safe_load((out / 'args.yaml').read_text())['log_with'] == ['tensorboard']
    written = [p.read_bytes() for p in out.rglob('*') if p.is_file()]
    assert written and not [b for b in written if b'sk-test-secret-1234' in b]


@pytest.mark.filterwarnings('ignore:bf16 autocast on this CPU')
def test_the_precision_that_ran_is_in_args_yaml_and_summary(tmp_path, monkeypatch, fresh_accelerate_state):
    """accelerate launch --mixed_precision bf16 (ACCELERATE_MIXED_PRECISION) without our flag: args.yaml says bf16,
    so -c args.yaml repeats the run as it ran."""
    monkeypatch.setenv('ACCELERATE_MIXED_PRECISION', 'bf16')
    out = tmp_path / 'run'
    train(TrainConfig.from_dict(dict(SMALL, epochs=1, train_samples=32, output=str(out))))
    assert yaml.safe_load((out / 'args.yaml').read_text())['mixed_precision'] == 'bf16'
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['mixed_precision'] == 'bf16' and summary['config']['mixed_precision'] == 'bf16'


def test_retrains_keep_the_searchs_accelerate_settings():
    """The precision, CPU choice, dynamo backend and process count of the search's own launch reach each retrain's
    config and accelerate launch line (the child's environment is cleaned of the launch variables)."""
    from spsearch.search.retraining import _default_processes, clean_env, launch_command, launch_settings
    cfg = TrainConfig.from_dict(dict(SMALL, output=None))
    env = {'ACCELERATE_MIXED_PRECISION': 'bf16', 'ACCELERATE_USE_CPU': 'True', 'ACCELERATE_DYNAMO_BACKEND': 'NO'}
    settings = launch_settings(cfg, env)
    assert settings == {'mixed_precision': 'bf16', 'device': 'cpu', 'dynamo_backend': 'no'}
    assert launch_settings(cfg.replace(mixed_precision='bf16'), {})['mixed_precision'] == 'bf16'
    assert launch_settings(cfg, {})['device'] == 'auto'
    cmd = launch_command(Path('r.yaml'), 2, False, mixed_precision=settings['mixed_precision'])
    assert cmd[cmd.index('--mixed_precision') + 1] == 'bf16' and '--multi_gpu' in cmd
    assert _default_processes({'WORLD_SIZE': '2'}) == 2
    assert _default_processes({}) == max(1, torch.cuda.device_count())
    assert not any(k.startswith('ACCELERATE_') for k in clean_env())


def test_timm_plugins_run_needs_a_script(capsys):
    from timm_plugins.run import main
    assert main([]) == 2 and capsys.readouterr().err.startswith('error: no script given')
    assert main(['no/such/validate.py']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not a file' in err


TIMM_SCRIPTS = os.environ.get('TIMM_SCRIPTS', '')
"""A pytorch-image-models checkout (its scripts are not in the timm wheel or sdist)."""


@pytest.mark.parametrize('script', ['validate.py', 'benchmark.py'])
def test_timms_own_scripts_run_sp_models_through_timm_plugins_run(script, tmp_path):
    """``python -m timm_plugins.run validate.py|benchmark.py ...``: timm's scripts (which have no --device-modules)
    find the SP models; validate.py also loads a checkpoint of one and scores an ImageFolder."""
    path = Path(TIMM_SCRIPTS) / script
    if not TIMM_SCRIPTS or not path.is_file():  # (without it, the repository's own benchmark.py would be found)
        pytest.skip(f'timm\'s {script} not found: set TIMM_SCRIPTS to a pytorch-image-models checkout')
    common = ['--model', 'sp_resnet20', '--model-kwargs', 'sp_alpha=0.25', '--num-classes', '2', '--img-size', '32',
              '-b', '4', '--device', 'cpu']
    if script == 'validate.py':
        from PIL import Image
        for c in ('a', 'b'):
            (tmp_path / 'val' / c).mkdir(parents=True)
            for i in range(3):
                colour = (40 * i, 200 if c == 'a' else 20, 90)
                Image.new('RGB', (32, 32), colour).save(tmp_path / 'val' / c / f'{i}.png')
        weights = tmp_path / 'sp.pth'
        torch.save(timm.create_model('sp_resnet20', num_classes=2, sp_alpha=0.25).state_dict(), weights)
        args = [*common, '--data-dir', str(tmp_path), '--split', 'val', '-j', '0', '--checkpoint', str(weights)]
    else:
        args = [*common, '--bench', 'inference', '--num-warm-iter', '1', '--num-bench-iter', '2']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    done = subprocess.run([sys.executable, '-m', 'timm_plugins.run', str(path), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split('--result', 1)[1])
    result = result[0] if isinstance(result, list) else result
    assert result['model'] == 'sp_resnet20'
    if script == 'validate.py':
        assert 0 <= result['top1'] <= 100 and result['img_size'] == 32


def _holder_pid(folder: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Wait until ``proc`` holds ``folder`` (its pid in the lock file)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        lock = folder / '.lock'
        if lock.exists() and f'"pid": {proc.pid},' in lock.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f'{proc.args} never held {folder} (exit code {proc.poll()})')


@pytest.mark.slow
def test_a_second_train_on_one_output_is_refused_naming_the_first(tmp_path):
    """Two train.py on one new --output: the second exits 2 with one line naming the first's pid, before it writes;
    the first, paused meanwhile, finishes its run untouched."""
    out = tmp_path / 'run'
    argv = [sys.executable, str(ROOT / 'train.py'), *cli_args(dict(
        model='sp_resnet20', dataset='synthetic', img_size=16, train_samples=64, val_samples=32, batch_size=32,
        epochs=1, progress=False, workers=0)), '--output', str(out)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    first = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _holder_pid(out, first)
        second = run_while_paused(first, [*argv, '--seed', '7'], cwd=ROOT, env=env)  # it holds the folder meanwhile
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.count('\n') == 1 and second.stderr.startswith('error: --output ')
        assert f'is in use by pid {first.pid} (' in second.stderr and 'give another --output' in second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ''
    finally:
        end_process(first)
    assert yaml.safe_load((out / 'args.yaml').read_text())['seed'] != 7  # the first run's, not overwritten
    assert json.loads((out / 'summary.json').read_text())['epochs_run'] == 1


def test_weights_files_that_are_folders_or_empty_are_one_line_before_anything_is_written(tmp_path, capsys):
    """--pretrained-path / --initial-checkpoint naming a folder say so; an empty (torn) file is "cannot be read",
    not a misfit of the model; nothing is written."""
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    for flag, value, message in (('--pretrained-path', tmp_path, 'is a folder; give the weights file in it'),
                                 ('--initial-checkpoint', tmp_path, 'is a folder; give the file in it'),
                                 ('--pretrained-path', empty, 'cannot be read'),
                                 ('--grad-accum-steps', 9, 'needs at least 9 training batches')):
        out = tmp_path / 'out'
        code, _, err = run_main(cli_args(dict(SMALL, epochs=1)) + [flag, str(value), '--output', str(out)], capsys)
        assert code == 2 and err.count('\n') == 1 and message in err, err
        assert not out.exists()
