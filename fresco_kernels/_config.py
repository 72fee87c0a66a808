"""Feature detection, environment variables and the global fused/reference switch, in one place.

Environment variables (read once at import):
  FRESCO_BACKEND   default backend of the public functions: "fused" (the ops, default) or "reference"
                   (plain PyTorch, the spec). Change at run time with `set_backend` / `use_backend`.
  FRESCO_NO_CPP    "1": do not load the compiled C++ library; CPU ops then run the Python reference.
  FRESCO_BUILD_CPP "0" at install time: build no C++ (read by setup.py, listed here for completeness).
  TRITON_INTERPRET "1": Triton kernels run on CPU tensors (tests do this when there is no CUDA); read by Triton
                   itself and by `common.triton_utils.interpreting()`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Iterator, Optional

BACKENDS = ("fused", "reference")

HAS_TRITON = importlib.util.find_spec("triton") is not None
NO_CPP = os.environ.get("FRESCO_NO_CPP", "0") == "1"


def _check_backend(name: str, arg: str = "backend") -> str:
    if name not in BACKENDS:
        raise ValueError(f"{arg} must be one of {BACKENDS}, got {name!r}")
    return name


# checked where the switch is read (get_backend), not here: importing the package never fails, and a command
# reports a bad FRESCO_BACKEND as one line
_backend = os.environ.get("FRESCO_BACKEND", "fused")


def set_backend(name: str) -> None:
    """Select the implementation used by every public function: "fused" (ops) or "reference" (PyTorch)."""
    global _backend
    _backend = _check_backend(name)


def get_backend() -> str:
    return _check_backend(_backend, "FRESCO_BACKEND")  # set_backend/use_backend check theirs; this is the variable


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: `with use_backend("reference"): ...`."""
    global _backend
    previous, _backend = _backend, _check_backend(name)
    try:
        yield
    finally:
        _backend = previous


def resolve_backend(backend: Optional[str]) -> str:
    """The backend a call uses: its `backend=` argument if given, else the global switch."""
    return get_backend() if backend is None else _check_backend(backend)
