import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Toy work runs on one torch thread (DESIGN.md, principle 8)."""
    torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
