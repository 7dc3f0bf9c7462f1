"""Fixtures for the MRdIB tests: the toy backbone of mrdib_toy.py and a batch."""

from __future__ import annotations

import pytest
import torch
from mrdib_toy import ToyMM, make_batch

from mrdib_cli.models.base import Batch


@pytest.fixture
def toy() -> ToyMM:
    torch.manual_seed(0)
    return ToyMM()


@pytest.fixture
def batch() -> Batch:
    return make_batch()
