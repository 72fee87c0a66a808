"""warp_consistency_loss Triton kernel: one program per (pixel block, frame pair, CFG chunk) computes both warp terms
of its pair over all channel blocks, reduces |·| into a per-program partial loss and scatters the gradient
(atomics into an fp32 buffer). Warped copies are never stored; bilinear coordinates are computed once per pixel."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.bilinear import corners
from ..common.triton_utils import configs, require_triton


@triton.jit
def _warp_term(tgt, src_b, oc, gc, g_src_b, g_tgt_b, o_g, keep, mask_c,
               o_nw, g_nw, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se, sxh, sxw, W, scale,
               NEED_GRAD: tl.constexpr):
    """|(tgt − warp(src))·keep| summed over the tile; the gradient scattered to tgt (+) and src's corners (−)."""
    mc = mask_c[None, :]
    w_nw = ax0 * ay0
    w_ne = ax1 * ay0
    w_sw = ax0 * ay1
    w_se = ax1 * ay1
    # [BLOCK_P, BLOCK_C]
    v_nw = tl.load(src_b + o_nw[:, None] + oc, mask=m_nw[:, None] & mc, other=0.0).to(tl.float32)
    v_ne = tl.load(src_b + o_nw[:, None] + sxw + oc, mask=m_ne[:, None] & mc, other=0.0).to(tl.float32)
    v_sw = tl.load(src_b + o_nw[:, None] + sxh + oc, mask=m_sw[:, None] & mc, other=0.0).to(tl.float32)
    v_se = tl.load(src_b + o_nw[:, None] + sxh + sxw + oc, mask=m_se[:, None] & mc, other=0.0).to(tl.float32)
    warped = v_nw * w_nw[:, None] + v_ne * w_ne[:, None] + v_sw * w_sw[:, None] + v_se * w_se[:, None]
    d = (tgt - warped) * keep[:, None]
    part = tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
    if NEED_GRAD:
        valid = (keep[:, None] != 0.0) & mc
        s = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)) * keep[:, None] * scale
        tl.atomic_add(g_tgt_b + o_g[:, None] + gc, s, mask=valid)
        tl.atomic_add(g_src_b + g_nw[:, None] + gc, -s * w_nw[:, None], mask=valid & m_nw[:, None])
        tl.atomic_add(g_src_b + g_nw[:, None] + 1 + gc, -s * w_ne[:, None], mask=valid & m_ne[:, None])
        tl.atomic_add(g_src_b + g_nw[:, None] + W + gc, -s * w_sw[:, None], mask=valid & m_sw[:, None])
        tl.atomic_add(g_src_b + g_nw[:, None] + W + 1 + gc, -s * w_se[:, None], mask=valid & m_se[:, None])
    return part


@triton.autotune(
    configs=configs([
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
    ]),
    key=["C", "H", "W", "NEED_GRAD"],
    # partial too: a config with fewer programs leaves the tail of another config's trial run behind otherwise
    reset_to_zero=["grad_ptr", "partial_ptr"],
)
@triton.jit
def _warp_loss_fwd_bwd_kernel(
    feat_ptr, fwd_ptr, bwd_ptr, focc_ptr, bocc_ptr, grad_ptr, partial_ptr,
    N, C, H, W, scale,
    sxb, sxc, sxh, sxw,
    sfn, sfc, sfh, sfw,
    sbn, sbc, sbh, sbw,
    son, soh, sow,
    sqn, sqh, sqw,
    NEED_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # grad: fp32 contiguous [B, C, H, W], zero-filled; partial: fp32 [chunks, N, cdiv(HW, BLOCK_P)]
    pid_p = tl.program_id(0)
    i = tl.program_id(1)
    k = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    h = offs_p // W
    w = offs_p % W
    # frame a = i (c1), frame b = i + 1 mod N (c2) of chunk k
    a = (k * N + i).to(tl.int64)
    b = (k * N + (i + 1) % N).to(tl.int64)
    i64 = i.to(tl.int64)
    # term 1: c2 vs warp(c1, bwd[i]) on frame b's grid; term 2: c1 vs warp(c2, fwd[i]) on frame a's grid
    c_b = corners(offs_p, bwd_ptr + i64 * sbn, sbc, sbh, sbw, sxh, sxw, H, W, mask_p)
    c_f = corners(offs_p, fwd_ptr + i64 * sfn, sfc, sfh, sfw, sxh, sxw, H, W, mask_p)
    # [BLOCK_P] keep = 1 - occlusion (0 outside the block)
    keep_b = tl.where(mask_p, 1.0 - tl.load(bocc_ptr + i64 * sqn + h.to(tl.int64) * sqh + w.to(tl.int64) * sqw,
                                             mask=mask_p, other=1.0).to(tl.float32), 0.0)
    keep_f = tl.where(mask_p, 1.0 - tl.load(focc_ptr + i64 * son + h.to(tl.int64) * soh + w.to(tl.int64) * sow,
                                             mask=mask_p, other=1.0).to(tl.float32), 0.0)
    o_x = h.to(tl.int64) * sxh + w.to(tl.int64) * sxw
    o_g = offs_p.to(tl.int64)
    fa = feat_ptr + a * sxb
    fb = feat_ptr + b * sxb
    ga = grad_ptr + a * C * H * W
    gb = grad_ptr + b * C * H * W
    total = 0.0
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        oc = offs_c.to(tl.int64)[None, :] * sxc
        gc = offs_c.to(tl.int64)[None, :] * H * W
        mpc = mask_p[:, None] & mask_c[None, :]
        # [BLOCK_P, BLOCK_C] the frames' own pixels
        xa = tl.load(fa + o_x[:, None] + oc, mask=mpc, other=0.0).to(tl.float32)
        xb = tl.load(fb + o_x[:, None] + oc, mask=mpc, other=0.0).to(tl.float32)
        total += _warp_term(xb, fa, oc, gc, ga, gb, o_g, keep_b, mask_c, *c_b, sxh, sxw, W, scale, NEED_GRAD)
        total += _warp_term(xa, fb, oc, gc, gb, ga, o_g, keep_f, mask_c, *c_f, sxh, sxw, W, scale, NEED_GRAD)
    tl.store(partial_ptr + (k * N + i) * tl.num_programs(0) + pid_p, total)


def warp_loss_fwd_bwd(feat: torch.Tensor, fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, fwd_occ: torch.Tensor,
                      bwd_occ: torch.Tensor, cfg_chunks: int, need_grad: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton: (loss 0-d fp32, dL/dfeat like feat, or empty when need_grad is False)."""
    require_triton(feat, "warp_consistency_loss")
    B, C, H, W = feat.shape
    N = B // cfg_chunks
    scale = 2.0 / feat.numel()
    grad = torch.zeros((B, C, H, W), device=feat.device, dtype=torch.float32) if need_grad else \
        feat.new_empty(0, dtype=torch.float32)
    # the partial buffer is sized for the smallest BLOCK_P of the autotune list (16 is below all of them)
    partial = torch.zeros((cfg_chunks, N, triton.cdiv(H * W, 16)), device=feat.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), N, cfg_chunks)
    _warp_loss_fwd_bwd_kernel[grid](
        feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, grad, partial, N, C, H, W, scale,
        *feat.stride(), *fwd_flow.stride(), *bwd_flow.stride(),
        fwd_occ.stride(0), fwd_occ.stride(2), fwd_occ.stride(3), bwd_occ.stride(0), bwd_occ.stride(2), bwd_occ.stride(3),
        NEED_GRAD=need_grad)
    loss = partial.sum() * scale
    if not need_grad:
        return loss, feat.new_empty(0)
    # the fp32 buffer already is the gradient of a contiguous fp32 feat (empty_like's layout): no copy pass
    if feat.dtype == torch.float32 and feat.is_contiguous():
        return loss, grad
    return loss, torch.empty_like(feat).copy_(grad)


def warp_loss_fwd(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks: int) -> torch.Tensor:
    return warp_loss_fwd_bwd(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks, need_grad=False)[0]
