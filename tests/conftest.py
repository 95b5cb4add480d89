from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(params=["tiny_1stage", "tiny_2stage"])
def official_reference(request):
    return OFFICIAL / request.param


@pytest.fixture
def one_thread():
    """Tiny models are many small ops: on a busy 2-core machine thread synchronisation would dominate their run time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
