"""Cross-frame attention with one shared K/V set per CFG chunk (frame 0 + occluded tokens of the other frames): the
queries of a chunk's N frames are flattened into one sequence and attend that set in a single SDPA, instead of
repeating K/V N times as the published code does."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._config import resolve_backend
from .._validate import check_positive_int, check_same_device, check_same_dtype, check_shape, check_tensor
from .reference import (cross_frame_attention_reference, cross_frame_keep_reference, cross_frame_kv_reference,
                        repeated_kv_attention_reference)

__all__ = ["cross_frame_keep", "cross_frame_kv", "cross_frame_attention", "cross_frame_attention_reference"]


def cross_frame_keep(bwd_occ: torch.Tensor, scale: float) -> torch.Tensor:
    """Which tokens of each frame join the shared K/V (the published `attn_mask`), at feature size h*w.

    Args:
        bwd_occ: [N-1, H, W] float occlusion in {0, 1} at image size for the pairs (i, i+1), i = 0..N-2, on frame
            i+1's grid (the published `bwd_occs[:-1]`: the wrap pair (N-1, 0) is not used here).
        scale: image size / feature size (8 for 64x64 features of a 512x512 frame, 16 for 32x32).
    Returns:
        keep [N, h*w] bool with h, w = floor(H/scale), floor(W/scale): row 0 all True, row i the bilinear
        downsampling (scale_factor = 1/scale, align_corners False) of bwd_occ[i-1] > 0.5.
    """
    check_tensor("bwd_occ", bwd_occ, ndim=3)
    if bwd_occ.shape[0] < 1:
        raise ValueError(f"bwd_occ must hold N-1 >= 1 frame pairs, got shape {list(bwd_occ.shape)}")
    if not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number (image size / feature size), got {scale!r}")
    return cross_frame_keep_reference(bwd_occ, float(scale))


def cross_frame_kv(k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor], cfg_chunks: int = 2, *,
                   backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The shared key/value set of each CFG chunk: frame 0's tokens, then the tokens with keep True of frames 1..N-1
    (frame-major, pixel order inside a frame), exactly the published `key[:, attn_mask]` without its N-fold repeat.

    Args:
        k, v: [B = cfg_chunks*N, hw, C] key/value projections, images ordered (chunk, frame).
        keep: [N, hw] bool from `cross_frame_keep` (row 0 is all True there), or None: frame 0's tokens only.
        cfg_chunks: CFG chunks in the batch (2: uncond + cond).
        backend: "fused" (one boolean gather over the chunk's frames) or "reference" (the published
            `rearrange(...)[:, attn_mask]`); default: the global switch. Equal results.
    Returns:
        (K, V), each [cfg_chunks, L, C] with L = keep.sum() (hw when keep is None).
    """
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_positive_int("cfg_chunks", cfg_chunks)
    B, hw, C = k.shape
    if B % cfg_chunks:
        raise ValueError(f"k's batch ({B}) must be cfg_chunks*N; not divisible by cfg_chunks={cfg_chunks}")
    n = B // cfg_chunks
    check_shape("v", v, (B, hw, None), " (k is [B, hw, C])")
    check_same_device(k=k, v=v)
    if keep is not None:
        check_tensor("keep", keep, ndim=2, dtypes=(torch.bool,))
        check_shape("keep", keep, (n, hw), f" ([N, hw] with N = B / cfg_chunks = {n})")
        check_same_device(k=k, keep=keep)
    if resolve_backend(backend) == "reference":
        return cross_frame_kv_reference(k, v, keep, cfg_chunks)
    if keep is None:
        return k.unflatten(0, (cfg_chunks, n))[:, 0], v.unflatten(0, (cfg_chunks, n))[:, 0]
    # one gather of the kept tokens of all frames at once: flat (frame, pixel) indices, shared by every chunk
    idx = keep.reshape(-1).nonzero().squeeze(1)
    return (k.reshape(cfg_chunks, n * hw, C).index_select(1, idx),
            v.reshape(cfg_chunks, n * hw, v.shape[-1]).index_select(1, idx))


def cross_frame_attention(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, heads: int, cfg_chunks: int = 2, *,
                          backend: Optional[str] = None) -> torch.Tensor:
    """Every frame of a CFG chunk attends that chunk's shared K/V: the chunk's N frames' queries form one sequence of
    N*hw tokens and one SDPA (batch = cfg_chunks) runs over it. Equal to the published repeat-then-SDPA path.

    Args:
        q: [B = cfg_chunks*N, hw, heads*D] queries (images ordered (chunk, frame)).
        K, V: [cfg_chunks, L, heads*D] from `cross_frame_kv`.
        heads: number of heads.
        cfg_chunks: CFG chunks in the batch.
        backend: "fused" (one SDPA per chunk over the N*hw flattened queries) or "reference" (the published K/V
            repeated N times, one SDPA per image); default: the global switch.
    Returns:
        [B, hw, heads*D]: the attention output in token layout (heads*D channels, head-major), i.e. SDPA's
        [B, heads, hw, D] transposed; this is the `v` that `trajectory_attention` takes.
    """
    check_tensor("q", q, ndim=3)
    check_tensor("K", K, ndim=3)
    check_tensor("V", V, ndim=3)
    check_positive_int("heads", heads)
    check_positive_int("cfg_chunks", cfg_chunks)
    B, hw, C = q.shape
    if C % heads:
        raise ValueError(f"q's last dim ({C}) must be heads*D: not divisible by heads={heads}")
    if B % cfg_chunks:
        raise ValueError(f"q's batch ({B}) must be cfg_chunks*N; not divisible by cfg_chunks={cfg_chunks}")
    L = K.shape[1]
    check_shape("K", K, (cfg_chunks, L, C), " ([cfg_chunks, L, heads*D] like q's channels)")
    check_shape("V", V, (cfg_chunks, L, C), " (like K)")
    check_same_dtype(q=q, K=K, V=V)
    check_same_device(q=q, K=K, V=V)
    if resolve_backend(backend) == "reference":
        return repeated_kv_attention_reference(q, K, V, heads, cfg_chunks)
    D = C // heads
    query = q.reshape(cfg_chunks, -1, heads, D).transpose(1, 2)
    key = K.reshape(cfg_chunks, L, heads, D).transpose(1, 2)
    value = V.reshape(cfg_chunks, L, heads, D).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value)
    return out.transpose(1, 2).reshape(B, hw, C)
