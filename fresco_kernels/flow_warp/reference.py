"""flow_warp, the spec: the published `flow_warp` (gmflow geometry) verbatim in behaviour: grid_sample, bilinear,
zero padding, align_corners=True, pixel-unit flow (channel 0 = x, channel 1 = y)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def coords_grid(b: int, h: int, w: int, device=None) -> torch.Tensor:
    """[B, 2, H, W] fp32 pixel coordinates, channel 0 = x (column), channel 1 = y (row)."""
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((x, y), dim=0).float()[None].expand(b, 2, h, w)


def flow_warp_reference(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out[b, c, p] = x[b, c] sampled bilinearly at p + flow[b, :, p] (zeros outside). [B,C,H,W] -> [B,C,H,W]."""
    b, _, h, w = x.shape
    coords = coords_grid(b, h, w, x.device) + flow
    gx = 2 * coords[:, 0] / (w - 1) - 1
    gy = 2 * coords[:, 1] / (h - 1) - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
