import os

import pytest
import torch

THREADS = int(os.environ.get("DIFFMATH_TEST_THREADS", "1"))
"""Torch threads for the test session: 1 (DESIGN.md, principle 8); set DIFFMATH_TEST_THREADS=2 to check that no
test depends on it."""


@pytest.fixture(autouse=True, scope="session")
def _threads_and_determinism():
    """Toy work runs on one torch thread; ``DIFFMATH_DETERMINISTIC=1`` runs the suite under
    ``torch.use_deterministic_algorithms(True)`` (the suite must pass either way)."""
    torch.set_num_threads(THREADS)
    if os.environ.get("DIFFMATH_DETERMINISTIC") == "1":
        torch.use_deterministic_algorithms(True)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
