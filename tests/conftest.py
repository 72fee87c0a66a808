"""Test set-up: Triton's interpreter when there is no CUDA, NaN-filled fresh allocations, the `cuda` marker."""
import os

import torch

if not torch.cuda.is_available():
    # must be set before any @triton.jit function is created (fresco_kernels is imported by the test modules)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


# Triton-interpreter parity grids: in the quick loop (`-m "not slow"`) one case per shape stays, the rest of the
# grid (1-2 s each in the interpreter) is marked slow; `make test` runs them all, on CUDA the `cuda` tests cover them.
QUICK_TRITON_CASE = {
    "test_trajectory_attention.py::test_matches_reference_fp32": ("seg", "mixed"),
    "test_flow_warp.py::test_matches_reference_fp32": ("flow_kind", "random"),
}


def _trim_triton_grid(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("impl") != "triton":
        return False
    key = item.nodeid.split("[")[0].split("/")[-1]
    keep = QUICK_TRITON_CASE.get(key)
    return keep is not None and params.get(keep[0]) != keep[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _trim_triton_grid(item):
            item.add_marker(pytest.mark.slow)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _nan_filled(fn):
    def wrapper(*args, **kwargs):
        t = fn(*args, **kwargs)
        if t.is_floating_point() and t.numel() and not isinstance(t, torch._subclasses.FakeTensor):
            t.fill_(float("nan"))
        return t
    return wrapper


@pytest.fixture(autouse=True)
def nan_fill_empty(monkeypatch):
    """Every fresh float tensor from torch.empty* starts as NaN, so an element a kernel never writes cannot pass."""
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _nan_filled(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))
    yield


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    yield


def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One intra-op thread for a test: bit-identical floats where reductions would split across threads (golden
    hashes, Ray actors' single thread)."""
    yield from _single_thread()


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a whole module: tiny-model calls are dominated by OpenMP start-up and spinning on a
    shared machine, so one thread is faster."""
    yield from _single_thread()
