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


@pytest.fixture(autouse=True, scope='session')
def _fused_on_every_cpu():
    """The CPU inference fast path (models/fused.py) is chosen automatically only on CPUs with AVX-512; the tests
    run it, and compare it with the plain blocks, on every CPU."""
    from gpvit.models import fused
    fast, fused._OneDNN.fast_cpu = fused._OneDNN.fast_cpu, True
    yield
    fused._OneDNN.fast_cpu = fast
