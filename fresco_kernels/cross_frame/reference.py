"""Cross-frame attention, the spec: the published "efficient cross-frame attention" block of FRESCOAttnProcessor2_0
(select frame 0 + occluded tokens per CFG chunk, repeat them N times, SDPA per frame) and the published attn_mask
construction of get_flow_and_interframe_paras."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def cross_frame_keep_reference(bwd_occ: torch.Tensor, scale: float) -> torch.Tensor:
    """Published `attn_mask` for one feature scale. bwd_occ: [N-1, H, W] float occlusion (0/1) of the pairs
    (i, i+1), i = 0..N-2, on frame i+1's grid (the published `bwd_occs[:-1]`) -> keep [N, (H/scale)*(W/scale)] bool:
    row 0 all True, row i = bilinear-downsampled bwd_occ[i-1] > 0.5."""
    occ = F.interpolate(bwd_occ.unsqueeze(1), scale_factor=1. / scale, mode="bilinear")
    return torch.cat((occ[0:1].reshape(1, -1) > -1, occ.reshape(occ.shape[0], -1) > 0.5), dim=0)


def cross_frame_kv_reference(k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor],
                              cfg_chunks: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """The published selection: `rearrange(key, "(b f) d c -> b f d c")[:, attn_mask]` (frame 0 alone when keep is
    None). k, v: [B = cfg_chunks*N, hw, C]; keep [N, hw] bool or None -> (K, V) [cfg_chunks, L, C], L = keep.sum()."""
    B, hw, C = k.shape
    n = B // cfg_chunks
    key = k.reshape(cfg_chunks, n, hw, C)
    value = v.reshape(cfg_chunks, n, hw, v.shape[-1])
    if keep is None:
        return key[:, 0], value[:, 0]
    return key[:, keep], value[:, keep]


def repeated_kv_attention_reference(q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, heads: int,
                                    cfg_chunks: int = 2) -> torch.Tensor:
    """Published attention over a shared set: K/V [cfg_chunks, L, heads*D] repeated for each of the chunk's N frames
    (`repeat(..., "b d c -> (b f) d c")`), then one SDPA per image. q: [B = cfg_chunks*N, hw, heads*D] ->
    [B, hw, heads*D] (SDPA's [B, heads, hw, D] transposed to token layout)."""
    B, hw, C = q.shape
    n = B // cfg_chunks
    D = C // heads
    key = K.unsqueeze(1).expand(-1, n, -1, -1).reshape(B, -1, C)
    value = V.unsqueeze(1).expand(-1, n, -1, -1).reshape(B, -1, C)
    query = q.reshape(B, -1, heads, D).transpose(1, 2)
    key = key.view(B, -1, heads, D).transpose(1, 2)
    value = value.view(B, -1, heads, D).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(B, -1, heads * D)


def cross_frame_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor],
                                    heads: int, cfg_chunks: int = 2) -> torch.Tensor:
    """Published path from the projections. q, k, v: [B = cfg_chunks*N, hw, heads*D]; keep [N, hw] bool or None
    (None: every frame attends frame 0 only). K/V of chunk b = k[b*N:(b+1)*N][keep] repeated for each of the N
    frames, then one SDPA per image. Returns [B, hw, heads*D]."""
    return repeated_kv_attention_reference(q, *cross_frame_kv_reference(k, v, keep, cfg_chunks), heads, cfg_chunks)
