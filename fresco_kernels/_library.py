"""The `fresco` torch.library namespace: schemas are defined here (Python), kernels per device elsewhere."""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Callable

import torch

from . import _config

lib = torch.library.Library("fresco", "FRAGMENT")

# which implementation serves each op on CPU ("cpp" | "reference"), for `fresco info`
CPU_IMPL: dict = {}
_PY_CPU: set = set()

_cpp_state = {"loaded": False, "tried": False, "reason": "not tried"}


def load_cpp() -> bool:
    """Load the compiled CPU kernels once, softly: on any problem warn and fall back to the reference."""
    if _cpp_state["tried"]:
        return _cpp_state["loaded"]
    _cpp_state["tried"] = True
    here = os.path.dirname(__file__)
    libs = glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd"))
    if _config.NO_CPP:
        _cpp_state["reason"] = "disabled by FRESCO_NO_CPP=1"
        return False
    if not libs:
        _cpp_state["reason"] = "not built (install without FRESCO_BUILD_CPP=0 to build it)"
        return False
    try:
        with open(os.path.join(here, "_C_build.json")) as f:
            built_for = json.load(f)["torch"]
    except (OSError, ValueError, KeyError):
        built_for = None
    running = torch.__version__.split("+")[0]
    if built_for != running:
        _cpp_state["reason"] = f"built for torch {built_for}, running {running}: rebuild it"
        warnings.warn(f"fresco_kernels: C++ CPU kernels {_cpp_state['reason']}; using the PyTorch reference on CPU")
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError) as e:
        _cpp_state["reason"] = f"failed to load: {e}"
        warnings.warn(f"fresco_kernels: C++ CPU kernels {_cpp_state['reason']}; using the PyTorch reference on CPU")
        return False
    _cpp_state.update(loaded=True, reason="loaded")
    return True


def cpp_status() -> str:
    load_cpp()
    return _cpp_state["reason"]


def has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fresco::{name}", key)


def impl_cpu(name: str, fallback: Callable) -> str:
    """Use the C++ kernel for `fresco::name` on CPU if the library provides one, else `fallback`.

    Returns which one is in use ("cpp" or "reference")."""
    load_cpp()
    if not has_kernel(name, "CPU"):
        lib.impl(name, fallback, "CPU")
        _PY_CPU.add(name)
    CPU_IMPL[name] = "cpp" if _cpp_state["loaded"] and name not in _PY_CPU else "reference"
    return CPU_IMPL[name]


def impl_cuda(name: str, launcher: Callable) -> None:
    lib.impl(name, launcher, "CUDA")


