"""warp_consistency_loss, the spec: FRESCO's temporal loss exactly as the published optimize_feature computes it
(two grid_sample warps per frame pair, occlusion masks, L1 mean, cyclic pairs incl. the wrap pair)."""
from __future__ import annotations

import torch

from ..flow_warp.reference import flow_warp_reference


def warp_consistency_loss_reference(feat: torch.Tensor, fwd_flow: torch.Tensor, bwd_flow: torch.Tensor,
                                    fwd_occ: torch.Tensor, bwd_occ: torch.Tensor, cfg_chunks: int = 2) -> torch.Tensor:
    """2 · mean(|(c2 − warp(c1, bwd))·(1 − bwd_occ)| + |(c1 − warp(c2, fwd))·(1 − fwd_occ)|).

    feat [cfg_chunks·N, C, h, w]; c1 = frames 0..N-1 and c2 = frames 1..N-1,0 of each chunk; flows [N,2,h,w] and
    occlusions [N,1,h,w] shared by every chunk."""
    n = feat.shape[0] // cfg_chunks
    latent = feat.view(cfg_chunks, n, *feat.shape[1:])
    reshuffle = list(range(1, n)) + [0]
    c1 = latent.flatten(0, 1)
    c2 = latent[:, reshuffle].flatten(0, 1)
    bwd = bwd_flow.repeat(cfg_chunks, 1, 1, 1)
    fwd = fwd_flow.repeat(cfg_chunks, 1, 1, 1)
    bocc = bwd_occ.repeat(cfg_chunks, 1, 1, 1)
    focc = fwd_occ.repeat(cfg_chunks, 1, 1, 1)
    warped1 = flow_warp_reference(c1, bwd)
    warped2 = flow_warp_reference(c2, fwd)
    return (torch.abs((c2 - warped1) * (1 - bocc)) + torch.abs((c1 - warped2) * (1 - focc))).mean() * 2
