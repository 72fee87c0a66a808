"""Temporal-guided (FLATTEN) attention along optical-flow trajectories as the fused op `fresco::trajectory_attention`:
gather, masked softmax over the N frames and scatter in one pass, with per-token segment ids instead of a mask."""
from __future__ import annotations

from typing import Optional

import torch

from .._config import resolve_backend
from .._validate import check_positive_int, check_same_device, check_same_dtype, check_shape, check_tensor
from . import op  # noqa: F401  (registers fresco::trajectory_attention)
from .op import INFERENCE_ONLY
from .reference import segment_mask, trajectory_attention_reference

__all__ = ["trajectory_attention", "trajectory_attention_reference", "segment_mask"]


def _check_mapping(fwd_mapping: torch.Tensor) -> None:
    """Every row of fwd_mapping must be a permutation of range(hw): one device reduction and one host sync."""
    n, hw = fwd_mapping.shape
    in_range = (fwd_mapping >= 0) & (fwd_mapping < hw)
    counts = torch.zeros((n, hw), dtype=torch.int32, device=fwd_mapping.device)
    counts.scatter_add_(1, fwd_mapping.clamp(0, hw - 1), in_range.to(torch.int32))
    if not bool(in_range.all() & (counts == 1).all()):
        raise ValueError(f"fwd_mapping must hold a permutation of range({hw}) in every row (trajectory p sits at "
                         f"pixel fwd_mapping[f, p] of frame f); got out-of-range or repeated pixels")


def trajectory_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fwd_mapping: torch.Tensor,
                         segment: torch.Tensor, scale_k: float = 0.2, heads: int = 8, cfg_chunks: int = 2, *,
                         check_mapping: bool = True, backend: Optional[str] = None) -> torch.Tensor:
    """FRESCO's temporal-guided attention (FLATTEN) along flow trajectories.

    For each trajectory p, CFG chunk b and head h: the N tokens x_f = x[b*N + f, fwd_mapping[f, p], h*D:(h+1)*D]
    (f = 0..N-1) attend each other with softmax(q_i . (scale_k * k_j) / sqrt(D)) over the frames j with
    segment[j, p] == segment[i, p]; the result for frame i is written at token fwd_mapping[i, p] of image b*N + i.
    Equal to the published gather -> masked SDPA -> argsort-scatter path (`trajectory_attention_reference`).

    Args:
        q, k: [B, hw, heads*D] the raw projections to_q(x), to_k(x) (the processor's query_raw, key_raw), B =
            cfg_chunks*N, images ordered (chunk, frame) (uncond frames then cond frames). fp32/fp16/bf16, any strides.
        v: [B, hw, heads*D] the preceding attention's output in token layout: SDPA's [B, heads, hw, D] result
            transposed to [B, hw, heads, D] and flattened (channel = head*D + d, as in q and k). Same dtype as q.
        fwd_mapping: [N, hw] int64, each row a permutation of range(hw); row 0 is normally the identity.
        segment: [N, hw] int32; frames i and j of trajectory p attend each other iff segment[i,p] == segment[j,p].
        scale_k: the keys' extra factor (published interattn_scale_factor, 0.2), on top of 1/sqrt(D).
        heads: number of heads; heads*D = q.shape[-1].
        cfg_chunks: CFG chunks in the batch (2: uncond + cond).
        check_mapping: verify that fwd_mapping's rows are permutations (one host sync; skipped under torch.compile).
            Pass False when the same, already checked mapping is used many times.
        backend: "fused" (the op) or "reference" (plain PyTorch); default: the global switch.
    Returns:
        [B, hw, heads*D] contiguous, q's dtype (softmax and accumulation in fp32 on the fused path).
    Raises:
        RuntimeError when grad is requested (inference-only op).
    """
    check_tensor("q", q, ndim=3, dtypes=(torch.float32, torch.float16, torch.bfloat16))
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_tensor("fwd_mapping", fwd_mapping, ndim=2, dtypes=(torch.int64,))
    check_tensor("segment", segment, ndim=2, dtypes=(torch.int32,))
    check_positive_int("heads", heads)
    check_positive_int("cfg_chunks", cfg_chunks)
    B, hw, C = q.shape
    if C % heads:
        raise ValueError(f"q's last dim ({C}) must be heads*D: not divisible by heads={heads}")
    check_shape("k", k, (B, hw, C), " (q is [B, hw, heads*D])")
    check_shape("v", v, (B, hw, C), " (q is [B, hw, heads*D])")
    check_same_dtype(q=q, k=k, v=v)
    n = fwd_mapping.shape[0]
    check_shape("fwd_mapping", fwd_mapping, (n, hw), f" ([N, hw] with hw = q.shape[1] = {hw})")
    if B != cfg_chunks * n:
        raise ValueError(f"q's batch ({B}) must be cfg_chunks*N = {cfg_chunks}*{n} (N = fwd_mapping.shape[0])")
    check_shape("segment", segment, (n, hw), " (like fwd_mapping)")
    check_same_device(q=q, k=k, v=v, fwd_mapping=fwd_mapping, segment=segment)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError(INFERENCE_ONLY)
    if check_mapping and not torch.compiler.is_compiling():
        _check_mapping(fwd_mapping)
    if resolve_backend(backend) == "reference":
        return trajectory_attention_reference(q, k, v, fwd_mapping, segment, scale_k, heads, cfg_chunks)
    return torch.ops.fresco.trajectory_attention(q, k, v, fwd_mapping, segment, float(scale_k), heads)
