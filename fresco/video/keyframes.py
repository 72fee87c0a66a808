"""Which frames get diffused and in which batches: the paper's adaptive keyframe selection (Alg. 1) or a fixed
interval, and the anchored batch plan for videos of any length (SEMANTICS.md "Frames" and "Long videos")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np


def _blurred(img: np.ndarray) -> np.ndarray:
    # the published code blurs the uint8 frame (9x9 Gaussian, sigma from the kernel size), then maps to [-1, 1]
    return cv2.GaussianBlur(img, (9, 9), 0.0).astype(np.float64) / 255.0 * 2.0 - 1.0


def frame_errors(frames: Iterable[np.ndarray]) -> list[float]:
    """err[i] = MSE between the blurred frames i-1 and i in [-1, 1] (err[0] = 0), from a stream of HxWx3 uint8
    frames at the processing size. Holds one previous frame at a time."""
    errors: list[float] = []
    prev = None
    for img in frames:
        cur = _blurred(img)
        if prev is None:
            errors.append(0.0)
        else:
            if cur.shape != prev.shape:
                raise ValueError(f"frames: frame {len(errors)} is {cur.shape} but frame 0 is {prev.shape}")
            errors.append(float(np.mean((prev - cur) ** 2)))
        prev = cur
    return errors


def _check_intervals(s_min: int, s_max: int) -> None:
    if isinstance(s_min, bool) or not isinstance(s_min, (int, np.integer)) or s_min < 1:
        raise ValueError(f"mininterv (s_min): must be an integer >= 1, got {s_min!r}")
    if isinstance(s_max, bool) or not isinstance(s_max, (int, np.integer)) or s_max < 1:
        raise ValueError(f"maxinterv (s_max): must be an integer >= 1, got {s_max!r}")
    if s_min > s_max:
        raise ValueError(f"mininterv/maxinterv: s_min ({s_min}) must be <= s_max ({s_max})")


def fixed_keyframes(n_frames: int, interval: int) -> list[int]:
    """range(0, n, interval): the published behaviour when s_min == s_max (the last frame is a key only when the
    interval divides n-1; frames after the last key are propagated from it alone)."""
    if n_frames < 1:
        raise ValueError(f"n_frames: {n_frames} must be >= 1")
    _check_intervals(interval, interval)
    return list(range(0, n_frames, interval))


def select_keyframes(errors: Sequence[float], s_min: int, s_max: int) -> list[int]:
    """Paper Alg. 1 as published. `errors` from `frame_errors` (one per frame). Keys start as {0, n-1}; errors of
    the first and last s_min frames are masked (-1); while the widest gap between keys exceeds s_max, the frame with
    the largest error becomes a key and the errors within s_min of it are masked; stop when all are masked."""
    _check_intervals(s_min, s_max)
    n = len(errors)
    if n < 1:
        raise ValueError("errors: need at least one frame")
    if s_min == s_max:
        return fixed_keyframes(n, s_min)
    if n == 1:
        return [0]
    err = np.array(errors, dtype=np.float64)
    keys = [0, n - 1]
    err[0:s_min] = -1
    err[-s_min:] = -1
    while max(b - a for a, b in zip(keys, keys[1:])) > s_max:
        k = int(np.argmax(err))
        if err[k] == -1:
            break
        # k >= s_min here (the first s_min errors are masked), so the slice never wraps around
        err[k - s_min:k + s_min] = -1
        keys.append(k)
        keys.sort()
    return keys


@dataclass(frozen=True)
class Batch:
    """One diffusion batch: `frames` are video frame indices in batch order; the first `n_anchors` (0 or 2: key 0
    and the previous batch's last key) are anchors whose latents come from the previous batch and whose outputs
    are not written again."""
    index: int
    frames: tuple[int, ...]
    n_anchors: int

    @property
    def new(self) -> tuple[int, ...]:
        return self.frames[self.n_anchors:]


def plan_batches(keys: Sequence[int], batch_size: int) -> list[Batch]:
    """Split keyframes into anchored batches (SEMANTICS.md "Long videos"): batch 1 = keys[0:N]; batch k >= 2 =
    [key 0, last key of batch k-1] + the next N-2 keys; when the final batch has fewer than 3 new keys it takes
    keys from the end of the previous one (at most N-2 new keys in all; a batch never drops below one new key, or
    two keys for the first). All keys fitting one batch gives one batch (no IndexError as in the published code)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 3:
        raise ValueError(f"batch_size: must be an integer >= 3 (2 anchors + at least 1 new key), got {batch_size!r}")
    keys = list(keys)
    if not keys:
        raise ValueError("keys: need at least one keyframe")
    if any(b <= a for a, b in zip(keys, keys[1:])) or keys[0] < 0:
        raise ValueError(f"keys: must be non-negative and strictly increasing, got {keys}")
    n = batch_size
    groups = [keys[:n]] + [keys[i:i + n - 2] for i in range(n, len(keys), n - 2)]
    if len(groups) > 1:
        want = min(3, n - 2)
        while len(groups) > 1 and len(groups[-1]) < want:
            prev = groups[-2]
            floor = 2 if len(groups) == 2 else 1
            if len(prev) <= floor:
                break
            groups[-1].insert(0, prev.pop())
    batches = [Batch(0, tuple(groups[0]), 0)]
    for i, g in enumerate(groups[1:], start=1):
        batches.append(Batch(i, (keys[0], groups[i - 1][-1], *g), 2))
    return batches
