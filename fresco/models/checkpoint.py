"""Reading a weights file the user names (gmflow_path, sod_path, raft_path, the annotators, LoRAs): a file that is
not a checkpoint, or holds other names or shapes than the network's, is a one-line ValueError naming the key,
never the unpickler's or load_state_dict's own error (a traceback, or a message of many lines)."""
from __future__ import annotations

import os
from typing import Union

import torch


def _one_line(e: BaseException, limit: int = 300) -> str:
    """The error's type and message on one line (load_state_dict lists its mismatches on several), cut to
    `limit` characters."""
    text = " ".join(str(e).split())
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_tensors(path: Union[str, os.PathLike], key: str):
    """torch.load(path) restricted to tensors (weights_only), on the CPU; ValueError naming `key` when the file
    cannot be read as one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler's errors have no common type (EOFError, IndexError, UnpicklingError..)
        raise ValueError(f"{key}: '{os.fspath(path)}' is not a readable PyTorch checkpoint ({_one_line(e)})"
                         ) from None


def load_into(module: torch.nn.Module, state: dict, path: Union[str, os.PathLike], key: str, **kw) -> None:
    """module.load_state_dict(state, **kw); ValueError naming `key` and the first mismatch when the names or
    shapes are not the network's."""
    try:
        module.load_state_dict(state, **kw)
    except (RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{key}: '{os.fspath(path)}' does not hold this network's weights "
                         f"({_one_line(e)}; {len(state) if isinstance(state, dict) else 0} tensors in the file)"
                         ) from None
