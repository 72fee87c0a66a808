"""Non-keyframes from the two stylised keyframes around them (SEMANTICS.md "Non-keyframes"): both keys are warped to
the frame along optical flow and blended with weights that fall linearly with distance and are zero where a warp is
occluded. Replaces the published Ebsynth step; runs on the GPU when the tensors are there; streams frames."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from fresco_kernels import flow_warp, forward_backward_check
from fresco_kernels.occlusion import PHOTO_THRESHOLD

from ..models.flow import FlowEstimator


def occlusion(fwd: torch.Tensor, bwd: torch.Tensor, frame: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] 0/1 occlusion on `frame`'s grid of the warp `warp(other, fwd)` (SEMANTICS.md "Flow and
    occlusion"): `fresco_kernels.forward_backward_check` on the pair (frame, other), OR the mean over RGB of
    |frame - warp(other, fwd)| > 0.25 * 255. fwd: frame -> other, bwd: other -> frame; frames in 0..255."""
    fb_occ, _ = forward_backward_check(fwd, bwd)
    photo = (frame - flow_warp(other, fwd)).abs().mean(dim=1) > PHOTO_THRESHOLD * 255
    return (fb_occ.bool() | photo).float().unsqueeze(1)


def blend_from_keys(frames: torch.Tensor, t: torch.Tensor,
                    src_a: torch.Tensor, out_a: torch.Tensor,
                    src_b: torch.Tensor | None, out_b: torch.Tensor | None,
                    flow: FlowEstimator) -> torch.Tensor:
    """Stylise in-between frames from key a (before) and key b (after).

    frames: [M, 3, H, W] source frames in 0..255; t: [M] position in (0, 1) between a (0) and b (1);
    src_a/out_a: [3, H, W] key a's source and stylised frame; src_b/out_b likewise, or None when there is no later
    key (then key a alone is warped, occlusions included). Returns [M, 3, H, W] float in 0..255.
    Weights: w_a = (1 - t)(1 - occ_a), w_b = t (1 - occ_b); where both are zero the distance weights alone blend
    the two warps (no key sees the pixel; the nearer one dominates)."""
    m = frames.shape[0]
    a_src = src_a.expand(m, -1, -1, -1)
    to_a, from_a = flow(frames, a_src), flow(a_src, frames)
    warp_a = flow_warp(out_a.expand(m, -1, -1, -1).to(frames.dtype), to_a)
    if src_b is None:
        return warp_a
    b_src = src_b.expand(m, -1, -1, -1)
    to_b, from_b = flow(frames, b_src), flow(b_src, frames)
    warp_b = flow_warp(out_b.expand(m, -1, -1, -1).to(frames.dtype), to_b)
    t = t.view(m, 1, 1, 1).to(frames)
    w_a = (1 - t) * (1 - occlusion(to_a, from_a, frames, a_src))
    w_b = t * (1 - occlusion(to_b, from_b, frames, b_src))
    total = w_a + w_b
    blended = (w_a * warp_a + w_b * warp_b) / total.clamp_min(1e-12)
    return torch.where(total > 0, blended, (1 - t) * warp_a + t * warp_b)


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).float()


def _to_image(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def propagate(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray],
              flow: FlowEstimator, device: torch.device | str = "cpu", chunk: int = 8) -> Iterator[np.ndarray]:
    """Yield the whole stylised video frame by frame (exactly one output per input frame).

    frames: the source frames (HxWx3 uint8, processing size) as a stream; keys: keyframe indices (keys[0] = 0);
    load_key(k): the stylised keyframe k (HxWx3 uint8). Holds the frames between two keys (at most one gap) and
    two stylised keys; works on `chunk` in-between frames at a time on `device`."""
    keys = list(keys)
    if not keys or keys[0] != 0:
        raise ValueError(f"keys: must start with frame 0, got {keys[:3]}")
    device = torch.device(device)
    key_set = set(keys)
    a = None
    src_a = out_a = None
    pending: list[np.ndarray] = []

    def flush(b: int | None, src_b: torch.Tensor | None, out_b: torch.Tensor | None) -> Iterator[np.ndarray]:
        span = (b - a) if b is not None else None
        for s in range(0, len(pending), chunk):
            part = pending[s:s + chunk]
            x = torch.stack([_to_tensor(f, device) for f in part])
            js = torch.arange(s + 1, s + 1 + len(part), dtype=torch.float32)
            t = js / span if span else torch.zeros_like(js)
            with torch.no_grad():
                out = blend_from_keys(x, t, src_a, out_a, src_b, out_b, flow)
            for o in out:
                yield _to_image(o)

    n = 0
    for i, img in enumerate(frames):
        n = i + 1
        if i not in key_set:
            if a is None:
                raise ValueError("keys: frame 0 must be a keyframe")
            pending.append(img)
            continue
        src_b, out_b = _to_tensor(img, device), _to_tensor(load_key(i), device)
        if out_b.shape != src_b.shape:
            raise ValueError(f"load_key({i}): stylised key is {tuple(out_b.shape)}, frame is {tuple(src_b.shape)}")
        if a is not None:
            yield from flush(i, src_b, out_b)
        pending = []
        yield _to_image(out_b)
        a, src_a, out_a = i, src_b, out_b
    if a is None:
        raise ValueError("frames: the stream is empty")
    if keys[-1] >= n:
        raise ValueError(f"keys: key {keys[-1]} is past the last frame ({n - 1})")
    yield from flush(None, None, None)
