"""Shared test setup: registers the SP models with timm, keeps torch to the machine's cores; shared fixtures.

Helper functions live in ``helpers.py``; test modules never import each other.
"""
from __future__ import annotations

import os
import signal

import pytest
import torch

import timm_plugins  # noqa: F401  (registers the SP models)

torch.set_num_threads(max(1, min(4, len(os.sched_getaffinity(0)))))
# The tests that send Ctrl-C to a CLI need it to arrive as on a terminal: a shell's background job (CI started with
# `&`, nohup) starts with SIGINT ignored, which exec passes on to every child; a handled signal resets to default.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def one_thread():
    """Time with one thread: on a busy machine a descheduled second thread stalls every op (~100x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
