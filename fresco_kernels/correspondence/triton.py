"""flow_correspondence Triton kernels: (1) every source's target and packed (colour error bits, source) key, atomic
min per target; (2) one program per pair scans the unused sources into an ordered list; (3) one program per pair
scans the targets, pairing the k-th unlinked target with the k-th unused source; (4) chaining and segment ids, one
program per block of trajectories. Launchers are plain functions."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.triton_utils import require_triton

NO_KEY = torch.iinfo(torch.int64).max
BLOCK_SRC = 256
BLOCK_SCAN = 1024
BLOCK_CHAIN = 256


@triton.jit
def _round_half_even(x):
    """torch.round on fp32: nearest integer, ties to even (x - floor(x) is exact in fp32)."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _correspondence_keys_kernel(
    flow_ptr, occ_ptr, frames_ptr, key_ptr, tgt_ptr,
    H, W,
    sfl_n, sfl_c, sfl_h, sfl_w,
    soc_n, soc_h, soc_w,
    sfr_n, sfr_c, sfr_h, sfr_w,
    BLOCK: tl.constexpr,
):
    # key_ptr: [P, hw] int64 filled with NO_KEY; tgt_ptr: [P, hw] int32 (target of each source, -1 if invalid)
    pid = tl.program_id(0)
    pair = tl.program_id(1).to(tl.int64)
    hw = H * W
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < hw
    r = offs // W
    c = offs % W
    # [BLOCK] flow (x, y) and occlusion at each source pixel of frame pair+1
    f_off = pair * sfl_n + r.to(tl.int64) * sfl_h + c.to(tl.int64) * sfl_w
    fx = tl.load(flow_ptr + f_off, mask=m, other=0.0)
    fy = tl.load(flow_ptr + f_off + sfl_c, mask=m, other=0.0)
    occ = tl.load(occ_ptr + pair * soc_n + r.to(tl.int64) * soc_h + c.to(tl.int64) * soc_w, mask=m, other=1)
    ty = _round_half_even(r.to(tl.float32) + fy)
    tx = _round_half_even(c.to(tl.float32) + fx)
    # float comparisons first: NaN or huge flows are simply invalid
    valid = m & (occ == 0) & (ty >= 0.0) & (ty < H) & (tx >= 0.0) & (tx < W)
    ty_i = tl.where(valid, ty, 0.0).to(tl.int32)
    tx_i = tl.where(valid, tx, 0.0).to(tl.int32)
    src_off = (pair + 1) * sfr_n + r.to(tl.int64) * sfr_h + c.to(tl.int64) * sfr_w
    tgt_off = pair * sfr_n + ty_i.to(tl.int64) * sfr_h + tx_i.to(tl.int64) * sfr_w
    # colour error ((d0^2 + d1^2) + d2^2) / 3 in fp32, each operation rounded like torch on CPU: no FMA (launched
    # without fp fusion) and a correctly rounded division (fp32 `/` is div.full, <= 2 ulp, on NVIDIA)
    d0 = tl.load(frames_ptr + src_off, mask=valid, other=0.0) - tl.load(frames_ptr + tgt_off, mask=valid, other=0.0)
    d1 = (tl.load(frames_ptr + src_off + sfr_c, mask=valid, other=0.0)
          - tl.load(frames_ptr + tgt_off + sfr_c, mask=valid, other=0.0))
    d2 = (tl.load(frames_ptr + src_off + 2 * sfr_c, mask=valid, other=0.0)
          - tl.load(frames_ptr + tgt_off + 2 * sfr_c, mask=valid, other=0.0))
    s01 = d0 * d0 + d1 * d1
    err = tl.math.div_rn(s01 + d2 * d2, 3.0)
    # non-negative floats order like their bit patterns: min key = (smallest error, then smallest source)
    key = (err.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs.to(tl.int64)
    t = ty_i * W + tx_i
    tl.atomic_min(key_ptr + pair * hw + t, key, mask=valid)
    tl.store(tgt_ptr + pair * hw + offs, tl.where(valid, t, -1), mask=m)


@triton.jit
def _correspondence_unused_kernel(key_ptr, tgt_ptr, unused_ptr, hw, BLOCK: tl.constexpr):
    # one program per pair: unused_ptr[pair, k] = the k-th source (ascending) that is invalid or lost its target
    pair = tl.program_id(0).to(tl.int64)
    count = 0
    for start in range(0, hw, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hw
        # [BLOCK]
        t = tl.load(tgt_ptr + pair * hw + offs, mask=m, other=-1)
        key = tl.load(key_ptr + pair * hw + t, mask=m & (t >= 0), other=-1)
        won = (t >= 0) & (key.to(tl.int32) == offs)
        unused = (m & ~won).to(tl.int32)
        rank = count + tl.cumsum(unused, 0) - unused
        tl.store(unused_ptr + pair * hw + rank, offs, mask=unused != 0)
        count += tl.sum(unused, 0)


@triton.jit
def _correspondence_map_kernel(key_ptr, unused_ptr, map_ptr, unlinked_ptr, hw, NO_KEY_C: tl.constexpr,
                               BLOCK: tl.constexpr):
    # one program per pair: linked targets take their winner, the k-th unlinked target the k-th unused source
    pair = tl.program_id(0).to(tl.int64)
    count = 0
    for start in range(0, hw, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < hw
        # [BLOCK]
        key = tl.load(key_ptr + pair * hw + offs, mask=m, other=NO_KEY_C)
        unl = (m & (key == NO_KEY_C)).to(tl.int32)
        rank = count + tl.cumsum(unl, 0) - unl
        spare = tl.load(unused_ptr + pair * hw + rank, mask=unl != 0, other=0)
        src = tl.where(unl != 0, spare, key.to(tl.int32))
        tl.store(map_ptr + pair * hw + offs, src.to(tl.int64), mask=m)
        tl.store(unlinked_ptr + pair * hw + offs, unl.to(tl.int8), mask=m)
        count += tl.sum(unl, 0)


@triton.jit
def _correspondence_chain_kernel(map_ptr, unlinked_ptr, fwd_ptr, seg_ptr, hw, PAIRS, BLOCK: tl.constexpr):
    # trajectory p: fwd[i+1][p] = map_i[fwd[i][p]], seg[i+1][p] = seg[i][p] + unlinked_i[fwd[i][p]]
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < hw
    cur = offs.to(tl.int64)
    seg = tl.zeros([BLOCK], dtype=tl.int32)
    tl.store(fwd_ptr + offs, cur, mask=m)
    tl.store(seg_ptr + offs, seg, mask=m)
    for _ in range(PAIRS):
        seg += tl.load(unlinked_ptr + cur, mask=m, other=0).to(tl.int32)
        cur = tl.load(map_ptr + cur, mask=m, other=0)
        map_ptr += hw
        unlinked_ptr += hw
        fwd_ptr += hw
        seg_ptr += hw
        tl.store(fwd_ptr + offs, cur, mask=m)
        tl.store(seg_ptr + offs, seg, mask=m)


def correspondence_pairs_fwd(bwd_flow: torch.Tensor, occ: torch.Tensor,
                             frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton map_i for every pair: bwd_flow [P, 2, h, w] fp32, occ [P, h, w] bool, frames [P+1, 3, h, w] fp32 (any
    strides) -> (maps [P, hw] int64, unlinked [P, hw] int8)."""
    require_triton(bwd_flow, "flow_correspondence")
    pairs, _, h, w = bwd_flow.shape
    hw = h * w
    dev = bwd_flow.device
    occ_u8 = occ.view(torch.uint8)
    keys = torch.full((pairs, hw), NO_KEY, dtype=torch.int64, device=dev)
    tgt = torch.empty((pairs, hw), dtype=torch.int32, device=dev)
    unused = torch.empty((pairs, hw), dtype=torch.int32, device=dev)
    maps = torch.empty((pairs, hw), dtype=torch.int64, device=dev)
    unlinked = torch.empty((pairs, hw), dtype=torch.int8, device=dev)
    if pairs == 0:
        return maps, unlinked
    # enable_fp_fusion=False: no FMA, so the colour error rounds exactly like the PyTorch reference
    _correspondence_keys_kernel[(triton.cdiv(hw, BLOCK_SRC), pairs)](
        bwd_flow, occ_u8, frames, keys, tgt, h, w, *bwd_flow.stride(), *occ_u8.stride(), *frames.stride(),
        BLOCK=BLOCK_SRC, enable_fp_fusion=False)
    _correspondence_unused_kernel[(pairs,)](keys, tgt, unused, hw, BLOCK=BLOCK_SCAN)
    _correspondence_map_kernel[(pairs,)](keys, unused, maps, unlinked, hw, NO_KEY_C=NO_KEY, BLOCK=BLOCK_SCAN)
    return maps, unlinked


def flow_correspondence_fwd(bwd_flow: torch.Tensor, occ: torch.Tensor,
                            frames: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton flow_correspondence: -> (fwd_mapping [N, hw] int64, segment [N, hw] int32)."""
    maps, unlinked = correspondence_pairs_fwd(bwd_flow, occ, frames)
    n, _, h, w = frames.shape
    hw = h * w
    fwd = torch.empty((n, hw), dtype=torch.int64, device=frames.device)
    seg = torch.empty((n, hw), dtype=torch.int32, device=frames.device)
    _correspondence_chain_kernel[(triton.cdiv(hw, BLOCK_CHAIN),)](maps, unlinked, fwd, seg, hw, n - 1,
                                                                   BLOCK=BLOCK_CHAIN)
    return fwd, seg
