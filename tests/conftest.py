"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os

# Parallel test workers (pytest -n 2 on 2 cores) must not each start several BLAS/torch threads:
# oversubscribed cores make batched fits many times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA
