"""spsearch.timing: captured layer inputs, spans inside a forward pass, interleaved steps, peak memory."""
from __future__ import annotations

import torch
from torch import nn

from spsearch.timing import capture_inputs, process_peak_memory_mb, summarize, time_interleaved, time_spans


def small_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5),
                         nn.Flatten(), nn.Linear(5 * 6 * 6, 2)).train()


def test_capture_inputs_returns_each_named_modules_input():
    torch.manual_seed(0)
    model = small_model()
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    inputs = capture_inputs(model, x, ['2', '0', '5'])
    assert list(inputs) == ['2', '0', '5']
    with torch.no_grad():
        torch.testing.assert_close(inputs['0'], x)
        torch.testing.assert_close(inputs['2'], model[1](model[0](x)))
        assert inputs['5'].shape == (2, 5 * 6 * 6)
    assert inputs['0'].is_contiguous(memory_format=torch.channels_last)
    assert inputs['0'].data_ptr() != x.data_ptr() and not any(t.requires_grad for t in inputs.values())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_time_spans_one_median_per_span_and_the_rest():
    model = small_model().eval()
    ticks = iter(range(10 ** 6))
    medians, rest = time_spans(model, torch.randn(2, 3, 6, 6), [('0', '1'), ('3', '3'), ('5', '5')], warmup=1,
                               repeats=3, clock=lambda: float(next(ticks)))
    # a fake clock ticking once per reading: a span reads it twice, the forward twice around them all
    assert medians == [1000.0, 1000.0, 1000.0]
    assert rest == 7000.0 - 3000.0
    medians, rest = time_spans(model, torch.randn(2, 3, 6, 6), [('0', '3'), ('5', '5')], warmup=0, repeats=2)
    assert len(medians) == 2 and all(m >= 0 for m in medians) and rest >= 0
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_time_interleaved_alternates_the_order_and_summarize():
    calls: list[str] = []
    times = time_interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, warmup=1, repeats=2)
    assert calls == ['a', 'b', 'b', 'a', 'a', 'b']
    assert {k: len(v) for k, v in times.items()} == {'a': 2, 'b': 2}
    stats = summarize([0.001, 0.003, 0.002], batch_size=4)
    assert (stats.median_ms, stats.min_ms, stats.repeats) == (2.0, 1.0, 3)
    assert stats.images_per_s == 2000.0


def test_process_peak_memory_is_positive_on_cpu():
    assert process_peak_memory_mb('cpu') > 0
