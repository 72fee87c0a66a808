"""patch_synthesis, the spec: multi-scale guided PatchMatch with EM voting in plain PyTorch (small sizes).

Every quantity the search compares is an integer (8-bit images, integer weights, int sums), and every pass is Jacobi
(all pixels read the field as it was at the start of the pass), so the reference, the C++ kernel and the Triton
kernel produce the same nearest-neighbour field for the same seed, bit for bit. See README.md for the algorithm.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

MASK32 = 0xFFFFFFFF
INIT_PASS = 0xFFF  # the pass id of the random initial field in the hash


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 tensors x in [0, 2^32): split so no product leaves int64."""
    lo = (x * (c & 0xFFFF)) & MASK32
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit integer hash `lowbias32` (xor-shift-multiply) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_rng(seed: int, level: int, pass_id: int, k: int, pixel: torch.Tensor) -> torch.Tensor:
    """Counter-based random uint32 per pixel: lowbias32(lowbias32(lowbias32(seed) ^ (level<<20 | pass<<8 | k)) ^ p).

    seed: uint32; level < 2^12, pass_id < 2^12, k < 2^8; pixel: int64 tensor of flat target indices."""
    s = lowbias32(torch.tensor(seed & MASK32, dtype=torch.int64, device=pixel.device))
    s = lowbias32(s ^ ((level << 20) | (pass_id << 8) | k))
    return lowbias32(s ^ pixel)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """[K, H, W] int -> [K, H//2, W//2]: rounded 2x2 box mean, (a + b + c + d + 2) >> 2."""
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, :2 * h, :2 * w].to(torch.int32)
    s = x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]
    return (s + 2) >> 2


def num_levels(levels: int, patch_size: int, *sizes: int) -> int:
    """Levels used: at most `levels`, each with every side of source and target >= 2 * patch_size (at least 1)."""
    n = 1
    while n < levels and min(sizes) >> n >= 2 * patch_size:
        n += 1
    return n


def search_radii(search_radius: int) -> List[int]:
    """Random-search radii of one pass: R, R/2, ..., 1."""
    radii, r = [], search_radius
    while r >= 1:
        radii.append(r)
        r //= 2
    return radii


def _clamp_field(ny: torch.Tensor, nx: torch.Tensor, hs: int, ws: int, r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return ny.clamp(r, hs - 1 - r), nx.clamp(r, ws - 1 - r)


def _shifted_target(tgt: torch.Tensor, r: int) -> List[torch.Tensor]:
    """Per patch offset (oy, ox) row-major: tgt sampled at (clamp(y+oy), clamp(x+ox)), flattened [K, Ht*Wt]."""
    k, ht, wt = tgt.shape
    ys, xs = torch.arange(ht, device=tgt.device), torch.arange(wt, device=tgt.device)
    out = []
    for oy in range(-r, r + 1):
        yy = (ys + oy).clamp(0, ht - 1)
        for ox in range(-r, r + 1):
            xx = (xs + ox).clamp(0, wt - 1)
            out.append(tgt[:, yy][:, :, xx].reshape(k, -1))
    return out


def patch_distance(src: torch.Tensor, tgt_shifted: List[torch.Tensor], weights: torch.Tensor, ny: torch.Tensor,
                   nx: torch.Tensor, r: int) -> torch.Tensor:
    """D[p] = sum over patch offsets o and channels k of w_k (src[k, n(p) + o] - tgt[k, clamp(p + o)])^2, int64 [P].

    src: [K, Hs, Ws] int64; tgt_shifted: from `_shifted_target`; ny, nx: [P] source centres (patch inside src)."""
    ws = src.shape[2]
    flat = src.reshape(src.shape[0], -1)
    d = torch.zeros(ny.shape, dtype=torch.int64, device=src.device)
    i = 0
    for oy in range(-r, r + 1):
        for ox in range(-r, r + 1):
            s = flat[:, (ny + oy) * ws + (nx + ox)]
            diff = s - tgt_shifted[i]
            d += (weights[:, None] * diff * diff).sum(0)
            i += 1
    return d


def vote(style: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor, r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Patch voting: per target pixel the sum of the style values every covering patch proposes, and their count.

    style: [C, Hs, Ws] int64; ny, nx: [Ht, Wt]. Returns (sum [C, Ht, Wt] int64, count [Ht, Wt] int64)."""
    c, hs, ws = style.shape
    ht, wt = ny.shape
    flat = style.reshape(c, -1)
    total = torch.zeros(c, ht, wt, dtype=torch.int64, device=style.device)
    count = torch.zeros(ht, wt, dtype=torch.int64, device=style.device)
    for oy in range(-r, r + 1):
        for ox in range(-r, r + 1):
            # target pixel p takes from the patch centred at q = p - o: source pixel n(q) + o
            y0, y1 = max(0, oy), min(ht, ht + oy)
            x0, x1 = max(0, ox), min(wt, wt + ox)
            qy, qx = ny[y0 - oy:y1 - oy, x0 - ox:x1 - ox], nx[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            total[:, y0:y1, x0:x1] += flat[:, (qy + oy) * ws + (qx + ox)]
            count[y0:y1, x0:x1] += 1
    return total, count


def _round_div(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return (total + count // 2) // count


def patchmatch_pass(src: torch.Tensor, tgt: torch.Tensor, weights: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor,
                    r: int, radii: List[int], uniformity: int, seed: int, level: int, pass_id: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Jacobi PatchMatch pass. src [K, Hs, Ws], tgt [K, Ht, Wt] int64 (guides then current style estimate);
    ny, nx [Ht, Wt] the field at the start of the pass. Returns the new field and its cost (distance + penalty)."""
    _, hs, ws = src.shape
    ht, wt = ny.shape
    shifted = _shifted_target(tgt, r)
    cy, cx = ny.reshape(-1), nx.reshape(-1)
    cur = cy * ws + cx
    occ = torch.bincount(cur, minlength=hs * ws)
    pixel = torch.arange(ht * wt, dtype=torch.int64, device=src.device)

    def cost(qy, qx):
        q = qy * ws + qx
        pen = uniformity * (occ[q] - (q == cur).long())
        return patch_distance(src, shifted, weights, qy, qx, r) + pen

    best_y, best_x = cy.clone(), cx.clone()
    best = cost(best_y, best_x)
    py, px = pixel // wt, pixel % wt
    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        qy, qx = py + dy, px + dx
        inside = (qy >= 0) & (qy < ht) & (qx >= 0) & (qx < wt)
        q = qy.clamp(0, ht - 1) * wt + qx.clamp(0, wt - 1)
        ky, kx = _clamp_field(cy[q] - dy, cx[q] - dx, hs, ws, r)
        c = cost(ky, kx)
        take = inside & (c < best)
        best_y, best_x, best = torch.where(take, ky, best_y), torch.where(take, kx, best_x), torch.where(take, c, best)
    for k, rad in enumerate(radii):
        h = hash_rng(seed, level, pass_id, k, pixel)
        span = 2 * rad + 1
        ky, kx = _clamp_field(best_y + (h & 0xFFFF) % span - rad, best_x + (h >> 16) % span - rad, hs, ws, r)
        c = cost(ky, kx)
        take = c < best
        best_y, best_x, best = torch.where(take, ky, best_y), torch.where(take, kx, best_x), torch.where(take, c, best)
    return best_y.view(ht, wt), best_x.view(ht, wt), best.view(ht, wt)


def initial_field(ht: int, wt: int, hs: int, ws: int, r: int, seed: int, level: int,
                  init: Optional[torch.Tensor], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The coarsest level's field: `init` [2, H0, W0] (finest-level source y, x) sampled every 2^level pixels and
    divided by 2^level (floor), or uniform random centres from the hash (pass INIT_PASS)."""
    if init is not None:
        s = 1 << level
        sub = init[:, ::s, ::s][:, :ht, :wt].to(torch.int64)
        ny, nx = torch.div(sub[0], s, rounding_mode="floor"), torch.div(sub[1], s, rounding_mode="floor")
        return _clamp_field(ny, nx, hs, ws, r)
    h = hash_rng(seed, level, INIT_PASS, 0, torch.arange(ht * wt, dtype=torch.int64, device=device))
    ny = r + (h & 0xFFFF) % (hs - 2 * r)
    nx = r + (h >> 16) % (ws - 2 * r)
    return ny.view(ht, wt), nx.view(ht, wt)


def upsample_field(ny: torch.Tensor, nx: torch.Tensor, ht: int, wt: int, hs: int, ws: int, r: int
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Coarse field -> the next finer level [ht, wt]: n(y, x) = 2 n_c(yc, xc) + (y - 2 yc, x - 2 xc) with
    yc = min(y // 2, hc - 1), clamped to the finer source."""
    hc, wc = ny.shape
    ys, xs = torch.arange(ht, device=ny.device), torch.arange(wt, device=ny.device)
    yc = torch.clamp(ys // 2, max=hc - 1)
    xc = torch.clamp(xs // 2, max=wc - 1)
    fy = 2 * ny[yc][:, xc] + (ys - 2 * yc)[:, None]
    fx = 2 * nx[yc][:, xc] + (xs - 2 * xc)[None, :]
    return _clamp_field(fy, fx, hs, ws, r)


def patch_synthesis_reference(style: torch.Tensor, source_guide: torch.Tensor, target_guide: torch.Tensor,
                              weights: torch.Tensor, style_weight: int, init_nnf: Optional[torch.Tensor],
                              patch_size: int, levels: int, em_iters: int, pm_iters: int, search_radius: int,
                              uniformity: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's spec (arguments as `fresco::patch_synthesis`, all checked by the caller).

    style [C, Hs, Ws] uint8, source_guide [G, Hs, Ws] uint8, target_guide [G, Ht, Wt] uint8, weights [G] int32,
    init_nnf [2, Ht, Wt] int32 or None. Returns out [C, Ht, Wt] float32 (0..255), nnf [2, Ht, Wt] int32 (source
    y, x of each target patch centre), err [Ht, Wt] float32 (guide + style distance of the final field / patch area).
    """
    r = patch_size // 2
    c = style.shape[0]
    ht, wt = target_guide.shape[1:]
    hs, ws = style.shape[1:]
    n_lv = num_levels(levels, patch_size, hs, ws, ht, wt)
    radii = search_radii(search_radius)
    w_all = torch.cat([weights.to(torch.int64),
                       torch.full((c,), style_weight, dtype=torch.int64, device=weights.device)])
    sty = [style.to(torch.int64)]
    sg = [source_guide.to(torch.int64)]
    tg = [target_guide.to(torch.int64)]
    for _ in range(n_lv - 1):
        sty.append(downsample(sty[-1]).long())
        sg.append(downsample(sg[-1]).long())
        tg.append(downsample(tg[-1]).long())
    ny = nx = None
    total = count = cost = None
    for lv in range(n_lv - 1, -1, -1):
        hs_l, ws_l = sty[lv].shape[1:]
        ht_l, wt_l = tg[lv].shape[1:]
        if ny is None:
            ny, nx = initial_field(ht_l, wt_l, hs_l, ws_l, r, seed, lv, init_nnf, style.device)
        else:
            ny, nx = upsample_field(ny, nx, ht_l, wt_l, hs_l, ws_l, r)
        src = torch.cat([sg[lv], sty[lv]])
        for em in range(em_iters):
            total, count = vote(sty[lv], ny, nx, r)
            tgt = torch.cat([tg[lv], _round_div(total, count)])
            for it in range(pm_iters):
                ny, nx, cost = patchmatch_pass(src, tgt, w_all, ny, nx, r, radii, uniformity, seed, lv,
                                               em * pm_iters + it)
    # the error of the final field: guides + style term against the estimate it was searched with, no penalty
    dist = patch_distance(src, _shifted_target(tgt, r), w_all, ny.reshape(-1), nx.reshape(-1), r)
    total, count = vote(sty[0], ny, nx, r)
    out = total.to(torch.float32) / count.to(torch.float32)
    err = dist.to(torch.float32).view(ht, wt) / float(patch_size * patch_size)
    return out, torch.stack([ny, nx]).to(torch.int32), err
