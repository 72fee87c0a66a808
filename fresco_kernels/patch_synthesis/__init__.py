"""Guided patch-based synthesis (Ebsynth-style multi-scale PatchMatch with EM voting) as the op
`fresco::patch_synthesis`: the key's style image is re-assembled from its own patches so that the patches' guides
match the target's guides. Used by the patch propagation of non-keyframes (fresco.video.propagate, method "patch")."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .._config import resolve_backend
from .._validate import check_same_device, check_tensor
from . import op  # noqa: F401  (registers fresco::patch_synthesis)
from .reference import hash_rng, lowbias32, num_levels, patch_synthesis_reference

__all__ = ["patch_synthesis", "patch_synthesis_reference", "hash_rng", "lowbias32", "num_levels", "MAX_WEIGHT"]

MAX_WEIGHT = 128  # integer weights up to this keep every distance below 2^31 for patch <= 9, 64 channels


def _as_uint8(name: str, t: torch.Tensor) -> torch.Tensor:
    check_tensor(name, t, ndim=3, dtypes=None)
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be uint8 (0..255) or float (0..255, rounded), got {t.dtype}")
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t.clamp(0, 255).round().to(torch.uint8).contiguous()


def _check_int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


def patch_synthesis(style: torch.Tensor, source_guide: torch.Tensor, target_guide: torch.Tensor,
                    weights: Union[Sequence[int], torch.Tensor], *, style_weight: int = 1,
                    init_nnf: Optional[torch.Tensor] = None, patch_size: int = 5, levels: int = 4,
                    em_iters: int = 2, pm_iters: int = 2, search_radius: int = 8, uniformity: int = 0,
                    seed: int = 0, backend: Optional[str] = None
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthesise the target from the key's patches: multi-scale PatchMatch + patch voting (README.md).

    Args:
        style: [C, Hs, Ws] the key's stylised image (uint8, or float 0..255 rounded), C <= 16.
        source_guide: [G, Hs, Ws] guides of the key (uint8 / float 0..255): colour, edges, position, ...
        target_guide: [G, Ht, Wt] the same guides of the frame to synthesise.
        weights: G ints in [0, MAX_WEIGHT], the weight of each guide channel in the squared patch distance.
        style_weight: weight of each style channel against the current estimate (EM coherence term).
        init_nnf: optional [2, Ht, Wt] int source (y, x) per target pixel (e.g. from optical flow) to start from.
        patch_size: odd, 3..9. levels: pyramid levels at most (each side >= 2 * patch_size).
        em_iters, pm_iters: voting rounds per level and PatchMatch passes per round (>= 1).
        search_radius: the first random-search radius of a pass (halved down to 1).
        uniformity: penalty per other target patch already using a candidate source patch (0 = off).
        seed: the random search's seed; the same seed gives the same field on every backend.
        backend: "fused" (C++ on CPU, Triton on CUDA) or "reference".
    Returns:
        out [C, Ht, Wt] float32 0..255, nnf [2, Ht, Wt] int32 (source y, x per target patch centre),
        err [Ht, Wt] float32 (weighted squared patch distance of the final field / patch area).
    """
    style = _as_uint8("style", style)
    source_guide = _as_uint8("source_guide", source_guide)
    target_guide = _as_uint8("target_guide", target_guide)
    c, hs, ws = style.shape
    g = source_guide.shape[0]
    if not 1 <= c <= 16:
        raise ValueError(f"style must have 1..16 channels, got {c}")
    if source_guide.shape[1:] != style.shape[1:]:
        raise ValueError(f"source_guide must be [G, {hs}, {ws}] like style, got {list(source_guide.shape)}")
    if target_guide.shape[0] != g:
        raise ValueError(f"target_guide must have the source_guide's {g} channels, got {target_guide.shape[0]}")
    if c + g > 64:
        raise ValueError(f"style and guides must have at most 64 channels together, got {c + g}")
    weights = torch.as_tensor(weights).to(torch.int64).reshape(-1)
    if weights.numel() != g or bool((weights < 0).any()) or bool((weights > MAX_WEIGHT).any()):
        raise ValueError(f"weights must be {g} ints in [0, {MAX_WEIGHT}] (one per guide channel), got "
                         f"{weights.tolist()}")
    _check_int("style_weight", style_weight, 0, MAX_WEIGHT)
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size not in (3, 5, 7, 9):
        raise ValueError(f"patch_size must be one of 3, 5, 7, 9, got {patch_size!r}")
    ht, wt = target_guide.shape[1:]
    if min(hs, ws, ht, wt) < patch_size:
        raise ValueError(f"style and target_guide must be at least patch_size={patch_size} on each side, got "
                         f"{hs}x{ws} and {ht}x{wt}")
    if ht * wt >= 2**31 or hs * ws >= 2**31:
        raise ValueError("images must have fewer than 2^31 pixels")
    _check_int("levels", levels, 1, 12)
    _check_int("em_iters", em_iters, 1, 64)
    _check_int("pm_iters", pm_iters, 1, 64)
    _check_int("search_radius", search_radius, 0, 1 << 14)
    _check_int("uniformity", uniformity, 0, 2048)
    _check_int("seed", seed, 0, 2**32 - 1)
    check_same_device(style=style, source_guide=source_guide, target_guide=target_guide)
    if init_nnf is not None:
        check_tensor("init_nnf", init_nnf, ndim=3, dtypes=(torch.int32, torch.int64))
        if tuple(init_nnf.shape) != (2, ht, wt):
            raise ValueError(f"init_nnf must be [2, {ht}, {wt}] (source y, x per target pixel), got "
                             f"{list(init_nnf.shape)}")
        init_nnf = init_nnf.to(device=style.device, dtype=torch.int32).contiguous()
    weights = weights.to(device=style.device, dtype=torch.int32)
    args = (style, source_guide, target_guide, weights, style_weight, init_nnf, patch_size, levels, em_iters,
            pm_iters, search_radius, uniformity, seed)
    if resolve_backend(backend) == "reference":
        return patch_synthesis_reference(*args)
    return torch.ops.fresco.patch_synthesis(*args)
