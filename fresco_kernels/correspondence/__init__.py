"""Exact, parallel FLATTEN trajectories as the op `fresco::flow_correspondence`: per frame pair the published
winner-per-target / leftover-fill index map, chained over the batch into fwd_mapping and per-token segment ids."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._config import resolve_backend
from .._validate import FLOAT_DTYPES, check_same_device, check_shape, check_tensor
from . import op  # noqa: F401  (registers fresco::flow_correspondence)
from .reference import (downsample_for_correspondence, flow_correspondence_loop, flow_correspondence_reference,
                        published_mask, single_pair_mapping_loop)

__all__ = ["flow_correspondence", "correspondence_pair", "flow_correspondence_at_scale",
           "flow_correspondence_reference", "flow_correspondence_loop", "single_pair_mapping_loop", "published_mask"]


def _check(bwd_flow: torch.Tensor, occ: torch.Tensor, frames: torch.Tensor) -> None:
    check_tensor("frames", frames, ndim=4)
    n, c, h, w = frames.shape
    if c != 3 or n < 2:
        raise ValueError(f"frames must be [N, 3, h, w] (RGB) with N >= 2 frames, got {list(frames.shape)}")
    check_tensor("bwd_flow", bwd_flow, ndim=4)
    check_shape("bwd_flow", bwd_flow, (n - 1, 2, h, w), " ([N-1, 2, h, w]: bwd_flow[i] maps frame i+1 -> i, ch0 = x)")
    check_tensor("occ", occ, ndim=3, dtypes=(torch.bool,))
    check_shape("occ", occ, (n - 1, h, w), " ([N-1, h, w], True = occluded on frame i+1)")
    check_same_device(frames=frames, bwd_flow=bwd_flow, occ=occ)
    if h * w >= 2**31:
        raise ValueError(f"frames must have h*w < 2^31 pixels, got {h}x{w}")
    # the loop's comparisons (and hence which source wins) are only defined for finite colours
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(frames).all()):
        raise ValueError("frames must be finite (the colour error decides which source wins a target)")


def flow_correspondence(bwd_flow: torch.Tensor, occ: torch.Tensor, frames: torch.Tensor, *,
                        backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """FLATTEN trajectories of a batch of N frames, identical to the published `get_mapping_ind` loop.

    Per pair (i, i+1): source pixel s of frame i+1 lands on target t = round(s + bwd_flow[i](s)) (ties to even) of
    frame i; it is valid if t is in bounds and occ[i](s) is False. Per target the valid source with the smallest
    colour error ((src - tgt)^2 averaged over RGB, fp32) wins, ties to the smallest source index; targets nobody won
    are unlinked and take the unused sources (invalid or losing) in ascending order, so map_i is a permutation.

    Args:
        bwd_flow: [N-1, 2, h, w] float, at feature size, in pixels; bwd_flow[i] maps frame i+1 -> frame i,
            channel 0 = x (width), channel 1 = y (height). Computed in fp32.
        occ: [N-1, h, w] bool, True where frame i+1's pixel is occluded (published: bilinear(bwd_occ) > 0.5).
        frames: [N, 3, h, w] float RGB in [-1, 1], downsampled to feature size (finite). Computed in fp32.
        backend: "fused" (the op: Triton on CUDA, C++ on CPU) or "reference" (vectorised PyTorch); default: the
            global switch.
    Returns:
        fwd_mapping: [N, hw] int64; fwd_mapping[0] = identity, fwd_mapping[i+1] = map_i[fwd_mapping[i]]:
            trajectory p sits at pixel fwd_mapping[i, p] of frame i.
        segment: [N, hw] int32; segment[i, p] = broken links (unlinked targets) of trajectory p before frame i.
            Frames i, j of trajectory p attend each other iff segment[i, p] == segment[j, p] (the published
            [hw, 1, N, N] mask, see `trajectory_attention.segment_mask`).
    """
    _check(bwd_flow, occ, frames)
    bwd_flow, frames = bwd_flow.float(), frames.float()
    if resolve_backend(backend) == "reference":
        return flow_correspondence_reference(bwd_flow, occ, frames)
    return torch.ops.fresco.flow_correspondence(bwd_flow, occ, frames)


def correspondence_pair(bwd_flow: torch.Tensor, occ: torch.Tensor, frame_i: torch.Tensor, frame_i1: torch.Tensor,
                        *, backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """map_i of one pair: bwd_flow [2, h, w] (frame i+1 -> i), occ [h, w] bool, frame_i, frame_i1 [3, h, w] ->
    (map [hw] int64: target pixel t of frame i is linked to pixel map[t] of frame i+1, unlinked [hw] bool)."""
    check_tensor("bwd_flow", bwd_flow, ndim=3)
    check_tensor("occ", occ, ndim=2, dtypes=(torch.bool,))
    check_tensor("frame_i", frame_i, ndim=3)
    check_tensor("frame_i1", frame_i1, ndim=3)
    check_shape("frame_i", frame_i, (3, None, None), " (RGB)")
    h, w = frame_i.shape[1:]
    check_shape("frame_i1", frame_i1, (3, h, w), " (like frame_i)")
    check_shape("bwd_flow", bwd_flow, (2, h, w), " ([2, h, w] like the frames)")
    check_shape("occ", occ, (h, w), " ([h, w] like the frames)")
    fwd, seg = flow_correspondence(bwd_flow[None], occ[None], torch.stack([frame_i.float(), frame_i1.float()]),
                                   backend=backend)
    return fwd[1], seg[1] != 0


def flow_correspondence_at_scale(bwd_flows: torch.Tensor, bwd_occs: torch.Tensor, imgs: torch.Tensor, scale: float,
                                 *, backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The published `get_mapping_ind(bwd_flows, bwd_occs, imgs, scale)` from full-resolution inputs.

    Args:
        bwd_flows: [M, 2, H, W] float pixels, M >= N-1 (the published batch passes N flows: the wrap pair N-1 -> 0
            is ignored here, as there).
        bwd_occs: [M, H, W] occlusion (0/1 float or bool) of frame i+1.
        imgs: [N, 3, H, W] RGB in [-1, 1].
        scale: downsampling factor (8 or 16 for SD1.5's 64x64 / 32x32 attention at 512²).
    Returns:
        (fwd_mapping [N, hw] int64, segment [N, hw] int32) at h, w = floor(H / scale), floor(W / scale); the
        published bwd_mapping is argsort(fwd_mapping) and its mask `segment_mask(segment)`.
    """
    check_tensor("imgs", imgs, ndim=4)
    n = imgs.shape[0]
    check_tensor("bwd_flows", bwd_flows, ndim=4)
    check_tensor("bwd_occs", bwd_occs, ndim=3, dtypes=FLOAT_DTYPES + (torch.bool,))
    if bwd_flows.shape[0] < n - 1 or bwd_occs.shape[0] < n - 1:
        raise ValueError(f"bwd_flows and bwd_occs need at least N-1 = {n - 1} pairs (imgs has N = {n} frames), got "
                         f"{bwd_flows.shape[0]} and {bwd_occs.shape[0]}")
    check_shape("bwd_flows", bwd_flows, (None, 2) + tuple(imgs.shape[2:]), " ([M, 2, H, W] like imgs)")
    check_shape("bwd_occs", bwd_occs, (None,) + tuple(imgs.shape[2:]), " ([M, H, W] like imgs)")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    flow, occ, frames = downsample_for_correspondence(bwd_flows.float(), bwd_occs.float(), imgs.float(), scale)
    return flow_correspondence(flow, occ, frames, backend=backend)
