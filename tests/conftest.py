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


@pytest.fixture()
def one_thread():
    """Tiny GEMMs: one thread is several times faster than two fighting over them (and over a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

