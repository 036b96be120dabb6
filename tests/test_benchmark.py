"""benchmark.py and the shared CLI plumbing: output keys, CSV/report files, memory probe, bad input."""
from __future__ import annotations

import argparse
import csv
import json

import pytest

import benchmark
from spsearch.cli import CliError, parse_kwargs, parse_with_config, run_cli

R20 = ['--model', 'sp_resnet20', '--baseline', 'sp_resnet20', '--baseline-kwargs', 'sp_alpha=vanilla']


def test_benchmark_json_csv_and_report(tmp_path, capsys):
    report = tmp_path / 'bench.md'
    rc = benchmark.main([*R20, '--batch-size', '2', '3', '--fused', 'both', '--warmup', '1', '--repeats', '2',
                         '--no-memory', '--json', '--csv-dir', str(tmp_path / 'csv'), '--report', str(report)])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    assert [(r['batch_size'], r['fused']) for r in rows] == [(2, False), (2, True), (3, False), (3, True)]
    for r in rows:
        for key in ('model', 'baseline', 'batch_size', 'latency_ms', 'baseline_latency_ms', 'ratio', 'peak_mem_mb'):
            assert key in r
        assert r['ratio'] == pytest.approx(r['latency_ms'] / r['baseline_latency_ms'])
        assert r['macs_ratio'] == pytest.approx(18_070_816 / 41_620_160)
    files = sorted(p.name for p in (tmp_path / 'csv').iterdir())
    assert files == ['inference_cpu_bs2_fp32.csv', 'inference_cpu_bs2_fp32_fused.csv',
                     'inference_cpu_bs3_fp32.csv', 'inference_cpu_bs3_fp32_fused.csv']
    benchmark.main([*R20, '--batch-size', '2', '--warmup', '0', '--repeats', '1', '--no-memory',
                    '--csv-dir', str(tmp_path / 'csv')])
    with open(tmp_path / 'csv' / 'inference_cpu_bs2_fp32.csv') as f:
        assert len(list(csv.DictReader(f))) == 2  # appended, header once
    text = report.read_text()
    assert text.startswith('## sp_resnet20 vs sp_resnet20') and '- Commit:' in text and '| latency ratio |' in text


def test_benchmark_in_onnxruntime(tmp_path, capsys):
    """--runtime onnxruntime: both models exported (BNs folded) and timed in onnxruntime, interleaved."""
    rc = benchmark.main([*R20, '--runtime', 'onnxruntime', '--batch-size', '2', '--warmup', '1', '--repeats', '2',
                         '--json', '--csv-dir', str(tmp_path)])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row['runtime'] == 'onnxruntime' and row['fused'] is True and row['condition'].endswith('_fused_ort')
    assert row['latency_ms'] > 0 and row['ratio'] == pytest.approx(row['latency_ms'] / row['baseline_latency_ms'])
    assert row['peak_mem_mb'] is None


@pytest.mark.slow  # fresh-process memory probes
def test_benchmark_train_with_memory_probe(capsys, tmp_path):
    rc = benchmark.main([*R20, '--bench', 'train', '--batch-size', '4', '--warmup', '0', '--repeats', '1',
                         '--json', '--csv-dir', str(tmp_path)])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row['bench'] == 'train'
    assert row['peak_mem_mb'] > 0 and row['baseline_peak_mem_mb'] > 0
    assert row['memory_ratio'] == pytest.approx(row['peak_mem_mb'] / row['baseline_peak_mem_mb'])


@pytest.mark.parametrize('argv,message', [
    (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
    (['--model', 'sp_resnet20', '--model-kwargs', 'sp_alpha'], 'key=value'),
    (['--model', 'sp_resnet20', '--model-kwargs', 'sp_alpha=2'], 'out of range'),
    (['--model', 'sp_resnet20', '--batch-size', '0'], '--batch-size'),
    (['--model', 'sp_resnet20', '--memory-repeats', '0'], '--memory-repeats'),
    (['--model', 'sp_resnet20', '--device', 'cuda:0'], 'CUDA'),
    (['--model', 'sp_resnet20', '--device', 'tpu'], "--device 'tpu' is not a torch device"),
    (['--model', 'sp_resnet20', '--device', 'mps'], '--device mps is not supported'),
    (['--model', 'sp_resnet20', '--runtime', 'onnxruntime', '--bench', 'train'], 'drop --bench train/both'),
    (['--model', 'sp_resnet20', '--runtime', 'onnxruntime', '--channels-last'], 'drop --channels-last'),
])
def test_benchmark_bad_input_is_one_line_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    assert run_cli(lambda: benchmark.main([*argv, '--no-memory'])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and message in err and '\n' not in err


def test_parse_kwargs():
    assert parse_kwargs(['sp_alpha=vanilla', 'sp_groups=(2,2,4,8)', 'x=1/2', 'y=(0.5,vanilla)']) == {
        'sp_alpha': 'vanilla', 'sp_groups': (2, 2, 4, 8), 'x': '1/2', 'y': '(0.5,vanilla)'}
    with pytest.raises(CliError):
        parse_kwargs(['=3'])


def test_parse_with_config(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument('-c', '--config')
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--lr', type=float, default=0.1)
    good = tmp_path / 'good.yaml'
    good.write_text('epochs: 5\nlr: 0.5\n')
    args = parse_with_config(parser, ['-c', str(good), '--lr', '0.2'])
    assert (args.epochs, args.lr) == (5, 0.2)
    bad_key = tmp_path / 'bad_key.yaml'
    bad_key.write_text('epochs: 5\nlearning_rate: 1\n')
    with pytest.raises(CliError, match='unknown key.*learning_rate'):
        parse_with_config(parser, ['-c', str(bad_key)])
    broken = tmp_path / 'broken.yaml'
    broken.write_text('epochs: [5\n')
    with pytest.raises(CliError, match='not valid YAML'):
        parse_with_config(parser, ['-c', str(broken)])
    with pytest.raises(CliError, match='does not exist'):
        parse_with_config(parser, ['-c', str(tmp_path / 'missing.yaml')])


def test_benchmark_sp_options_tag_the_condition(tmp_path, capsys):
    rc = benchmark.main([*R20, '--bench', 'both', '--batch-size', '2', '--warmup', '0', '--repeats', '1', '--json',
                         '--no-memory', '--sp-impl', 'tune', '--sp-recompute', '--malloc', 'keep',
                         '--csv-dir', str(tmp_path)])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{')]
    assert [r['condition'] for r in rows] == ['inference_cpu_bs2_fp32_sptune_recompute_mallockeep',
                                              'train_cpu_bs2_fp32_sptune_recompute_mallockeep']
    assert all(r['sp_impl'] == 'tune' and r['sp_recompute'] and r['malloc'] == 'keep' for r in rows)
