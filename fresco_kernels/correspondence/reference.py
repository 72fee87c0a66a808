"""flow_correspondence, the spec: a line-by-line port of the published FLATTEN loop (`get_single_mapping_ind` /
`get_mapping_ind`, kept for tests: slow), a vectorised PyTorch version (the "reference" backend), and the published
full-resolution -> feature-size resampling so the pipeline can reproduce `get_mapping_ind` with one call.

Conventions: bwd_flow[i] maps frame i+1 -> frame i, in pixels, channel 0 = x (width), channel 1 = y (height);
occ[i] (True = occluded) lives on frame i+1's grid; frames in [-1, 1]. map_i[t] = the pixel of frame i+1 that target
pixel t of frame i is linked to; fwd_mapping[i][p] = the pixel of frame i on trajectory p."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

# key of a target that no valid source reached (above every packed (error bits, source) key of a finite error)
NO_KEY = torch.iinfo(torch.int64).max


def single_pair_mapping_loop(bwd_flow: torch.Tensor, occ: torch.Tensor, frame_i: torch.Tensor,
                             frame_i1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The published `get_single_mapping_ind` after its resampling, verbatim: one Python iteration per pixel.

    bwd_flow [2, h, w] (already at this size, pixels, ch0 = x), occ [h, w] bool (True = occluded, on frame i+1),
    frame_i, frame_i1 [3, h, w] (already downsampled). Returns (map [hw] int64, unlinked [hw] bool)."""
    flows = bwd_flow.float()[[1, 0]]
    _, H, W = flows.shape
    masks = torch.logical_not(occ)[None]
    frames = torch.stack([frame_i, frame_i1]).float().reshape(2, 3, -1)
    grid = torch.stack(torch.meshgrid([torch.arange(H), torch.arange(W)], indexing="ij"), dim=0).to(flows.device)
    warp_grid = torch.round(grid + flows)
    mask = torch.logical_and(torch.logical_and(torch.logical_and(torch.logical_and(
        warp_grid[0] >= 0, warp_grid[0] < H), warp_grid[1] >= 0), warp_grid[1] < W), masks[0]).view(-1)
    warp_grid = warp_grid.view(2, -1)
    warp_ind = (warp_grid[0] * W + warp_grid[1]).to(torch.long)
    mapping_ind = torch.zeros_like(warp_ind) - 1

    for f0ind, f1ind in enumerate(warp_ind):
        if mask[f0ind]:
            if mapping_ind[f1ind] == -1:
                mapping_ind[f1ind] = f0ind
            else:
                targetv = frames[0, :, f1ind]
                pref0ind = mapping_ind[f1ind]
                prev = frames[1, :, pref0ind]
                v = frames[1, :, f0ind]
                if ((prev - targetv) ** 2).mean() > ((v - targetv) ** 2).mean():
                    mask[pref0ind] = False
                    mapping_ind[f1ind] = f0ind
                else:
                    mask[f0ind] = False

    unusedind = torch.arange(len(mask)).to(mask.device)[~mask]
    unlinkedmask = mapping_ind == -1
    mapping_ind[unlinkedmask] = unusedind
    return mapping_ind, unlinkedmask


def flow_correspondence_loop(bwd_flow: torch.Tensor, occ: torch.Tensor,
                             frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The published `get_mapping_ind` chaining over the loop port, plus segment ids.

    bwd_flow [N-1, 2, h, w], occ [N-1, h, w] bool, frames [N, 3, h, w] (all at feature size). Returns
    (fwd_mapping [N, hw] int64, segment [N, hw] int32, the published mask [hw, 1, N, N] bool)."""
    n = frames.shape[0]
    fwd_mapping, unlinked = [], []
    for i in range(n - 1):
        mapping_ind, unlinkedmask = single_pair_mapping_loop(bwd_flow[i], occ[i], frames[i], frames[i + 1])
        if i == 0:
            fwd_mapping = [torch.arange(len(mapping_ind)).to(mapping_ind.device)]
        unlinked.append(unlinkedmask)
        fwd_mapping += [mapping_ind[fwd_mapping[-1]]]
    fwd = torch.stack(fwd_mapping)
    segment = [torch.zeros(fwd.shape[1], dtype=torch.int32, device=fwd.device)]
    for i in range(n - 1):
        segment.append(segment[-1] + unlinked[i][fwd[i]].to(torch.int32))
    return fwd, torch.stack(segment), published_mask(fwd, torch.stack(unlinked))


def published_mask(fwd_mapping: torch.Tensor, unlinked: torch.Tensor) -> torch.Tensor:
    """`interattn_mask` [hw, 1, N, N] exactly as `get_mapping_ind` builds it: where trajectory p's link i -> i+1 is
    broken (its pixel in frame i is an unlinked target of map_i), frames <= i and > i stop attending each other."""
    n, hw = fwd_mapping.shape
    iterattn_mask = torch.ones(hw, n, n, dtype=torch.bool, device=fwd_mapping.device)
    for i in range(n - 1):
        one_mask = torch.ones(n, n, dtype=torch.bool, device=fwd_mapping.device)
        one_mask[:i + 1, i + 1:] = False
        one_mask[i + 1:, :i + 1] = False
        broken = unlinked[i][fwd_mapping[i]]
        iterattn_mask[broken] = torch.logical_and(iterattn_mask[broken], one_mask)
    return iterattn_mask.unsqueeze(1)


def colour_error(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """The loop's `((v - targetv) ** 2).mean()` for many pixels at once, bit for bit: [..., 3, P] -> [..., P].

    On CPU, torch's mean over 3 fp32 elements is ((s0 + s1) + s2) / 3 (sum left to right, then a correctly rounded
    division); every implementation of the op computes exactly this."""
    sq = (src.float() - tgt.float()) ** 2
    return ((sq[..., 0, :] + sq[..., 1, :]) + sq[..., 2, :]) / 3


def correspondence_pairs_reference(bwd_flow: torch.Tensor, occ: torch.Tensor,
                                   frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """map_i for every pair i at once, vectorised: (maps [N-1, hw] int64, unlinked [N-1, hw] bool).

    Per target the valid source with the smallest packed key (fp32 bits of its colour error << 32 | source index)
    wins: the loop's strict '>' keeps the earliest of equal errors. Unused sources fill unlinked targets in order."""
    pairs, _, h, w = bwd_flow.shape
    hw = h * w
    dev = bwd_flow.device
    flow = bwd_flow.float()
    # int64 grid + fp32 flow -> fp32, then round half to even: as the loop's torch.round(grid + flows)
    ty = torch.round(torch.arange(h, device=dev).view(1, h, 1) + flow[:, 1])
    tx = torch.round(torch.arange(w, device=dev).view(1, 1, w) + flow[:, 0])
    valid = ((ty >= 0) & (ty < h) & (tx >= 0) & (tx < w) & ~occ).reshape(pairs, hw)
    tgt = torch.where(valid, (ty * w + tx).reshape(pairs, hw), 0).long()
    frames_f = frames.float().reshape(pairs + 1, 3, hw)
    tgt_rgb = torch.gather(frames_f[:-1], 2, tgt[:, None, :].expand(-1, 3, -1))
    err = colour_error(frames_f[1:], tgt_rgb)
    src = torch.arange(hw, device=dev)
    key = torch.where(valid, (err.view(torch.int32).long() << 32) | src, NO_KEY)
    best = torch.full((pairs, hw), NO_KEY, dtype=torch.int64, device=dev)
    best.scatter_reduce_(1, tgt, key, "amin")
    linked = best != NO_KEY
    winner = best & 0xFFFFFFFF
    row = torch.arange(pairs, device=dev)[:, None] * hw
    used = torch.zeros(pairs * hw, dtype=torch.bool, device=dev)
    used[(row + winner)[linked]] = True
    # every pair has as many unused sources as unlinked targets, so the flat (pair, index) orders pair them up
    maps = torch.where(linked, winner, 0)
    maps[~linked] = torch.nonzero(~used).squeeze(1) % hw
    return maps, ~linked


def chain_reference(maps: torch.Tensor, unlinked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """fwd_mapping[0] = identity, fwd_mapping[i+1] = maps[i][fwd_mapping[i]]; segment[i+1] = segment[i] +
    unlinked[i][fwd_mapping[i]] (a broken link starts a new segment). -> ([N, hw] int64, [N, hw] int32)."""
    pairs, hw = maps.shape
    fwd = [torch.arange(hw, device=maps.device)]
    seg = [torch.zeros(hw, dtype=torch.int32, device=maps.device)]
    for i in range(pairs):
        seg.append(seg[-1] + unlinked[i][fwd[-1]].to(torch.int32))
        fwd.append(maps[i][fwd[-1]])
    return torch.stack(fwd), torch.stack(seg)


def flow_correspondence_reference(bwd_flow: torch.Tensor, occ: torch.Tensor,
                                  frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fwd_mapping [N, hw] int64, segment [N, hw] int32) from feature-size inputs, vectorised PyTorch."""
    return chain_reference(*correspondence_pairs_reference(bwd_flow, occ, frames))


def downsample_for_correspondence(bwd_flows: torch.Tensor, bwd_occs: torch.Tensor, imgs: torch.Tensor,
                                  scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The published resampling of `get_single_mapping_ind` for all pairs at once.

    bwd_flows [>= N-1, 2, H, W] (pixels), bwd_occs [>= N-1, H, W] (0/1 float), imgs [N, 3, H, W] in [-1, 1] ->
    (flow [N-1, 2, h, w] = bilinear(flow, 1/scale) / scale, occ [N-1, h, w] = bilinear(occ, 1/scale) > 0.5,
    frames [N, 3, h, w] = bilinear(imgs, 1/scale)); bilinear = F.interpolate(scale_factor=1/scale), align_corners
    False. Extra trailing flows (the published wrap pair N-1 -> 0) are ignored, as there."""
    pairs = imgs.shape[0] - 1
    flow = F.interpolate(bwd_flows[:pairs], scale_factor=1.0 / scale, mode="bilinear") / scale
    occ = F.interpolate(bwd_occs[:pairs, None], scale_factor=1.0 / scale, mode="bilinear")[:, 0] > 0.5
    frames = F.interpolate(imgs, scale_factor=1.0 / scale, mode="bilinear")
    return flow, occ, frames
