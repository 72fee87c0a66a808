"""gram_loss, the spec: the published spatial loss (diffusion_hacked.py `optimize_feature` and
`get_intraframe_paras`) with its materialised [B, hw, hw] Gram matrices: weight · mean |x̂x̂ᵀ − r̂r̂ᵀ| (L1, the
code) or weight · mean (x̂x̂ᵀ − r̂r̂ᵀ)² (L2, the paper), x̂ = rows divided by their channel L2 norm (no epsilon)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("l1", "l2")


def as_rows(feat: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, hw, C] (a view when feat is channels-last); [B, hw, C] is returned as is."""
    if feat.dim() == 4:
        return feat.flatten(2).transpose(1, 2)
    return feat


def normalize_features_reference(feat: torch.Tensor) -> torch.Tensor:
    """x / ‖x‖ over channels, exactly `v / ((v ** 2).sum(dim=2, keepdims=True) ** 0.5)` of the published code.

    feat: [B, hw, C] or [B, C, h, w]. Returns [B, hw, C] in fp32 (fp64 for fp64 input). A row whose norm is 0 (where
    the published code divides 0 by 0) is defined as the zero row, with zero gradient; a row holding a NaN is NaN."""
    v = as_rows(feat)
    v = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32)
    sq = (v ** 2).sum(dim=2, keepdim=True)
    zero = sq == 0
    # the division runs on a denominator of 1 where the norm is 0, so neither value nor gradient becomes NaN there;
    # a row with a NaN stays NaN (its norm is NaN), so the loss shows it
    norm = torch.where(zero, torch.ones_like(sq), sq) ** 0.5
    return torch.where(zero, torch.zeros_like(v), v / norm)


def gram_matrix(normalized: torch.Tensor) -> torch.Tensor:
    """[B, hw, C] normalised rows -> [B, hw, hw] Gram matrix (what the published code stores per layer)."""
    return torch.bmm(normalized, normalized.transpose(-1, -2))


def gram_loss_from_gram(feat: torch.Tensor, gram_ref: torch.Tensor, reduction: str = "l1",
                        weight: float = 100.0) -> torch.Tensor:
    """The published loss against a stored Gram: `F.l1_loss(bmm(x̂, x̂ᵀ), gram_ref) * weight` (or `F.mse_loss`)."""
    xn = normalize_features_reference(feat)
    gram = gram_matrix(xn)
    gram_ref = gram_ref.to(gram.dtype)
    if reduction == "l1":
        return F.l1_loss(gram, gram_ref) * weight
    if reduction == "l2":
        return F.mse_loss(gram, gram_ref) * weight
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def gram_loss_reference(feat: torch.Tensor, ref: torch.Tensor, reduction: str = "l1",
                        weight: float = 100.0) -> torch.Tensor:
    """weight · mean over B·hw·hw of |x̂x̂ᵀ − r̂r̂ᵀ| (l1) or its square (l2), with materialised Gram matrices.

    feat: [B, hw, C] or [B, C, h, w]; ref: [B, hw, C] normalised reference features. Returns a 0-d tensor (fp32;
    fp64 for fp64 feat), differentiable w.r.t. feat."""
    dtype = torch.float64 if feat.dtype == torch.float64 else torch.float32
    return gram_loss_from_gram(feat, gram_matrix(ref.to(dtype)), reduction, weight)
