"""The intra-op CPU thread count of a render (the `threads` setting): torch's intra-op pool, which the C++ ops'
at::parallel_for also runs on, and OpenCV's pool. CPU float reductions split their sums across these threads, so
the same render gives the same bytes only at the same thread count (README, "Reproducibility")."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from .constants import MAX_THREADS


def valid(n: object) -> bool:
    """Whether `n` is a thread count a render may use: an int (not a bool) from 1 to MAX_THREADS."""
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_THREADS


def render_threads(state: dict, requested: Optional[int]) -> int:
    """The thread count of a render with state file data `state`: the count it recorded (a resumed render keeps
    the count it started with, since float reductions depend on it), else `requested`, else torch's now; recorded
    in `state`."""
    n = state.setdefault("threads", requested or torch.get_num_threads())
    if requested not in (None, n):
        print(f"fresco: note: threads: resuming with the {n} thread(s) this render started with, not {requested}",
              file=sys.stderr, flush=True)
    return n


def current() -> tuple[int, int]:
    """(torch's intra-op threads, OpenCV's threads) now."""
    import cv2
    return torch.get_num_threads(), cv2.getNumThreads()


def set_threads(n: int) -> tuple[int, int]:
    """Use `n` intra-op threads in torch (so in the C++ ops too) and OpenCV; returns the counts before, for
    `restore`."""
    import cv2
    if not valid(n):
        raise ValueError(f"threads: a number of threads from 1 to {MAX_THREADS}, got {n!r}")
    before = current()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    cv2.setNumThreads(n)
    return before


def restore(before: tuple[int, int]) -> None:
    """Undo `set_threads` with the counts it returned."""
    import cv2
    if torch.get_num_threads() != before[0]:
        torch.set_num_threads(before[0])
    cv2.setNumThreads(before[1])


@contextmanager
def intra_op_threads(n: Optional[int]) -> Iterator[None]:
    """`n` threads inside the block (None: leave the counts as they are)."""
    if n is None:
        yield
        return
    before = set_threads(n)
    try:
        yield
    finally:
        restore(before)
