import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / 'data' / 'golden'
sys.path.insert(0, str(GOLDEN))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    return GOLDEN
