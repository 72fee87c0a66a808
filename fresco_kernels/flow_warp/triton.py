"""flow_warp Triton kernels: one program per (image, block of pixels); bilinear coordinates computed once per pixel and
applied to every channel block. Any strides (NCHW or channels-last). Launchers are plain functions."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .._triton_utils import configs, require_triton


@triton.jit
def _bilinear_coeffs(offs_p, flow_ptr, sfc, sfh, sfw, H, W, mask_p):
    """grid_sample(align_corners=True) corner offsets and weights for pixels offs_p (the round trip through the
    normalised grid is kept so results match the reference to the last bits)."""
    h = offs_p // W
    w = offs_p % W
    f_off = h.to(tl.int64) * sfh + w.to(tl.int64) * sfw
    # [BLOCK_P]
    fx = tl.load(flow_ptr + f_off, mask=mask_p, other=0.0).to(tl.float32)
    fy = tl.load(flow_ptr + f_off + sfc, mask=mask_p, other=0.0).to(tl.float32)
    gx = 2.0 * (w.to(tl.float32) + fx) / (W - 1) - 1.0
    gy = 2.0 * (h.to(tl.float32) + fy) / (H - 1) - 1.0
    ix = ((gx + 1.0) / 2.0) * (W - 1)
    iy = ((gy + 1.0) / 2.0) * (H - 1)
    ix0f = tl.floor(ix)
    iy0f = tl.floor(iy)
    ix0 = ix0f.to(tl.int32)
    iy0 = iy0f.to(tl.int32)
    return ix, iy, ix0, iy0, ix0f, iy0f


@triton.jit
def _corners(offs_p, flow_ptr, sfc, sfh, sfw, sxh, sxw, H, W, mask_p):
    """The four corners of each pixel's sample point: the nw corner's offset in x's strides (ne = +sxw, sw = +sxh)
    and in a contiguous H*W plane (ne = +1, sw = +W), the axis weights (ax0 + ax1 = 1, ay0 + ay1 = 1; corner weight
    nw = ax0*ay0, ne = ax1*ay0, sw = ax0*ay1, se = ax1*ay1 as ATen's grid_sampler) and each corner's in-bounds mask
    (False for a non-finite sample point). Masked corners are never read: a load gives 0, whatever x holds there."""
    ix, iy, ix0, iy0, ix0f, iy0f = _bilinear_coeffs(offs_p, flow_ptr, sfc, sfh, sfw, H, W, mask_p)
    ax1 = ix - ix0f
    ax0 = ix0f + 1.0 - ix
    ay1 = iy - iy0f
    ay0 = iy0f + 1.0 - iy
    # a NaN/inf or huge coordinate has no valid corner (its weights are NaN: the output is NaN, nothing is scattered);
    # the float test comes first because a float->int cast of NaN is 0 on NVIDIA GPUs
    finite = (tl.abs(ix) < 1.0e9) & (tl.abs(iy) < 1.0e9)
    mask_p = mask_p & finite
    in_x0 = (ix0 >= 0) & (ix0 < W)
    in_x1 = (ix0 + 1 >= 0) & (ix0 + 1 < W)
    in_y0 = (iy0 >= 0) & (iy0 < H)
    in_y1 = (iy0 + 1 >= 0) & (iy0 + 1 < H)
    o_nw = iy0.to(tl.int64) * sxh + ix0.to(tl.int64) * sxw
    g_nw = iy0.to(tl.int64) * W + ix0.to(tl.int64)
    return (o_nw, g_nw, ax0, ax1, ay0, ay1,
            mask_p & in_x0 & in_y0, mask_p & in_x1 & in_y0, mask_p & in_x0 & in_y1, mask_p & in_x1 & in_y1)


@triton.autotune(
    configs=configs([
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 32}, num_warps=8),
    ]),
    key=["C", "H", "W"],
)
@triton.jit
def _flow_warp_fwd_kernel(
    x_ptr, flow_ptr, out_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw,
    sfb, sfc, sfh, sfw,
    sob, soc, soh, sow,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    o_nw, _, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se = _corners(
        offs_p, flow_ptr + b * sfb, sfc, sfh, sfw, sxh, sxw, H, W, mask_p)
    w_nw = ax0 * ay0
    w_ne = ax1 * ay0
    w_sw = ax0 * ay1
    w_se = ax1 * ay1
    o_ne = o_nw + sxw
    o_sw = o_nw + sxh
    o_se = o_sw + sxw
    h = offs_p // W
    w = offs_p % W
    o_out = h.to(tl.int64) * soh + w.to(tl.int64) * sow
    x_b = x_ptr + b * sxb
    out_b = out_ptr + b * sob
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        oc = offs_c.to(tl.int64)[None, :] * sxc
        # [BLOCK_P, BLOCK_C]
        v_nw = tl.load(x_b + o_nw[:, None] + oc, mask=m_nw[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        v_ne = tl.load(x_b + o_ne[:, None] + oc, mask=m_ne[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        v_sw = tl.load(x_b + o_sw[:, None] + oc, mask=m_sw[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        v_se = tl.load(x_b + o_se[:, None] + oc, mask=m_se[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        acc = v_nw * w_nw[:, None] + v_ne * w_ne[:, None] + v_sw * w_sw[:, None] + v_se * w_se[:, None]
        tl.store(out_b + o_out[:, None] + offs_c.to(tl.int64)[None, :] * soc,
                 acc.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


@triton.autotune(
    configs=configs([
        triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4),
        triton.Config({"BLOCK_P": 128, "BLOCK_C": 16}, num_warps=4),
        triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
    ]),
    key=["C", "H", "W", "NEED_X", "NEED_FLOW"],
    reset_to_zero=["gx_ptr"],
)
@triton.jit
def _flow_warp_bwd_kernel(
    gout_ptr, x_ptr, flow_ptr, gx_ptr, gflow_ptr,
    C, H, W,
    sgb, sgc, sgh, sgw,
    sxb, sxc, sxh, sxw,
    sfb, sfc, sfh, sfw,
    NEED_X: tl.constexpr, NEED_FLOW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # gx (fp32, contiguous NCHW, zero-filled) receives atomics; gflow (fp32, contiguous [B,2,H,W]) plain stores.
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    # the grad-x buffer is contiguous NCHW: g_nw is the nw corner's offset in it
    o_nw, g_nw, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se = _corners(
        offs_p, flow_ptr + b * sfb, sfc, sfh, sfw, sxh, sxw, H, W, mask_p)
    h = offs_p // W
    w = offs_p % W
    o_g = h.to(tl.int64) * sgh + w.to(tl.int64) * sgw
    gix = tl.zeros([BLOCK_P], dtype=tl.float32)
    giy = tl.zeros([BLOCK_P], dtype=tl.float32)
    x_b = x_ptr + b * sxb
    gx_b = gx_ptr + b * C * H * W
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        mpc = mask_p[:, None] & mask_c[None, :]
        # [BLOCK_P, BLOCK_C]
        g = tl.load(gout_ptr + b * sgb + o_g[:, None] + offs_c.to(tl.int64)[None, :] * sgc, mask=mpc, other=0.0).to(tl.float32)
        if NEED_X:
            gc = offs_c.to(tl.int64)[None, :] * H * W
            tl.atomic_add(gx_b + g_nw[:, None] + gc, g * (ax0 * ay0)[:, None], mask=m_nw[:, None] & mask_c[None, :])
            tl.atomic_add(gx_b + g_nw[:, None] + 1 + gc, g * (ax1 * ay0)[:, None], mask=m_ne[:, None] & mask_c[None, :])
            tl.atomic_add(gx_b + g_nw[:, None] + W + gc, g * (ax0 * ay1)[:, None], mask=m_sw[:, None] & mask_c[None, :])
            tl.atomic_add(gx_b + g_nw[:, None] + W + 1 + gc, g * (ax1 * ay1)[:, None], mask=m_se[:, None] & mask_c[None, :])
        if NEED_FLOW:
            oc = offs_c.to(tl.int64)[None, :] * sxc
            v_nw = tl.load(x_b + o_nw[:, None] + oc, mask=m_nw[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            v_ne = tl.load(x_b + o_nw[:, None] + sxw + oc, mask=m_ne[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            v_sw = tl.load(x_b + o_nw[:, None] + sxh + oc, mask=m_sw[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            v_se = tl.load(x_b + o_nw[:, None] + sxh + sxw + oc, mask=m_se[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
            gix += tl.sum(g * ((v_ne - v_nw) * ay0[:, None] + (v_se - v_sw) * ay1[:, None]), axis=1)
            giy += tl.sum(g * ((v_sw - v_nw) * ax0[:, None] + (v_se - v_ne) * ax1[:, None]), axis=1)
    if NEED_FLOW:
        gf_b = gflow_ptr + b * 2 * H * W
        tl.store(gf_b + offs_p, gix, mask=mask_p)
        tl.store(gf_b + H * W + offs_p, giy, mask=mask_p)


def flow_warp_fwd(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Triton forward. x [B,C,H,W], flow [B,2,H,W] (any strides, any float dtypes) -> [B,C,H,W] like x."""
    require_triton(x, "flow_warp")
    B, C, H, W = x.shape
    out = torch.empty_like(x)
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), B)
    _flow_warp_fwd_kernel[grid](x, flow, out, C, H, W, *x.stride(), *flow.stride(), *out.stride())
    return out


def flow_warp_bwd(grad_out: torch.Tensor, x: torch.Tensor, flow: torch.Tensor,
                  need_x: bool = True, need_flow: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton backward -> (grad_x like x or empty, grad_flow like flow or empty)."""
    require_triton(x, "flow_warp")
    B, C, H, W = x.shape
    gx = torch.zeros((B, C, H, W), device=x.device, dtype=torch.float32) if need_x else x.new_empty(0, dtype=torch.float32)
    gf = torch.empty((B, 2, H, W), device=x.device, dtype=torch.float32) if need_flow else x.new_empty(0, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), B)
    _flow_warp_bwd_kernel[grid](grad_out, x, flow, gx, gf, C, H, W, *grad_out.stride(), *x.stride(), *flow.stride(),
                                NEED_X=need_x, NEED_FLOW=need_flow)
    grad_x = torch.empty_like(x).copy_(gx) if need_x else x.new_empty(0)
    grad_flow = torch.empty_like(flow).copy_(gf) if need_flow else flow.new_empty(0)
    return grad_x, grad_flow
