"""Fixtures shared by the stn_ext tests; plain helpers are in tests/_reference.py."""
import pytest
import torch

from _reference import Backend

# Backends whose parity/gradient matrix runs here. "triton" has its own module
# (tests/test_triton.py); "torch" is the reference itself. The CUDA tests skip only when there is
# no GPU: on a GPU machine an extension built without its CUDA kernels must fail, not skip.
BACKENDS = [
    pytest.param(Backend("cpu", "cpu"), id="cpu"),
    pytest.param(Backend("cuda", "cuda"), id="cuda", marks=pytest.mark.cuda),
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def num_threads():
    """Restores the intra-op thread count a test changes."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def deterministic_algorithms():
    """Turns torch.use_deterministic_algorithms on for one test, then back to what it was."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)
