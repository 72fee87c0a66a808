"""warp_consistency_loss as torch ops `fresco::warp_consistency_loss` (loss only) and
`fresco::warp_consistency_loss_fwd_bwd` (loss and dL/dfeat in one pass): schema, fake, autograd, per-device impl.
Flows and occlusions are constants: no gradient flows to them."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib, reference_vjp, register_fused_loss_autograd
from .reference import warp_consistency_loss_reference

_ARGS = "Tensor feat, Tensor fwd_flow, Tensor bwd_flow, Tensor fwd_occ, Tensor bwd_occ, int cfg_chunks"
lib.define(f"warp_consistency_loss({_ARGS}) -> Tensor")
lib.define(f"warp_consistency_loss_fwd_bwd({_ARGS}) -> (Tensor, Tensor)")


def _loss_dtype(feat: torch.Tensor) -> torch.dtype:
    return torch.float64 if feat.dtype == torch.float64 else torch.float32


def _check(feat, fwd_flow, cfg_chunks):
    torch._check(feat.dim() == 4, lambda: f"warp_consistency_loss: feat must be [B, C, h, w], got {list(feat.shape)}")
    torch._check(feat.shape[0] == cfg_chunks * fwd_flow.shape[0],
                 lambda: f"warp_consistency_loss: feat batch {feat.shape[0]} != cfg_chunks {cfg_chunks} x N {fwd_flow.shape[0]}")


@torch.library.register_fake("fresco::warp_consistency_loss")
def _(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks):
    _check(feat, fwd_flow, cfg_chunks)
    return feat.new_empty((), dtype=_loss_dtype(feat))


@torch.library.register_fake("fresco::warp_consistency_loss_fwd_bwd")
def _(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks):
    _check(feat, fwd_flow, cfg_chunks)
    return feat.new_empty((), dtype=_loss_dtype(feat)), torch.empty_like(feat)


register_fused_loss_autograd("warp_consistency_loss", "warp_consistency_loss_fwd_bwd", 6)


def _reference_loss(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks: int) -> torch.Tensor:
    loss = warp_consistency_loss_reference(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks)
    return loss.detach().to(_loss_dtype(feat))


def _reference_fwd_bwd(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks: int) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, (grad,) = reference_vjp(
        lambda f: warp_consistency_loss_reference(f, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks), (feat,))
    return loss.to(_loss_dtype(feat)), torch.empty_like(feat).copy_(grad)


impl_cpu("warp_consistency_loss", _reference_loss)
impl_cpu("warp_consistency_loss_fwd_bwd", _reference_fwd_bwd)

if HAS_TRITON:
    from .triton import warp_loss_fwd, warp_loss_fwd_bwd

    impl_cuda("warp_consistency_loss", warp_loss_fwd)
    impl_cuda("warp_consistency_loss_fwd_bwd", warp_loss_fwd_bwd)
