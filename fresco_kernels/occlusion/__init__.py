"""Occlusion from forward/backward flows and the flow/occlusion resampling to feature sizes, exactly as the published
code does them (`docs/algorithm.md`, "Flow and occlusion"). Compositions of `flow_warp` and torch ops: small, not fused."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._validate import check_same_device, check_shape, check_tensor
from ..flow_warp import flow_warp

__all__ = ["forward_backward_check", "occlusion_from_flows", "resample_for_loss", "resample_for_attention", "dilate"]

# UnFlow's constants, as published: occluded where |f + warp(b, f)| > ALPHA (|f| + |b|) + BETA
ALPHA, BETA = 0.01, 0.5
# photometric test: occluded where the mean over RGB of |dst - warp(src)| exceeds this share of 255
PHOTO_THRESHOLD = 0.25


def _check_flows(fwd_flow: torch.Tensor, bwd_flow: torch.Tensor) -> None:
    check_tensor("fwd_flow", fwd_flow, ndim=4)
    check_tensor("bwd_flow", bwd_flow, ndim=4)
    n, _, h, w = fwd_flow.shape
    check_shape("fwd_flow", fwd_flow, (n, 2, h, w))
    check_shape("bwd_flow", bwd_flow, (n, 2, h, w), " (like fwd_flow)")
    check_same_device(fwd_flow=fwd_flow, bwd_flow=bwd_flow)


def _magnitude(flow: torch.Tensor) -> torch.Tensor:
    """|flow| per pixel, [N, 2, H, W] -> [N, H, W] in flow's dtype: torch.norm(flow, dim=1) computed as
    sqrt(x^2 + y^2) (equal up to rounding, 1 ulp), without torch.norm's slow CPU reduction over a 2-long middle dim
    (49 ms against 0.5 ms per 512² pair on the dev VM, most of the flow blend's time). Half types square in fp32, as
    torch.norm does (a 256-px flow squared overflows fp16)."""
    f = flow.float() if flow.dtype in (torch.float16, torch.bfloat16) else flow
    return torch.sqrt(f[:, 0] * f[:, 0] + f[:, 1] * f[:, 1]).to(flow.dtype)


def forward_backward_check(fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, *,
                           backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward-backward consistency check (gmflow's `forward_backward_consistency_check`).

    Args: fwd_flow, bwd_flow [N, 2, H, W] in pixels (fwd_flow[i]: frame i -> i+1, bwd_flow[i]: frame i+1 -> i).
    Returns: (fwd_occ [N, H, W] on frame i's grid, bwd_occ [N, H, W] on frame i+1's grid), float 0/1."""
    _check_flows(fwd_flow, bwd_flow)
    flow_mag = _magnitude(fwd_flow) + _magnitude(bwd_flow)
    warped_bwd = flow_warp(bwd_flow, fwd_flow, backend=backend)
    warped_fwd = flow_warp(fwd_flow, bwd_flow, backend=backend)
    threshold = ALPHA * flow_mag + BETA
    fwd_occ = (_magnitude(fwd_flow + warped_bwd) > threshold).float()
    bwd_occ = (_magnitude(bwd_flow + warped_fwd) > threshold).float()
    return fwd_occ, bwd_occ


def occlusion_from_flows(fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, frames: Optional[torch.Tensor] = None, *,
                         targets: Optional[torch.Tensor] = None, backend: Optional[str] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Occlusion masks of frame pairs (i, i+1): by default a batch's cyclic pairs, i = 0..N-1, the last pair being
    (N-1, 0); with `targets`, the pairs (frames[i], targets[i]) (e.g. in-between frames and a keyframe).

    The forward-backward check, OR-ed (when `frames` is given) with the photometric test of the published code:
    bwd: mean_RGB |frame[i+1] − warp(frame[i], bwd_flow[i])| > 0.25·255; fwd: the same with frame[i] and
    warp(frame[i+1], fwd_flow[i]); clamped to [0, 1].
    Args:
        fwd_flow, bwd_flow: [N, 2, H, W] pixels (fwd_flow[i]: frame i -> its pair's second frame; bwd_flow back).
        frames: optional [N, 3, H, W] RGB in 0..255 (float).
        targets: optional [N, 3, H, W], the second frame of each pair (needs `frames`; default the cyclic next).
    Returns: (fwd_occ, bwd_occ) [N, H, W] float 0/1 (fwd on frame i's grid, bwd on frame i+1's grid)."""
    fwd_occ, bwd_occ = forward_backward_check(fwd_flow, bwd_flow, backend=backend)
    if frames is None:
        if targets is not None:
            raise ValueError("targets needs frames (the first frame of each pair)")
        return fwd_occ, bwd_occ
    check_tensor("frames", frames, ndim=4)
    n, _, h, w = fwd_flow.shape
    check_shape("frames", frames, (n, 3, h, w), " (RGB frames matching the flows)")
    check_same_device(frames=frames, fwd_flow=fwd_flow)
    frames = frames.to(fwd_flow.dtype)
    if targets is None:
        nxt = frames[list(range(1, n)) + [0]]
    else:
        check_tensor("targets", targets, ndim=4)
        check_shape("targets", targets, (n, 3, h, w), " (like frames)")
        check_same_device(targets=targets, fwd_flow=fwd_flow)
        nxt = targets.to(fwd_flow.dtype)
    warped1 = flow_warp(frames, bwd_flow, backend=backend)
    bwd_occ = torch.clamp(bwd_occ + (torch.abs(nxt - warped1).mean(dim=1) > 255 * PHOTO_THRESHOLD).float(), 0, 1)
    warped2 = flow_warp(nxt, fwd_flow, backend=backend)
    fwd_occ = torch.clamp(fwd_occ + (torch.abs(frames - warped2).mean(dim=1) > 255 * PHOTO_THRESHOLD).float(), 0, 1)
    return fwd_occ, bwd_occ


def _occ4(name: str, occ: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    check_tensor(name, occ)
    if occ.dim() == 3:
        occ = occ.unsqueeze(1)
    check_shape(name, occ, (n, 1, h, w), " or [N, H, W] (matching flow)")
    return occ


def _factor(H: int, W: int, h: int, w: int) -> int:
    if h < 1 or w < 1 or H % h or W % w or H // h != W // w:
        raise ValueError(f"size must shrink H x W = {H} x {W} by one integer factor in both directions, got {h} x {w}")
    return H // h


def resample_for_loss(flow: torch.Tensor, occ: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flow and occlusion at a feature size for the losses (the published optimize_feature / warp_tensor):
    flow' = bilinear(flow·s, scale_factor=s) with s = h/H; occ' = max_pool2d(occ, 1/s) (any occluded pixel occludes
    the cell).
    Args: flow [N, 2, H, W] pixels; occ [N, H, W] or [N, 1, H, W]; size (h, w) with H/h = W/w an integer.
    Returns: (flow' [N, 2, h, w], occ' [N, 1, h, w])."""
    check_tensor("flow", flow, ndim=4)
    n, _, H, W = flow.shape
    check_shape("flow", flow, (n, 2, H, W))
    occ = _occ4("occ", occ, n, H, W)
    h, w = size
    k = _factor(H, W, h, w)
    s = 1.0 / k
    if k == 1:
        return flow, occ
    flow_s = F.interpolate(flow * s, scale_factor=s, mode="bilinear")
    return flow_s, F.max_pool2d(occ, kernel_size=k)


def resample_for_attention(flow: torch.Tensor, occ: torch.Tensor, scale: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flow and occlusion at 1/scale for attention masks and trajectories (the published get_single_mapping_ind /
    attn_mask): flow' = bilinear(flow, 1/scale) / scale; occ' = bilinear(occ, 1/scale) > 0.5.
    Args: flow [N, 2, H, W] pixels; occ [N, H, W] or [N, 1, H, W]; scale a positive int dividing H and W.
    Returns: (flow' [N, 2, H/scale, W/scale], occ' [N, H/scale, W/scale] bool)."""
    check_tensor("flow", flow, ndim=4)
    n, _, H, W = flow.shape
    check_shape("flow", flow, (n, 2, H, W))
    occ = _occ4("occ", occ, n, H, W)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1 or H % scale or W % scale:
        raise ValueError(f"scale must be a positive int dividing H = {H} and W = {W}, got {scale!r}")
    if scale == 1:
        return flow, occ[:, 0] > 0.5
    flow_s = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear") / scale
    occ_s = F.interpolate(occ.to(flow.dtype), scale_factor=1.0 / scale, mode="bilinear") > 0.5
    return flow_s, occ_s[:, 0]


def dilate(mask: torch.Tensor, kernel: int = 13) -> torch.Tensor:
    """Box dilation of a [N, 1, H, W] mask in [0, 1] (the published `Dilate`: replicate padding, a ones kernel,
    clamped to [0, 1]); used on image-size occlusions before background smoothing. `kernel` must be odd."""
    check_tensor("mask", mask, ndim=4)
    if mask.shape[1] != 1:
        raise ValueError(f"mask must be [N, 1, H, W], got {list(mask.shape)}")
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd positive int, got {kernel!r}")
    r = (kernel - 1) // 2
    padded = F.pad(mask, (r, r, r, r), "replicate")
    return torch.clamp(F.conv2d(padded, torch.ones(1, 1, kernel, kernel, dtype=mask.dtype, device=mask.device)), 0, 1)
