"""Non-keyframes from the two stylised keyframes around them (docs/algorithm.md, "Non-keyframes"). Three methods:
"patch" (default, the published Ebsynth step as an op: guided patch synthesis from both keys,
fresco.video.patch_propagation) and "flow": both keys are warped to the frame along optical flow and blended with
weights that fall linearly with distance and are zero where a warp is occluded (fresco_kernels' occlusion test:
forward-backward check OR photometric error); "auto" runs both on each gap and keeps, for the whole gap, the one
whose output rebuilds the gap's source frames better (`choose_by_rebuild`): each method applied to the keys'
SOURCE frames reconstructs the in-between source frames, an error measurable without the stylised target. Runs on the GPU when the tensors are there; streams frames. Every op
follows `backend` (None: the global switch)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from fresco_kernels import flow_warp, occlusion_from_flows

from ..constants import DEFAULT_PROPAGATION, PROPAGATION_METHODS
from ..models.flow import FlowEstimator, flow_pair
from ..patch_params import PatchParams
from .patch_propagation import patch_gap


def blend_from_keys(frames: torch.Tensor, t: torch.Tensor,
                    src_a: torch.Tensor, out_a: torch.Tensor,
                    src_b: torch.Tensor | None, out_b: torch.Tensor | None,
                    flow: FlowEstimator, backend: Optional[str] = None) -> torch.Tensor:
    """Stylise in-between frames from key a (before) and key b (after).

    frames: [M, 3, H, W] source frames in 0..255; t: [M] position in (0, 1) between a (0) and b (1);
    src_a/out_a: [3, H, W] key a's source and stylised frame; src_b/out_b likewise, or None when there is no later
    key (then key a alone is warped, occlusions included). Returns [M, 3, H, W] float in 0..255.
    Weights: w_a = (1 - t)(1 - occ_a), w_b = t (1 - occ_b) with occ the occlusion of the key's warp on the frame's
    grid; where both are zero the distance weights alone blend the two warps (no key sees the pixel; the nearer one
    dominates). backend: the fresco_kernels backend of the warps and occlusion tests (None: the global switch)."""
    m = frames.shape[0]
    a_src = src_a.expand(m, -1, -1, -1)
    if src_b is None:
        return flow_warp(out_a.expand(m, -1, -1, -1).to(frames.dtype), flow(frames, a_src), backend=backend)
    to_a, from_a = flow_pair(flow, frames, a_src)  # one bidirectional pass when the estimator has one
    warp_a = flow_warp(out_a.expand(m, -1, -1, -1).to(frames.dtype), to_a, backend=backend)
    b_src = src_b.expand(m, -1, -1, -1)
    to_b, from_b = flow_pair(flow, frames, b_src)
    warp_b = flow_warp(out_b.expand(m, -1, -1, -1).to(frames.dtype), to_b, backend=backend)
    t = t.view(m, 1, 1, 1).to(frames)
    occ_a = occlusion_from_flows(to_a, from_a, frames, targets=a_src, backend=backend)[0].unsqueeze(1)
    occ_b = occlusion_from_flows(to_b, from_b, frames, targets=b_src, backend=backend)[0].unsqueeze(1)
    w_a = (1 - t) * (1 - occ_a)
    w_b = t * (1 - occ_b)
    total = w_a + w_b
    blended = (w_a * warp_a + w_b * warp_b) / total.clamp_min(1e-12)
    return torch.where(total > 0, blended, (1 - t) * warp_a + t * warp_b)


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).float()


def _to_image(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


# auto: patch synthesis keeps a gap unless its rebuilt-source error exceeds the flow blend's by this factor (patch
# synthesis re-assembles the source from the best-matching patches, so its rebuild error reads low for the same
# quality of style; the factor offsets that bias)
AUTO_PATCH_MARGIN = 1.0


def rebuild_error(rebuilt: torch.Tensor, frame: torch.Tensor) -> float:
    """Mean squared RGB error (0..255, summed over channels) of a rebuilt source frame [3, H, W] against the
    frame [3, H, W]."""
    return float(((rebuilt - frame) ** 2).sum(0).mean())


def choose_by_rebuild(err_patch: float, err_flow: float, margin: float = AUTO_PATCH_MARGIN) -> str:
    """The method `auto` keeps for a gap from the two methods' mean rebuilt-source errors over it."""
    return "patch" if err_patch <= margin * err_flow else "flow"


def propagate(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray],
              flow: FlowEstimator, device: torch.device | str = "cpu", chunk: int = 8,
              backend: Optional[str] = None, method: str = DEFAULT_PROPAGATION,
              patch_params: Optional[PatchParams] = None, auto_log: Optional[list] = None) -> Iterator[np.ndarray]:
    """Yield the whole stylised video frame by frame (exactly one output per input frame).

    frames: the source frames (HxWx3 uint8, processing size) as a stream; keys: keyframe indices (keys[0] = 0);
    load_key(k): the stylised keyframe k (HxWx3 uint8); method: "patch" (guided patch synthesis from both keys,
    fresco.video.patch_propagation, `patch_params` its `PatchParams`; the better one on
    benchmarks/propagation_quality.py), "flow" (`blend_from_keys`) or "auto" (both; per gap the one whose
    rebuilt source is better, `choose_by_rebuild`; `auto_log`, if given, gets (key a, choice, patch error, flow
    error) per gap). Holds the frames between two keys (at most one
    gap) and two stylised keys; the flow blend works on `chunk` in-between frames at a time on `device`; both use
    the fresco_kernels `backend` (None: the global switch)."""
    if method not in PROPAGATION_METHODS:
        raise ValueError(f"method must be one of {PROPAGATION_METHODS}, got {method!r}")
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
        if method == "patch":
            with torch.no_grad():
                xs = [_to_tensor(f, device) for f in pending]
                for o in patch_gap(xs, src_a, out_a, src_b, out_b, flow, patch_params or PatchParams(), backend):
                    yield _to_image(o)
            return
        if method == "auto":
            yield from auto_gap(span)
            return
        for s in range(0, len(pending), chunk):
            part = pending[s:s + chunk]
            x = torch.stack([_to_tensor(f, device) for f in part])
            js = torch.arange(s + 1, s + 1 + len(part), dtype=torch.float32)
            t = js / span if span else torch.zeros_like(js)
            with torch.no_grad():
                out = blend_from_keys(x, t, src_a, out_a, src_b, out_b, flow, backend)
            for o in out:
                yield _to_image(o)

    def auto_gap(span: int | None) -> Iterator[np.ndarray]:
        # both methods on the keys' stylised frames and, as extra channels, on their source frames; the gap keeps
        # the method whose rebuilt source frames match the gap's frames better (at most one gap of outputs held)
        if not pending:
            return
        cat_a = torch.cat([out_a, src_a])
        cat_b = torch.cat([out_b, src_b]) if src_b is not None else None
        patch_out, flow_out, err_p, err_f = [], [], 0.0, 0.0
        with torch.no_grad():
            xs = [_to_tensor(f, device) for f in pending]
            for x, o in zip(xs, patch_gap(xs, src_a, out_a, src_b, out_b, flow, patch_params or PatchParams(),
                                          backend, with_source=True)):
                patch_out.append(_to_image(o[:3]))
                err_p += rebuild_error(o[3:], x)
            for s in range(0, len(xs), chunk):
                x = torch.stack(xs[s:s + chunk])
                js = torch.arange(s + 1, s + 1 + x.shape[0], dtype=torch.float32)
                t = js / span if span else torch.zeros_like(js)
                out = blend_from_keys(x, t, src_a, cat_a, src_b, cat_b, flow, backend)
                for xi, o in zip(x, out):
                    flow_out.append(_to_image(o[:3]))
                    err_f += rebuild_error(o[3:], xi)
        choice = choose_by_rebuild(err_p, err_f)
        if auto_log is not None:
            auto_log.append((a, choice, err_p / len(xs), err_f / len(xs)))
        yield from (patch_out if choice == "patch" else flow_out)

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
