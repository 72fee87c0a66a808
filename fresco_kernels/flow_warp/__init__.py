"""Bilinear flow warping (grid_sample semantics, align_corners=True, zero padding) as the fused op `fresco::flow_warp`."""
from __future__ import annotations

from typing import Optional

import torch

from .._config import resolve_backend
from .._validate import check_same_device, check_shape, check_tensor
from . import op  # noqa: F401  (registers fresco::flow_warp)
from .reference import coords_grid, flow_warp_reference

__all__ = ["flow_warp", "flow_warp_reference", "coords_grid"]


def flow_warp(x: torch.Tensor, flow: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Warp `x` along `flow`: out[b, :, p] = bilinear sample of x[b] at p + flow[b, :, p], zero outside.

    Exactly `F.grid_sample(x, normalised(coords + flow), "bilinear", "zeros", align_corners=True)`.

    Args:
        x: [B, C, H, W] float tensor (fp32/fp16/bf16/fp64; any strides, channels-last included), H, W >= 2.
        flow: [B, 2, H, W] float tensor in pixels; channel 0 = x (width), channel 1 = y (height). Its dtype may
            differ from x's: coordinates are computed in fp32 (fp64 for fp64 x).
        backend: "fused" (the op) or "reference" (plain PyTorch); default: the global switch.
    Returns:
        [B, C, H, W] with x's dtype and memory format. Differentiable w.r.t. x and flow.
    """
    check_tensor("x", x, ndim=4)
    check_tensor("flow", flow, ndim=4)
    B, _, H, W = x.shape
    check_shape("flow", flow, (B, 2, H, W), " (x is [B, C, H, W])")
    check_same_device(x=x, flow=flow)
    if H < 2 or W < 2:
        raise ValueError(f"x must have H >= 2 and W >= 2 (the align_corners grid divides by size - 1), got {list(x.shape)}")
    if resolve_backend(backend) == "reference":
        return flow_warp_reference(x, flow)
    return torch.ops.fresco.flow_warp(x, flow)
