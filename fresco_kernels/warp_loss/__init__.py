"""FRESCO's temporal loss (flow-warp consistency over cyclic frame pairs) as the fused ops
`fresco::warp_consistency_loss` / `fresco::warp_consistency_loss_fwd_bwd`: one pass, no warped copies stored."""
from __future__ import annotations

from typing import Optional

import torch

from .._config import resolve_backend
from .._validate import check_positive_int, check_same_device, check_shape, check_tensor
from . import op  # noqa: F401  (registers the ops)
from .reference import warp_consistency_loss_reference

__all__ = ["warp_consistency_loss", "warp_consistency_loss_reference"]


def warp_consistency_loss(feat: torch.Tensor, fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, fwd_occ: torch.Tensor,
                          bwd_occ: torch.Tensor, cfg_chunks: int = 2, *, backend: Optional[str] = None) -> torch.Tensor:
    """FRESCO's temporal loss: 2 · mean(|(c2 − warp(c1, bwd))·(1 − bwd_occ)| + |(c1 − warp(c2, fwd))·(1 − fwd_occ)|).

    Per CFG chunk of N frames, c1 = frames 0..N-1 and c2 = frames 1..N-1, 0 (the wrap pair included); the mean runs
    over all B·C·h·w elements. Flows and occlusions (already at the feature size, see `resample_for_loss`) are shared
    by every chunk and treated as constants.
    Args:
        feat: [cfg_chunks·N, C, h, w] float tensor (fp32/fp16/bf16/fp64, any strides), h, w >= 2.
        fwd_flow: [N, 2, h, w] pixels; fwd_flow[i] maps frame i -> i+1 (i = N-1: frame N-1 -> frame 0).
        bwd_flow: [N, 2, h, w] pixels; bwd_flow[i] maps frame i+1 -> i.
        fwd_occ: [N, 1, h, w] in [0, 1] on frame i's grid; bwd_occ: [N, 1, h, w] on frame i+1's grid.
        cfg_chunks: number of classifier-free-guidance chunks in the batch (2: uncond + cond), >= 1.
        backend: "fused" (the op) or "reference" (the published formula); default: the global switch.
    Returns:
        0-d fp32 tensor (fp64 for fp64 feat), differentiable w.r.t. feat.
    Raises:
        ValueError when grad is enabled and a flow or occlusion requires grad (both backends).
    Non-finite inputs: see the op's README ("Non-finite inputs").
    """
    check_tensor("feat", feat, ndim=4)
    check_positive_int("cfg_chunks", cfg_chunks)
    B, C, h, w = feat.shape
    if B % cfg_chunks:
        raise ValueError(f"feat's batch ({B}) must be cfg_chunks ({cfg_chunks}) x N frames")
    n = B // cfg_chunks
    if n < 2:
        raise ValueError(f"warp_consistency_loss needs N >= 2 frames per chunk, got feat batch {B} with cfg_chunks {cfg_chunks}")
    if h < 2 or w < 2:
        raise ValueError(f"feat must have h >= 2 and w >= 2, got {list(feat.shape)}")
    for name, t, c in (("fwd_flow", fwd_flow, 2), ("bwd_flow", bwd_flow, 2), ("fwd_occ", fwd_occ, 1), ("bwd_occ", bwd_occ, 1)):
        check_tensor(name, t, ndim=4)
        check_shape(name, t, (n, c, h, w), f" (N = feat batch / cfg_chunks = {n}, feat is {list(feat.shape)})")
    check_same_device(feat=feat, fwd_flow=fwd_flow, bwd_flow=bwd_flow, fwd_occ=fwd_occ, bwd_occ=bwd_occ)
    if torch.is_grad_enabled():
        for name, t in (("fwd_flow", fwd_flow), ("bwd_flow", bwd_flow), ("fwd_occ", fwd_occ), ("bwd_occ", bwd_occ)):
            if t.requires_grad:
                raise ValueError(f"{name} must not require grad: flows and occlusions are constants of the loss (no "
                                 f"gradient reaches them); pass {name}.detach()")
    if resolve_backend(backend) == "reference":
        return warp_consistency_loss_reference(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks)
    args = (feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks)
    if torch.is_grad_enabled() and feat.requires_grad:
        # the optimisation loop always needs the gradient: produce it with the loss, in one pass
        return torch.ops.fresco.warp_consistency_loss_fwd_bwd(*args)[0]
    return torch.ops.fresco.warp_consistency_loss(*args)
