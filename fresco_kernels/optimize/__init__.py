"""FRESCO's feature optimisation (the published `optimize_feature`): Adam on an fp32 copy of a decoder block's input
under the temporal warp loss + the spatial Gram loss, then AdaIN back to the input's statistics. One function for
both backends, so the pipeline and the benchmarks call the same thing."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .._config import resolve_backend
from .._validate import check_same_device, check_shape, check_tensor
from ..gram_loss import DEFAULT_PRECISION, PRECISIONS, REDUCTIONS, gram_loss, gram_loss_from_gram, gram_matrix
from ..warp_loss import warp_consistency_loss
from .reference import adain, mean_std

__all__ = ["optimize_features", "adain", "mean_std"]


def _check_number(name: str, v, minimum: float, strict: bool, integer: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(v, bool) or not isinstance(v, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(v).__name__}")
    if v < minimum or (strict and v == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {v}")


def optimize_features(
    feat: torch.Tensor,
    fwd_flow: Optional[torch.Tensor] = None,
    bwd_flow: Optional[torch.Tensor] = None,
    fwd_occ: Optional[torch.Tensor] = None,
    bwd_occ: Optional[torch.Tensor] = None,
    ref: Optional[torch.Tensor] = None,
    *,
    iters: int,
    lr: float,
    spatial_weight: float,
    reduction: str,
    adain_eps: float,
    temporal: bool = True,
    cfg_chunks: int = 2,
    precision: str = DEFAULT_PRECISION,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """The published feature optimisation of one decoder block input (`docs/algorithm.md`, "Feature optimisation").

    cs = fp32 copy of feat (fp64 for fp64 feat); `iters` times: loss = temporal + spatial, backward, Adam(lr) step; then
    AdaIN(cs cast to feat's dtype, feat) per image and channel (content eps 1e-5, style eps `adain_eps`).
    temporal = `warp_consistency_loss` (2 · mean of the occlusion-masked warp residuals, frame pairs i -> i+1 with
    the wrap pair, per CFG chunk); spatial = `gram_loss(cs, ref, reduction, spatial_weight)`.
    Returns `feat` itself, untouched, when there is nothing to optimise (no usable flows and no ref / zero weight),
    as the published code does. No host synchronisation inside the loop.

    Args:
        feat: [B, C, h, w] float tensor, B = cfg_chunks · N (CFG halves stacked: uncond frames, then cond frames).
        fwd_flow, bwd_flow: [N, 2, h, w] flows already at the feature size (pixels of the feature grid), frame
            i -> i+1 and i+1 -> i, wrap pair last; all four of flows/occlusions are given together or not at all.
        fwd_occ, bwd_occ: [N, 1, h, w] occlusion masks (1 = occluded) at the feature size.
        ref: [B, hw, C] normalised reference features (`normalize_features` of the reference pass), or None.
        iters, lr, spatial_weight, reduction, adain_eps: the optimisation's knobs, given explicitly (the caller's
            settings: fresco.settings.FrescoSettings opt_iters, opt_lr, spatial_weight, loss_reduction, adain_eps
            hold the published values and say why). iters: Adam iterations. lr: Adam learning rate.
            spatial_weight: Gram loss weight (0 disables). reduction: "l1" (the published code) or "l2" (the paper).
            adain_eps: the style-variance epsilon of the AdaIN.
        temporal: use the temporal loss when flows are given. cfg_chunks: how many CFG chunks share the flows (2).
        precision: the fused Gram tile precision on CUDA (see gram_loss.PRECISIONS). backend: "fused" | "reference".
    Returns:
        [B, C, h, w] in feat's dtype.
    """
    check_tensor("feat", feat, ndim=4)
    B, C, h, w = feat.shape
    _check_number("cfg_chunks", cfg_chunks, 1, False, integer=True)
    if B % cfg_chunks:
        raise ValueError(f"feat's batch ({B}) must be a multiple of cfg_chunks ({cfg_chunks})")
    n_frames = B // cfg_chunks
    _check_number("iters", iters, 0, False, integer=True)
    _check_number("lr", lr, 0, True)
    _check_number("spatial_weight", spatial_weight, 0, False)
    _check_number("adain_eps", adain_eps, 0, False)
    for name, v in (("lr", lr), ("spatial_weight", spatial_weight), ("adain_eps", adain_eps)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    backend = resolve_backend(backend)
    flows = {"fwd_flow": fwd_flow, "bwd_flow": bwd_flow, "fwd_occ": fwd_occ, "bwd_occ": bwd_occ}
    given = [k for k, v in flows.items() if v is not None]
    if given and len(given) != 4:
        missing = [k for k in flows if k not in given]
        raise ValueError(f"fwd_flow, bwd_flow, fwd_occ and bwd_occ go together: got {given}, missing {missing}")
    for name, t in flows.items():
        if t is not None:
            check_tensor(name, t, ndim=4)
            check_shape(name, t, (n_frames, 2 if "flow" in name else 1, h, w),
                        f" (N = B / cfg_chunks frames at feat's size {h}x{w})")
            check_same_device(feat=feat, **{name: t})
    if ref is not None:
        check_tensor("ref", ref, ndim=3)
        check_shape("ref", ref, (B, h * w, C), " (normalised reference features [B, hw, C])")
        check_same_device(feat=feat, ref=ref)
    use_temporal = bool(temporal) and bool(given)
    use_spatial = ref is not None and spatial_weight > 0
    if not (use_temporal or use_spatial):
        return feat

    work = torch.float64 if feat.dtype == torch.float64 else torch.float32
    if use_spatial:
        # converted once here rather than in every iteration
        ref = ref.detach().to(work).contiguous()
        if backend == "reference":
            # the published code stores the reference Gram matrix once per batch and compares against it
            gram_ref = gram_matrix(ref)
    cs = feat.detach().to(work).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([cs], lr=lr)
    with torch.enable_grad():
        for _ in range(iters):
            optimizer.zero_grad()
            loss = None
            if use_temporal:
                loss = warp_consistency_loss(cs, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks=cfg_chunks,
                                             backend=backend)
            if use_spatial:
                if backend == "reference":
                    spatial = gram_loss_from_gram(cs, gram_ref, reduction, float(spatial_weight))
                else:
                    spatial = gram_loss(cs, ref, reduction, float(spatial_weight), precision=precision, backend=backend)
                loss = spatial if loss is None else spatial + loss
            loss.backward()
            optimizer.step()
    return adain(cs.detach().to(feat.dtype), feat, 1e-5, float(adain_eps))
