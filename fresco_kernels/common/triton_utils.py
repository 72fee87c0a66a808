"""Shared host-side Triton helpers: interpreter detection, autotune lists that collapse to one config there, the
launchers' device check, and autotune pruning by the device's shared-memory limit."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Dict, Iterator, List

import torch

from .. import _config

if _config.HAS_TRITON:
    import triton
else:  # pragma: no cover - triton is a dependency of the fused CUDA path only
    triton = None

_accept_meta = {"on": False}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def configs(candidates: List["triton.Config"]) -> List["triton.Config"]:
    """The autotune list: all candidates on a GPU, only the first under the interpreter (it cannot autotune)."""
    return candidates[:1] if interpreting() else candidates


@contextlib.contextmanager
def accept_meta_tensors() -> Iterator[None]:
    """Inside this block the launchers also take meta tensors (shapes, strides and dtypes without data): the offline
    AOT check (benchmarks/aot_check.py) drives the real launch path with them and records the kernels instead of
    running them. Nothing can run on meta tensors: the check replaces the kernels' launch before calling."""
    previous, _accept_meta["on"] = _accept_meta["on"], True
    try:
        yield
    finally:
        _accept_meta["on"] = previous


def require_triton(t: torch.Tensor, op: str) -> None:
    if triton is None:
        raise RuntimeError(f"{op}: the fused path needs Triton (pip install 'triton>=3.6'); use backend='reference'")
    if t.device.type == "meta" and _accept_meta["on"]:
        return
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"{op}: Triton launchers run on CUDA tensors, or on CPU with TRITON_INTERPRET=1; got {t.device}")


def check_int32_extent(t: torch.Tensor, name: str) -> None:
    """Kernels index inside one image with int32 offsets (fewer registers than int64): `t` (one image, any strides)
    must span fewer than 2^31 elements."""
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()) if n > 0)
    if extent >= 2 ** 31:
        raise ValueError(f"{name}: one image spans {extent} elements; the Triton path needs fewer than 2^31 per image")


def max_shared_memory() -> int:
    """Bytes of shared memory one program may use on the current device (opt-in maximum per block)."""
    drv = triton.runtime.driver.active
    return int(drv.utils.get_device_properties(drv.get_current_device())["max_shared_mem"])


def prune_by_shared_memory(estimate: Callable[..., int]) -> Dict[str, Callable]:
    """`prune_configs_by=` for triton.autotune: drop the configs whose shared memory, `estimate(config, named_args,
    **kwargs)` bytes (an upper bound; benchmarks/aot_check.py checks it against the compiled kernels), exceeds the
    device's limit; the smallest estimate is kept if none fits."""
    def prune(candidates, named_args, **kwargs):
        if len(candidates) <= 1:
            return candidates
        limit = max_shared_memory()
        sized = [(estimate(c, named_args, **kwargs), c) for c in candidates]
        fitting = [c for s, c in sized if s <= limit]
        return fitting or [min(sized, key=lambda sc: sc[0])[1]]
    return {"early_config_prune": prune}
