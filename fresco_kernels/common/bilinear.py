"""Bilinear sampling coefficients in Triton with ATen grid_sampler semantics (bilinear, zero padding,
align_corners=True), shared by the flow_warp and warp_consistency_loss kernels (csrc/bilinear.h is the C++ twin)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bilinear_coeffs(offs_p, flow_ptr, sfc, sfh, sfw, H, W, mask_p):
    """grid_sample(align_corners=True) sample point of pixels offs_p ([BLOCK_P] flat h*W + w) displaced by the flow
    (x at flow_ptr, y at flow_ptr + sfc): (ix, iy, ⌊ix⌋, ⌊iy⌋ as int32, ⌊ix⌋, ⌊iy⌋ as fp32), all [BLOCK_P]. The
    round trip through the normalised grid is kept so results match the reference to the last bits."""
    h = offs_p // W
    w = offs_p % W
    f_off = h * sfh + w * sfw
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
def corners(offs_p, flow_ptr, sfc, sfh, sfw, sxh, sxw, H, W, mask_p):
    """The four corners of each pixel's sample point ([BLOCK_P] each): the nw corner's int32 offset in x's strides
    (ne = +sxw, sw = +sxh) and in a contiguous H*W plane (ne = +1, sw = +W), the axis weights (ax0 + ax1 = 1, ay0 + ay1 =
    1; corner weight nw = ax0*ay0, ne = ax1*ay0, sw = ax0*ay1, se = ax1*ay1 as ATen's grid_sampler) and each
    corner's in-bounds mask (mask_p included; False for a non-finite sample point). Masked corners are never read:
    a load gives 0, whatever x holds there."""
    ix, iy, ix0, iy0, ix0f, iy0f = bilinear_coeffs(offs_p, flow_ptr, sfc, sfh, sfw, H, W, mask_p)
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
    o_nw = iy0 * sxh + ix0 * sxw
    g_nw = iy0 * W + ix0
    return (o_nw, g_nw, ax0, ax1, ay0, ay1,
            mask_p & in_x0 & in_y0, mask_p & in_x1 & in_y0, mask_p & in_x0 & in_y1, mask_p & in_x1 & in_y1)
