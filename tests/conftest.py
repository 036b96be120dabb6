"""Shared test setup: registers the SP models with timm and keeps torch to the machine's cores."""
from __future__ import annotations

import os

import torch

import timm_plugins  # noqa: F401  (registers the SP models)

torch.set_num_threads(max(1, min(4, len(os.sched_getaffinity(0)))))
