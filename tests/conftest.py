"""Fixtures shared by the stn_ext tests; plain helpers are in tests/_reference.py.

The `backend` fixture is the one test matrix: every test that takes it runs on each
implementation of the op. Emulated and interpreted backends are ~100x slower than compiled ones,
so they run a reduced matrix (pytest_collection_modifyitems below), chosen so that every mode,
padding, align_corners, dtype and shape class is still met.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton picks interpreted or compiled kernels when its decorators run, so this must precede
    # any import of stn_ext.triton_kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from _reference import (CONFIG_IDS, CONFIGS, SHAPES, Backend,  # noqa: E402
                        triton_interpreter_problem)


def _triton_param():
    try:
        import stn_ext.triton_kernels as triton_kernels
    except ImportError as error:
        return pytest.param(None, id="triton", marks=pytest.mark.skip(reason=f"no Triton: {error}"))
    if HAS_CUDA:
        return pytest.param(Backend("triton", "cuda"), id="triton", marks=pytest.mark.cuda)
    problem = (None if triton_kernels.INTERPRETED else
               "stn_ext.triton_kernels was imported before TRITON_INTERPRET=1 was set")
    problem = problem or triton_interpreter_problem()
    return pytest.param(Backend("triton", "cpu"), id="triton-interpreted",
                        marks=pytest.mark.skipif(problem is not None, reason=problem or ""))


# The CUDA tests skip only when there is no GPU: on a GPU machine an extension built without its
# CUDA kernels must fail, not skip.
BACKENDS = [
    pytest.param(Backend("cpu", "cpu"), id="cpu"),
    pytest.param(Backend("cuda", "cuda"), id="cuda", marks=pytest.mark.cuda),
    pytest.param(Backend("cuda-emulated", "cpu"), id="cuda-emulated"),
    _triton_param(),
]

# The backends of the general ops' tests (stn_ext.grid_sample, and affine_grid_sample beyond
# the fused op: 5-D, bicubic, fill values): every one; Triton runs some combinations and must
# refuse the others (tests/test_grid_sample.py's TritonGeneralOps).
GENERAL_BACKENDS = BACKENDS

# The reduced matrix of slow backends: a test case runs there if each of its parameters below
# takes one of the listed values (parameters not listed take any value), or if its shape is
# FULL_MATRIX_SHAPE, on which every config and dtype runs.
FULL_MATRIX_SHAPE = SHAPES["up-nonsquare"]
SLOW_BACKEND_VALUES = {
    # bilinear zeros, bilinear reflection with align_corners, nearest border
    "config": {"bilinear-zeros-noac", "bilinear-reflection-ac", "nearest-border-noac"},
    "dtype": {torch.float64, torch.float32},
}


def _in_reduced_matrix(item) -> bool:
    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    if (params.get("shape"), params.get("size")) == FULL_MATRIX_SHAPE:
        return True
    for name, values in SLOW_BACKEND_VALUES.items():
        if name not in params:
            continue
        if name == "config" and params[name] not in CONFIGS:
            continue  # another test matrix's configs (tests/test_grid_sample.py's): all run
        value = CONFIG_IDS[CONFIGS.index(params[name])] if name == "config" else params[name]
        if value not in values:
            return False
    return True


def pytest_collection_modifyitems(config, items):
    kept, deselected = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        backend = params.get("backend", params.get("general_backend"))
        if isinstance(backend, Backend) and backend.slow and not _in_reduced_matrix(item):
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return request.param


@pytest.fixture(params=GENERAL_BACKENDS)
def general_backend(request) -> Backend:
    return request.param


@pytest.fixture
def num_threads():
    """Restores the intra-op thread count a test changes."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)

