"""trajectory_attention Triton kernel: one program per (block of trajectories, CFG chunk, head). Each program loads
its trajectories' N query tokens once, streams the N key/value tokens frame by frame with an online softmax, and
stores the output at the query tokens' own positions: no gathered copies, no mask tensor, no argsort."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..common.triton_utils import configs, require_triton

LOG2E = 1.4426950408889634
# fp32 elements of one [BLOCK_P, BLOCK_N, BLOCK_D] register tile (the query and the accumulator are two of them)
_TILE_ELEMS = 2048


@triton.autotune(
    configs=configs([
        triton.Config({}, num_warps=4),
        triton.Config({}, num_warps=2),
        triton.Config({}, num_warps=8),
    ]),
    key=["N", "D"],
)
@triton.jit
def _trajectory_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, fwd_ptr, seg_ptr, out_ptr,
    N, HW, qk_scale,
    sqb, sqt, sqc,
    skb, skt, skc,
    svb, svt, svc,
    sob, sot, soc,
    sfn, sft,
    ssn, sst,
    D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_p = tl.program_id(0)
    chunk = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2).to(tl.int64)
    # trajectories p, frames n, channels d of this head
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_p = offs_p < HW
    mask_n = offs_n < N
    mask_d = offs_d < D
    offs_p64 = offs_p.to(tl.int64)
    chan = head * D + offs_d.to(tl.int64)
    m_pn = mask_p[:, None] & mask_n[None, :]
    m_pnd = m_pn[:, :, None] & mask_d[None, None, :]
    # [BLOCK_P, BLOCK_N]: pixel of trajectory p in frame n, and its segment id
    pix = tl.load(fwd_ptr + offs_n.to(tl.int64)[None, :] * sfn + offs_p64[:, None] * sft, mask=m_pn, other=0)
    seg = tl.load(seg_ptr + offs_n.to(tl.int64)[None, :] * ssn + offs_p64[:, None] * sst, mask=m_pn, other=0)
    row = chunk * N + offs_n.to(tl.int64)
    # [BLOCK_P, BLOCK_N, BLOCK_D] queries, pre-multiplied by scale_k / sqrt(D) * log2(e)
    q_off = (row[None, :] * sqb + pix * sqt)[:, :, None] + (chan * sqc)[None, None, :]
    q = tl.load(q_ptr + q_off, mask=m_pnd, other=0.0).to(tl.float32) * qk_scale
    m_i = tl.full([BLOCK_P, BLOCK_N], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    acc = tl.zeros([BLOCK_P, BLOCK_N, BLOCK_D], dtype=tl.float32)
    m_pd = mask_p[:, None] & mask_d[None, :]
    for j in range(0, N):
        # [BLOCK_P]: the key/value token of frame j on each trajectory
        pix_j = tl.load(fwd_ptr + j * sfn + offs_p64 * sft, mask=mask_p, other=0)
        seg_j = tl.load(seg_ptr + j * ssn + offs_p64 * sst, mask=mask_p, other=0)
        row_j = chunk * N + j
        # [BLOCK_P, BLOCK_D]
        k_j = tl.load(k_ptr + (row_j * skb + pix_j * skt)[:, None] + (chan * skc)[None, :], mask=m_pd, other=0.0)
        v_j = tl.load(v_ptr + (row_j * svb + pix_j * svt)[:, None] + (chan * svc)[None, :], mask=m_pd, other=0.0)
        # [BLOCK_P, BLOCK_N] log2-domain scores of every query frame against frame j, same segment only
        s = tl.sum(q * k_j.to(tl.float32)[:, None, :], axis=2)
        # the mask is added, not selected, as SDPA adds its -inf bias: a NaN/+inf score stays NaN (see README)
        s = s + tl.where(seg == seg_j[:, None], 0.0, float("-inf"))
        m_new = tl.maximum(m_i, s)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * v_j.to(tl.float32)[:, None, :]
        m_i = m_new
    # every real (p, n) attends at least itself, so l_i >= 1 unless all its scores are -inf (an inf key): SDPA then
    # weights every value by 0, and so does this
    out = acc * tl.where(l_i == 0.0, 0.0, 1.0 / l_i)[:, :, None]
    o_off = (row[None, :] * sob + pix * sot)[:, :, None] + (chan * soc)[None, None, :]
    tl.store(out_ptr + o_off, out.to(out_ptr.dtype.element_ty), mask=m_pnd)


def block_sizes(n: int, d: int) -> tuple:
    """(BLOCK_P, BLOCK_N, BLOCK_D): frames and channels padded to powers of two, trajectories per program chosen so
    one [BLOCK_P, BLOCK_N, BLOCK_D] fp32 tile holds at most _TILE_ELEMS elements (all powers of two)."""
    block_n = max(2, triton.next_power_of_2(n))
    block_d = max(16, triton.next_power_of_2(d))
    block_p = max(1, min(64, _TILE_ELEMS // (block_n * block_d)))
    return block_p, block_n, block_d


def trajectory_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fwd_mapping: torch.Tensor,
                             segment: torch.Tensor, scale_k: float, heads: int) -> torch.Tensor:
    """Triton forward. q, k, v [B, hw, heads*D] (any strides), fwd_mapping [N, hw] int64, segment [N, hw] int32
    -> out [B, hw, heads*D] contiguous, q's dtype. B must be a multiple of N (B / N CFG chunks)."""
    require_triton(q, "trajectory_attention")
    B, HW, C = q.shape
    N = fwd_mapping.shape[0]
    D = C // heads
    out = torch.empty((B, HW, C), device=q.device, dtype=q.dtype)
    block_p, block_n, block_d = block_sizes(N, D)
    grid = (triton.cdiv(HW, block_p), B // N, heads)
    _trajectory_attention_fwd_kernel[grid](
        q, k, v, fwd_mapping, segment, out,
        N, HW, float(scale_k) / math.sqrt(D) * LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *fwd_mapping.stride(), *segment.stride(),
        D=D, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out
