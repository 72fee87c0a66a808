"""Argument checks shared by the public functions: every error names the argument and what is accepted."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _fmt(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_tensor(name: str, t, ndim: Optional[int] = None, dtypes: Optional[Sequence[torch.dtype]] = FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {list(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        accepted = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({accepted}), got {str(t.dtype).replace('torch.', '')}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[Optional[int]], hint: str = "") -> None:
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    if not ok:
        raise ValueError(f"{name} must have shape {_fmt(shape)}{hint}, got {list(t.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for n in names[1:]:
        if tensors[n].device != first.device:
            raise ValueError(f"{n} is on {tensors[n].device} but {names[0]} is on {first.device}: put them on one device")


def check_same_dtype(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for n in names[1:]:
        if tensors[n].dtype != first.dtype:
            raise TypeError(f"{n} has dtype {tensors[n].dtype} but {names[0]} has {first.dtype}: they must match")


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
