"""FRESCO's spatial loss: the Gram matrix of channel-normalised features against the reference pass's, as the fused
ops `fresco::gram_loss` / `fresco::gram_loss_fwd_bwd`, which never allocate an hw x hw matrix."""
from __future__ import annotations

from typing import Optional

import torch

from .._config import resolve_backend
from .._validate import check_same_device, check_shape, check_tensor
from . import op  # noqa: F401  (registers fresco::gram_loss, fresco::gram_loss_fwd_bwd)
from .reference import (REDUCTIONS, as_rows, gram_loss_from_gram, gram_loss_reference, gram_matrix,
                        normalize_features_reference)

__all__ = ["gram_loss", "gram_loss_reference", "normalize_features", "gram_matrix", "gram_loss_from_gram",
           "PRECISIONS", "DEFAULT_PRECISION", "REDUCTIONS"]

# Input precision of the Gram tile products on CUDA (accumulation is always fp32):
#   "tf32"   fp32 rows, tf32 tensor cores (10-bit mantissa products): the default, speed with Gram entries good to ~1e-3
#   "bf16"   rows cast to bf16 (8-bit mantissa), fastest; sign(D) is exact in bf16, the Gram entries are not
#   "tf32x3" three tf32 products per fp32 product: ~fp32 accuracy on tensor cores, ~3x the tf32 time
#   "ieee"   fp32 FMA, no tensor cores: the accuracy yardstick
# The CPU (C++ and reference) always computes in IEEE fp32 (fp64 for fp64 input) and ignores it.
PRECISIONS = ("tf32", "bf16", "tf32x3", "ieee")
DEFAULT_PRECISION = "tf32"


def _rows(name: str, t: torch.Tensor) -> torch.Tensor:
    check_tensor(name, t)
    if t.dim() not in (3, 4):
        raise ValueError(f"{name} must be [B, hw, C] or [B, C, h, w], got shape {list(t.shape)}")
    return as_rows(t)


def normalize_features(feat: torch.Tensor) -> torch.Tensor:
    """The rows of `feat` divided by their L2 norm over channels (no epsilon, like the published code).

    Computed once per batch on the reference pass's features; the result is what `gram_loss` takes as `ref`.
    Args:
        feat: [B, C, h, w] or [B, hw, C] float tensor.
    Returns:
        [B, hw, C] fp32 (fp64 for fp64 input). A row whose norm is 0 is defined as the zero row (finite, zero
        gradient) where the published code produced NaN.
    """
    return normalize_features_reference(_rows("feat", feat))


def gram_loss(feat: torch.Tensor, ref: torch.Tensor, reduction: str = "l1", weight: float = 100.0, *,
              precision: str = DEFAULT_PRECISION, backend: Optional[str] = None) -> torch.Tensor:
    """weight · mean over B·hw·hw of |x̂x̂ᵀ − r̂r̂ᵀ| ("l1", the published code) or of its square ("l2", the paper).

    x̂ = feat's rows divided by their channel L2 norm (zero rows stay zero); r̂ = `ref`, already normalised (see
    `normalize_features`). The fused op tiles the Gram matrices and never stores one; "reference" materialises both
    as the published code does (`F.l1_loss(bmm(x̂, x̂ᵀ), G_ref) * weight`).
    Args:
        feat: [B, hw, C] or [B, C, h, w] float tensor (any strides).
        ref: [B, hw, C] normalised reference features, any float dtype (fp32 or the UNet dtype).
        reduction: "l1" or "l2".
        weight: the loss weight (100 in the published code; the paper's L2 uses 50).
        precision: CUDA tile-product precision, one of PRECISIONS (see DEFAULT_PRECISION); ignored on CPU.
        backend: "fused" (the op) or "reference"; default: the global switch.
    Returns:
        0-d fp32 tensor (fp64 for fp64 feat), differentiable w.r.t. feat (through the normalisation).
    """
    rows = _rows("feat", feat)
    check_tensor("ref", ref, ndim=3)
    check_shape("ref", ref, tuple(rows.shape), " (feat as [B, hw, C])")
    check_same_device(feat=feat, ref=ref)
    if rows.shape[0] < 1 or rows.shape[1] < 1 or rows.shape[2] < 1:
        raise ValueError(f"feat must have B >= 1, hw >= 1 and C >= 1 (the loss is a mean over B·hw·hw), got "
                         f"{list(feat.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"weight must be a float, got {type(weight).__name__}")
    if resolve_backend(backend) == "reference":
        return gram_loss_reference(rows, ref, reduction, float(weight))
    if torch.is_grad_enabled() and rows.requires_grad:
        # the optimisation loop always needs the gradient: produce it with the loss, in one pass over the tiles
        return torch.ops.fresco.gram_loss_fwd_bwd(rows, ref, reduction, float(weight), precision)[0]
    return torch.ops.fresco.gram_loss(rows, ref, reduction, float(weight), precision)
