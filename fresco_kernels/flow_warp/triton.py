"""flow_warp Triton kernels: one program per (image, block of pixels); bilinear coordinates computed once per pixel and
applied to every channel block. Any strides (NCHW or channels-last). Launchers are plain functions."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.bilinear import corners
from ..common.triton_utils import check_int32_extent, configs, require_triton


# 4-8 elements of a [BLOCK_P, BLOCK_C] tile per thread (spill-free, make aot-check); BLOCK_C = 4 first, as the
# pipeline warps 1-4 channels (frames, flows, latents, masks)
_CONFIGS = [
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 4}, num_warps=4),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 4}, num_warps=4),
    triton.Config({"BLOCK_P": 256, "BLOCK_C": 4}, num_warps=8),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 8}, num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
]


def _prune_channel_blocks(candidates, named_args, **kwargs):
    """Drop configs whose channel block exceeds the channels (rounded up to a power of two, at least 4)."""
    widest = max(4, triton.next_power_of_2(int(named_args["C"])))
    return [c for c in candidates if c.kwargs["BLOCK_C"] <= widest] or candidates[:1]


@triton.autotune(configs=configs(_CONFIGS), key=["C", "H", "W"],
                 prune_configs_by={"early_config_prune": _prune_channel_blocks})
@triton.jit
def _flow_warp_fwd_kernel(
    x_ptr, flow_ptr, out_ptr,
    C, H, W,
    sxb, sxc, sxh, sxw,
    sfb, sfc, sfh, sfw,
    sob, soc, soh, sow,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # offsets inside one image are int32 (the launcher checks each image spans < 2^31 elements)
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    o_nw, _, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se = corners(
        offs_p, flow_ptr + b * sfb, sfc, sfh, sfw, sxh, sxw, H, W, mask_p)
    w_nw = ax0 * ay0
    w_ne = ax1 * ay0
    w_sw = ax0 * ay1
    w_se = ax1 * ay1
    h = offs_p // W
    w = offs_p % W
    o_out = h * soh + w * sow
    x_b = x_ptr + b * sxb
    out_b = out_ptr + b * sob
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = (offs_c < C)[None, :]
        oc = (offs_c * sxc)[None, :]
        # [BLOCK_P, BLOCK_C]
        acc = tl.load(x_b + o_nw[:, None] + oc, mask=m_nw[:, None] & mc, other=0.0).to(tl.float32) * w_nw[:, None]
        acc += tl.load(x_b + (o_nw + sxw)[:, None] + oc, mask=m_ne[:, None] & mc, other=0.0).to(tl.float32) * w_ne[:, None]
        acc += tl.load(x_b + (o_nw + sxh)[:, None] + oc, mask=m_sw[:, None] & mc, other=0.0).to(tl.float32) * w_sw[:, None]
        acc += tl.load(x_b + (o_nw + sxh + sxw)[:, None] + oc, mask=m_se[:, None] & mc,
                       other=0.0).to(tl.float32) * w_se[:, None]
        tl.store(out_b + o_out[:, None] + (offs_c * soc)[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=mask_p[:, None] & mc)


@triton.autotune(configs=configs(_CONFIGS), key=["C", "H", "W", "NEED_X", "NEED_FLOW"], reset_to_zero=["gx_ptr"],
                 prune_configs_by={"early_config_prune": _prune_channel_blocks})
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
    # gx (fp32, contiguous NCHW, zero-filled) receives relaxed atomics; gflow (fp32, contiguous [B,2,H,W]) plain
    # stores. Offsets inside one image are int32.
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < H * W
    # the grad-x buffer is contiguous NCHW: g_nw is the nw corner's offset in it
    o_nw, g_nw, ax0, ax1, ay0, ay1, m_nw, m_ne, m_sw, m_se = corners(
        offs_p, flow_ptr + b * sfb, sfc, sfh, sfw, sxh, sxw, H, W, mask_p)
    h = offs_p // W
    w = offs_p % W
    o_g = h * sgh + w * sgw
    gix = tl.zeros([BLOCK_P], dtype=tl.float32)
    giy = tl.zeros([BLOCK_P], dtype=tl.float32)
    x_b = x_ptr + b * sxb
    gx_b = gx_ptr + b * C * H * W
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = (offs_c < C)[None, :]
        # [BLOCK_P, BLOCK_C]
        g = tl.load(gout_ptr + b * sgb + o_g[:, None] + (offs_c * sgc)[None, :], mask=mask_p[:, None] & mc,
                    other=0.0).to(tl.float32)
        if NEED_X:
            gc = (offs_c * (H * W))[None, :]
            tl.atomic_add(gx_b + g_nw[:, None] + gc, g * (ax0 * ay0)[:, None], mask=m_nw[:, None] & mc, sem="relaxed")
            tl.atomic_add(gx_b + (g_nw + 1)[:, None] + gc, g * (ax1 * ay0)[:, None], mask=m_ne[:, None] & mc,
                          sem="relaxed")
            tl.atomic_add(gx_b + (g_nw + W)[:, None] + gc, g * (ax0 * ay1)[:, None], mask=m_sw[:, None] & mc,
                          sem="relaxed")
            tl.atomic_add(gx_b + (g_nw + W + 1)[:, None] + gc, g * (ax1 * ay1)[:, None], mask=m_se[:, None] & mc,
                          sem="relaxed")
        if NEED_FLOW:
            oc = (offs_c * sxc)[None, :]
            v_nw = tl.load(x_b + o_nw[:, None] + oc, mask=m_nw[:, None] & mc, other=0.0).to(tl.float32)
            v_ne = tl.load(x_b + (o_nw + sxw)[:, None] + oc, mask=m_ne[:, None] & mc, other=0.0).to(tl.float32)
            v_sw = tl.load(x_b + (o_nw + sxh)[:, None] + oc, mask=m_sw[:, None] & mc, other=0.0).to(tl.float32)
            v_se = tl.load(x_b + (o_nw + sxh + sxw)[:, None] + oc, mask=m_se[:, None] & mc, other=0.0).to(tl.float32)
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
    for name, t in (("x", x), ("flow", flow), ("out", out)):
        check_int32_extent(t[0], name)
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
    for name, t in (("grad_out", grad_out), ("x", x), ("flow", flow)):
        check_int32_extent(t[0], name)
    grid = lambda meta: (triton.cdiv(H * W, meta["BLOCK_P"]), B)
    _flow_warp_bwd_kernel[grid](grad_out, x, flow, gx, gf, C, H, W, *grad_out.stride(), *x.stride(), *flow.stride(),
                                NEED_X=need_x, NEED_FLOW=need_flow)
    grad_x = torch.empty_like(x).copy_(gx) if need_x else x.new_empty(0)
    grad_flow = torch.empty_like(flow).copy_(gf) if need_flow else flow.new_empty(0)
    return grad_x, grad_flow
