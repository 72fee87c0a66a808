"""Shared Triton helpers: interpreter detection and autotune lists that collapse to one config there."""
from __future__ import annotations

import os
from typing import List

import torch

from .. import _config

if _config.HAS_TRITON:
    import triton
else:  # pragma: no cover - triton is a dependency of the fused CUDA path only
    triton = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def configs(candidates: List["triton.Config"]) -> List["triton.Config"]:
    """The autotune list: all candidates on a GPU, only the first under the interpreter (it cannot autotune)."""
    return candidates[:1] if interpreting() else candidates


def require_triton(t: torch.Tensor, op: str) -> None:
    if triton is None:
        raise RuntimeError(f"{op}: the fused path needs Triton (pip install 'triton>=3.6'); use backend='reference'")
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"{op}: Triton launchers run on CUDA tensors, or on CPU with TRITON_INTERPRET=1; got {t.device}")
