"""trajectory_attention, the spec: the published FLATTEN block of FRESCOAttnProcessor2_0 (gather along fwd_mapping,
masked SDPA over the N frames, argsort scatter back), with its rearranges verbatim, plus the [hw,1,N,N] mask built
from per-token segment ids."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def segment_mask(segment: torch.Tensor) -> torch.Tensor:
    """The published `interattn_mask` [hw, 1, N, N] bool from segment [N, hw]: frames i and j of trajectory p attend
    each other iff segment[i, p] == segment[j, p]."""
    s = segment.t()
    return (s[:, :, None] == s[:, None, :]).unsqueeze(1)


def _to_frames(x: torch.Tensor, chunks: int, n: int) -> torch.Tensor:
    """[(b f), hw, c] -> [f, (b c), hw], the published `rearrange(x, "(b f) d c -> f (b c) d")`."""
    B, hw, C = x.shape
    return x.reshape(chunks, n, hw, C).permute(1, 0, 3, 2).reshape(n, chunks * C, hw)


def _to_trajectories(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """[f, (b c), d] -> [(b d), f, c], the published `rearrange(x, "f (b c) d -> (b d) f c")`."""
    n, bc, hw = x.shape
    return x.reshape(n, chunks, bc // chunks, hw).permute(1, 3, 0, 2).reshape(chunks * hw, n, bc // chunks)


def trajectory_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fwd_mapping: torch.Tensor,
                                   segment: torch.Tensor, scale_k: float = 0.2, heads: int = 8,
                                   cfg_chunks: int = 2) -> torch.Tensor:
    """Published temporal-guided attention. q, k, v: [B = cfg_chunks*N, hw, heads*D] (q = query_raw, k = key_raw,
    v = the preceding attention's output [B, heads, hw, D] transposed to [B, hw, heads*D]); fwd_mapping [N, hw]
    int64; segment [N, hw] int. Returns [B, hw, heads*D] (the published `hidden_states` transposed back the same way).
    """
    n, hw = fwd_mapping.shape
    C = q.shape[-1]
    D = C // heads
    fwd = fwd_mapping.unsqueeze(1)
    # published: bwd_mapping = torch.sort(fwd_mapping[i])[1]
    bwd = torch.sort(fwd, dim=-1)[1]
    mask = segment_mask(segment)
    # published: value = rearrange(hidden_states, "(b f) h d c -> f (b h c) d"); with v = hidden_states.transpose(1, 2)
    # flattened to [B, hw, heads*D] the channel order (h c) is the same as the projections' (c = heads*D)
    key = _to_frames(k, cfg_chunks, n)
    query = _to_frames(q, cfg_chunks, n)
    value = _to_frames(v, cfg_chunks, n)
    key = torch.gather(key, 2, fwd.expand(-1, key.shape[1], -1))
    query = torch.gather(query, 2, fwd.expand(-1, query.shape[1], -1))
    value = torch.gather(value, 2, fwd.expand(-1, value.shape[1], -1))
    key = _to_trajectories(key, cfg_chunks)
    query = _to_trajectories(query, cfg_chunks)
    value = _to_trajectories(value, cfg_chunks)
    # BHW * N * 8D --> BHW * 8 * N * D
    query = query.view(-1, n, heads, D).transpose(1, 2)
    key = key.view(-1, n, heads, D).transpose(1, 2)
    value = value.view(-1, n, heads, D).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key * scale_k, value, attn_mask=mask.repeat(cfg_chunks, 1, 1, 1))
    # published: rearrange(hidden_states_, "(b d) h f c -> f (b h c) d", b=chunks), gather with bwd_mapping,
    # rearrange "f (b h c) d -> (b f) h d c"; then the processor's transpose(1, 2).reshape(B, hw, heads*D)
    out = out.reshape(cfg_chunks, hw, heads, n, D).permute(3, 0, 2, 4, 1).reshape(n, cfg_chunks * C, hw)
    out = torch.gather(out, 2, bwd.expand(-1, out.shape[1], -1))
    out = out.reshape(n, cfg_chunks, heads, D, hw).permute(1, 0, 4, 2, 3).reshape(cfg_chunks * n, hw, C)
    return out
