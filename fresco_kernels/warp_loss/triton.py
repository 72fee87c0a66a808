"""warp_consistency_loss Triton kernel: one program per (pixel block, frame pair, CFG chunk, warp term) computes its
term over all channel blocks, reduces |·| into a per-program partial loss and scatters the gradient (relaxed
atomics into an fp32 buffer). Warped copies are never stored; bilinear coordinates are computed once per pixel."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.bilinear import corners
from ..common.triton_utils import check_int32_extent, configs, require_triton


@triton.autotune(
    # 4 (or 8) elements of each [BLOCK_P, BLOCK_C] tile per thread: ~150 registers, spill-free (make aot-check)
    configs=configs([
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 8}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 8}, num_warps=8),
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4),
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
    # One warp term per program: |(tgt − warp(src, flow))·keep| summed over the pixel block and all channels, the
    # gradient scattered to tgt (+) and to src's four corners (−). Term 0 of pair i: tgt = frame i+1 (c2), src =
    # frame i, flow bwd[i], occlusion bocc[i]; term 1: tgt = frame i (c1), src = frame i+1, fwd[i], focc[i].
    # grad: fp32 contiguous [B, C, H, W], zero-filled; partial: fp32 [chunks, 2, N, cdiv(HW, BLOCK_P)].
    # Offsets inside one image are int32 (the launcher checks that an image spans < 2^31 elements).
    pid_p = tl.program_id(0)
    i = tl.program_id(1)
    k = tl.program_id(2) // 2
    term = tl.program_id(2) % 2
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    h = offs_p // W
    w = offs_p % W
    a = (k * N + i).to(tl.int64)
    b = (k * N + (i + 1) % N).to(tl.int64)
    i64 = i.to(tl.int64)
    if term == 0:
        tgt, src = b, a
        flow, sc, sh, sw = bwd_ptr + i64 * sbn, sbc, sbh, sbw
        occ = bocc_ptr + i64 * sqn + h * sqh + w * sqw
    else:
        tgt, src = a, b
        flow, sc, sh, sw = fwd_ptr + i64 * sfn, sfc, sfh, sfw
        occ = focc_ptr + i64 * son + h * soh + w * sow
    o_nw, g_nw, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se = corners(offs_p, flow, sc, sh, sw, sxh, sxw, H, W, mask_p)
    # [BLOCK_P] keep = 1 - occlusion (0 outside the block)
    keep = tl.where(mask_p, 1.0 - tl.load(occ, mask=mask_p, other=1.0).to(tl.float32), 0.0)
    w_nw = ax0 * ay0
    w_ne = ax1 * ay0
    w_sw = ax0 * ay1
    w_se = ax1 * ay1
    o_x = h * sxh + w * sxw
    x_tgt = feat_ptr + tgt * sxb
    x_src = feat_ptr + src * sxb
    g_tgt = grad_ptr + tgt * C * H * W
    g_src = grad_ptr + src * C * H * W
    total = 0.0
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = (offs_c < C)[None, :]
        oc = (offs_c * sxc)[None, :]
        # [BLOCK_P, BLOCK_C]
        warped = tl.load(x_src + o_nw[:, None] + oc, mask=m_nw[:, None] & mc, other=0.0).to(tl.float32) * w_nw[:, None]
        warped += tl.load(x_src + (o_nw + sxw)[:, None] + oc, mask=m_ne[:, None] & mc, other=0.0).to(tl.float32) * w_ne[:, None]
        warped += tl.load(x_src + (o_nw + sxh)[:, None] + oc, mask=m_sw[:, None] & mc, other=0.0).to(tl.float32) * w_sw[:, None]
        warped += tl.load(x_src + (o_nw + sxh + sxw)[:, None] + oc, mask=m_se[:, None] & mc,
                          other=0.0).to(tl.float32) * w_se[:, None]
        x = tl.load(x_tgt + o_x[:, None] + oc, mask=mask_p[:, None] & mc, other=0.0).to(tl.float32)
        d = (x - warped) * keep[:, None]
        total += tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
        if NEED_GRAD:
            valid = (keep[:, None] != 0.0) & mc
            s = tl.where(d > 0, scale, tl.where(d < 0, -scale, 0.0)) * keep[:, None]
            gc = (offs_c * (H * W))[None, :]
            tl.atomic_add(g_tgt + offs_p[:, None] + gc, s, mask=valid, sem="relaxed")
            tl.atomic_add(g_src + g_nw[:, None] + gc, -s * w_nw[:, None], mask=valid & m_nw[:, None], sem="relaxed")
            tl.atomic_add(g_src + (g_nw + 1)[:, None] + gc, -s * w_ne[:, None], mask=valid & m_ne[:, None],
                          sem="relaxed")
            tl.atomic_add(g_src + (g_nw + W)[:, None] + gc, -s * w_sw[:, None], mask=valid & m_sw[:, None],
                          sem="relaxed")
            tl.atomic_add(g_src + (g_nw + W + 1)[:, None] + gc, -s * w_se[:, None], mask=valid & m_se[:, None],
                          sem="relaxed")
    tl.store(partial_ptr + ((k * 2 + term) * N + i) * tl.num_programs(0) + pid_p, total)


def warp_loss_fwd_bwd(feat: torch.Tensor, fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, fwd_occ: torch.Tensor,
                      bwd_occ: torch.Tensor, cfg_chunks: int, need_grad: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton: (loss 0-d fp32, dL/dfeat like feat, or empty when need_grad is False)."""
    require_triton(feat, "warp_consistency_loss")
    B, C, H, W = feat.shape
    N = B // cfg_chunks
    scale = 2.0 / feat.numel()
    grad = torch.zeros((B, C, H, W), device=feat.device, dtype=torch.float32) if need_grad else \
        feat.new_empty(0, dtype=torch.float32)
    check_int32_extent(feat[0], "feat")
    # one program handles either flow (and either occlusion) through the same pointer: one dtype each
    bwd_flow = bwd_flow.to(fwd_flow.dtype)
    bwd_occ = bwd_occ.to(fwd_occ.dtype)
    # the partial buffer is sized for the smallest BLOCK_P of the autotune list (16 is below all of them)
    partial = torch.zeros((cfg_chunks, 2, N, triton.cdiv(H * W, 16)), device=feat.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), N, 2 * cfg_chunks)
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
