"""patch_synthesis Triton kernels: one Jacobi PatchMatch pass (a program per block of target pixels: the current
match, 4 propagation and the random-search candidates, each patch read straight from the interleaved guide buffers,
no copies) and patch voting. The level loop, pyramids and field up-sampling run as torch ops in the launcher, the
same integer steps as the reference, so the field equals the reference's for a seed."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..common.triton_utils import require_triton
from .reference import (MASK32, downsample, initial_field, lowbias32, num_levels, search_radii,
                        upsample_field)

BLOCK = 128


@triton.jit
def _mul32(x, c: tl.constexpr):
    # (x * c) mod 2^32 for int64 x in [0, 2^32): split so no product leaves int64 (as the reference)
    lo = (x * (c & 0xFFFF)) & 0xFFFFFFFF
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & 0xFFFFFFFF


@triton.jit
def _lowbias32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@triton.jit
def _distance(src_ptr, tgt_ptr, w_ptr, ty, tx, sy, sx, mask, WS, TW, K, P: tl.constexpr):
    """sum_{patch, k} w_k (src[s + o, k] - tgt[t + o, k])^2 per pixel (int32); tgt is border-padded by P // 2."""
    R: tl.constexpr = P // 2
    d = tl.zeros(ty.shape, dtype=tl.int32)
    for oy in tl.static_range(P):
        for ox in tl.static_range(P):
            s_off = ((sy - R + oy) * WS + (sx - R + ox)) * K
            t_off = ((ty + oy) * TW + (tx + ox)) * K
            for k in range(K):
                w = tl.load(w_ptr + k)
                a = tl.load(src_ptr + s_off + k, mask=mask, other=0)
                b = tl.load(tgt_ptr + t_off + k, mask=mask, other=0)
                diff = a - b
                d += w * diff * diff
    return d


@triton.jit
def _try_candidate(src_ptr, tgt_ptr, w_ptr, occ_ptr, ty, tx, ky, kx, mask, cur, by, bx, best, WS, TW, K, U,
                   P: tl.constexpr):
    """Cost of source patch (ky, kx) for each target pixel (distance + U x (occupancy, less one if it is the current
    match)); the (by, bx, best) of the pixels where it is strictly lower are replaced."""
    kq = ky * WS + kx
    c = _distance(src_ptr, tgt_ptr, w_ptr, ty, tx, ky, kx, mask, WS, TW, K, P)
    c += U * (tl.load(occ_ptr + kq, mask=mask, other=0) - (kq == cur).to(tl.int32))
    take = mask & (c < best)
    return tl.where(take, ky, by), tl.where(take, kx, bx), tl.where(take, c, best)


@triton.jit
def _pm_pass_kernel(src_ptr, tgt_ptr, w_ptr, ny_ptr, nx_ptr, occ_ptr, keys_ptr, out_y_ptr, out_x_ptr, cost_ptr,
                    HT, WT, HS, WS, K, U, SEARCH, N_RADII,
                    P: tl.constexpr, EVAL_ONLY: tl.constexpr, BLOCK_P: tl.constexpr):
    R: tl.constexpr = P // 2
    pid = tl.program_id(0)
    pix = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = pix < HT * WT
    ty = pix // WT
    tx = pix % WT
    TW = WT + 2 * R
    cy = tl.load(ny_ptr + pix, mask=mask, other=R)
    cx = tl.load(nx_ptr + pix, mask=mask, other=R)
    cur = cy * WS + cx
    best = _distance(src_ptr, tgt_ptr, w_ptr, ty, tx, cy, cx, mask, WS, TW, K, P)
    if EVAL_ONLY:
        tl.store(cost_ptr + pix, best, mask=mask)
    else:
        best += U * (tl.load(occ_ptr + cur, mask=mask, other=1) - 1)
        by = cy
        bx = cx
        for j in tl.static_range(4):
            DY = 0 if j < 2 else (-1 if j == 2 else 1)
            DX = (-1 if j == 0 else 1) if j < 2 else 0
            qy = ty + DY
            qx = tx + DX
            inside = mask & (qy >= 0) & (qy < HT) & (qx >= 0) & (qx < WT)
            q = qy * WT + qx
            ky = tl.minimum(tl.maximum(tl.load(ny_ptr + q, mask=inside, other=R) - DY, R), HS - 1 - R)
            kx = tl.minimum(tl.maximum(tl.load(nx_ptr + q, mask=inside, other=R) - DX, R), WS - 1 - R)
            by, bx, best = _try_candidate(src_ptr, tgt_ptr, w_ptr, occ_ptr, ty, tx, ky, kx, inside, cur, by, bx,
                                          best, WS, TW, K, U, P)
        for k in range(N_RADII):
            rad = SEARCH >> k
            span = 2 * rad + 1
            key = tl.load(keys_ptr + k)
            h = _lowbias32(key ^ pix.to(tl.int64))
            ky = by + ((h & 0xFFFF) % span).to(tl.int32) - rad
            kx = bx + ((h >> 16) % span).to(tl.int32) - rad
            ky = tl.minimum(tl.maximum(ky, R), HS - 1 - R)
            kx = tl.minimum(tl.maximum(kx, R), WS - 1 - R)
            by, bx, best = _try_candidate(src_ptr, tgt_ptr, w_ptr, occ_ptr, ty, tx, ky, kx, mask, cur, by, bx,
                                          best, WS, TW, K, U, P)
        tl.store(out_y_ptr + pix, by, mask=mask)
        tl.store(out_x_ptr + pix, bx, mask=mask)
        tl.store(cost_ptr + pix, best, mask=mask)


@triton.jit
def _vote_kernel(style_ptr, ny_ptr, nx_ptr, total_ptr, count_ptr, HT, WT, HS, WS, C,
                 P: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per target pixel: the sum over covering patches q = p - o of style[:, n(q) + o], and how many cover it."""
    R: tl.constexpr = P // 2
    pid = tl.program_id(0)
    pix = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = pix < HT * WT
    ty = pix // WT
    tx = pix % WT
    n = tl.zeros([BLOCK_P], dtype=tl.int32)
    for c in range(C):
        acc = tl.zeros([BLOCK_P], dtype=tl.int32)
        n = tl.zeros([BLOCK_P], dtype=tl.int32)
        for oy in tl.static_range(P):
            for ox in tl.static_range(P):
                qy = ty - (oy - R)
                qx = tx - (ox - R)
                inside = mask & (qy >= 0) & (qy < HT) & (qx >= 0) & (qx < WT)
                q = qy * WT + qx
                sy = tl.load(ny_ptr + q, mask=inside, other=0) + (oy - R)
                sx = tl.load(nx_ptr + q, mask=inside, other=0) + (ox - R)
                acc += tl.load(style_ptr + c * HS * WS + sy * WS + sx, mask=inside, other=0)
                n += inside.to(tl.int32)
        tl.store(total_ptr + c * HT * WT + pix, acc, mask=mask)
    tl.store(count_ptr + pix, n, mask=mask)


def _padded_interleaved(x: torch.Tensor, r: int) -> torch.Tensor:
    """[K, H, W] -> [(H + 2r) * (W + 2r) * K] int32, edge-replicated border, channels innermost."""
    _, h, w = x.shape
    ys = torch.arange(-r, h + r, device=x.device).clamp(0, h - 1)
    xs = torch.arange(-r, w + r, device=x.device).clamp(0, w - 1)
    return x[:, ys][:, :, xs].permute(1, 2, 0).contiguous().to(torch.int32).reshape(-1)


def _occupancy(ny: torch.Tensor, nx: torch.Tensor, hs: int, ws: int) -> torch.Tensor:
    """[hs * ws] int32: how many target pixels' patches are centred on each source pixel. On meta tensors (the offline
    AOT check, `accept_meta_tensors`) only its shape and dtype: a bincount's size depends on the data."""
    if ny.device.type == "meta":
        return torch.empty(hs * ws, dtype=torch.int32, device=ny.device)
    return torch.bincount((ny.long() * ws + nx.long()).reshape(-1), minlength=hs * ws).to(torch.int32)


def _vote(style: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor, p: int) -> Tuple[torch.Tensor, torch.Tensor]:
    c, hs, ws = style.shape
    ht, wt = ny.shape
    total = torch.empty(c, ht, wt, dtype=torch.int32, device=style.device)
    count = torch.empty(ht, wt, dtype=torch.int32, device=style.device)
    _vote_kernel[(triton.cdiv(ht * wt, BLOCK),)](style, ny, nx, total, count, ht, wt, hs, ws, c, P=p, BLOCK_P=BLOCK)
    return total, count


def patch_synthesis_fwd(style: torch.Tensor, source_guide: torch.Tensor, target_guide: torch.Tensor,
                        weights: torch.Tensor, style_weight: int, init_nnf: Optional[torch.Tensor], patch_size: int,
                        levels: int, em_iters: int, pm_iters: int, search_radius: int, uniformity: int, seed: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op on CUDA (or CPU tensors under TRITON_INTERPRET=1); arguments and results as the reference."""
    require_triton(style, "patch_synthesis")
    dev = style.device
    r = patch_size // 2
    c = style.shape[0]
    ht0, wt0 = target_guide.shape[1:]
    n_lv = num_levels(levels, patch_size, style.shape[1], style.shape[2], ht0, wt0)
    radii = search_radii(search_radius)
    w_all = torch.cat([weights.to(torch.int32),
                       torch.full((c,), style_weight, dtype=torch.int32, device=dev)]).contiguous()
    sty, sg, tg = [style.to(torch.int32)], [source_guide.to(torch.int32)], [target_guide.to(torch.int32)]
    for _ in range(n_lv - 1):
        sty.append(downsample(sty[-1]))
        sg.append(downsample(sg[-1]))
        tg.append(downsample(tg[-1]))
    ny = nx = None
    tgt = None
    for lv in range(n_lv - 1, -1, -1):
        hs, ws = sty[lv].shape[1:]
        ht, wt = tg[lv].shape[1:]
        if ny is None:
            ny, nx = initial_field(ht, wt, hs, ws, r, seed, lv, init_nnf, dev)
        else:
            ny, nx = upsample_field(ny, nx, ht, wt, hs, ws, r)
        ny, nx = ny.to(torch.int32).contiguous(), nx.to(torch.int32).contiguous()
        src = torch.cat([sg[lv], sty[lv]]).permute(1, 2, 0).contiguous()
        style_l = sty[lv].contiguous()
        grid = (triton.cdiv(ht * wt, BLOCK),)
        for em in range(em_iters):
            total, count = _vote(style_l, ny, nx, patch_size)
            estimate = (total + count // 2) // count
            tgt = _padded_interleaved(torch.cat([tg[lv], estimate]), r)
            for it in range(pm_iters):
                pass_id = em * pm_iters + it
                occ = _occupancy(ny, nx, hs, ws)
                base = lowbias32(torch.tensor(seed & MASK32, dtype=torch.int64))
                keys = torch.stack([lowbias32(base ^ ((lv << 20) | (pass_id << 8) | k))
                                    for k in range(len(radii))]) if radii else torch.zeros(1, dtype=torch.int64)
                keys = keys.to(dev)
                out_y, out_x = torch.empty_like(ny), torch.empty_like(nx)
                cost = torch.empty(ht, wt, dtype=torch.int32, device=dev)
                _pm_pass_kernel[grid](src, tgt, w_all, ny, nx, occ, keys, out_y, out_x, cost, ht, wt, hs, ws,
                                      src.shape[2], uniformity, search_radius, len(radii),
                                      P=patch_size, EVAL_ONLY=False, BLOCK_P=BLOCK)
                ny, nx = out_y, out_x
    hs, ws = style.shape[1:]
    dist = torch.empty(ht0, wt0, dtype=torch.int32, device=dev)
    _pm_pass_kernel[(triton.cdiv(ht0 * wt0, BLOCK),)](src, tgt, w_all, ny, nx, ny, ny, ny, ny, dist, ht0, wt0, hs, ws,
                                                      src.shape[2], 0, 0, 0, P=patch_size, EVAL_ONLY=True,
                                                      BLOCK_P=BLOCK)
    total, count = _vote(style.to(torch.int32).contiguous(), ny, nx, patch_size)
    out = total.to(torch.float32) / count.to(torch.float32)
    err = dist.to(torch.float32) / float(patch_size * patch_size)
    return out, torch.stack([ny, nx]), err
