"""gram_loss as torch ops `fresco::gram_loss` (loss only) and `fresco::gram_loss_fwd_bwd` (loss and dL/dfeat in one
pass over the Gram tiles): schema, fake, autograd, per-device impl."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib, reference_vjp, register_fused_loss_autograd
from .reference import gram_loss_reference

lib.define("gram_loss(Tensor feat, Tensor ref, str reduction, float weight, str precision) -> Tensor")
lib.define("gram_loss_fwd_bwd(Tensor feat, Tensor ref, str reduction, float weight, str precision) -> (Tensor, Tensor)")


def _loss_dtype(feat: torch.Tensor) -> torch.dtype:
    return torch.float64 if feat.dtype == torch.float64 else torch.float32


def _check_shapes(feat, ref):
    torch._check(feat.dim() == 3, lambda: f"gram_loss: feat must be [B, hw, C], got {list(feat.shape)}")
    torch._check(ref.shape == feat.shape, lambda: f"gram_loss: ref must be {list(feat.shape)}, got {list(ref.shape)}")


@torch.library.register_fake("fresco::gram_loss")
def _(feat, ref, reduction, weight, precision):
    _check_shapes(feat, ref)
    return feat.new_empty((), dtype=_loss_dtype(feat))


@torch.library.register_fake("fresco::gram_loss_fwd_bwd")
def _(feat, ref, reduction, weight, precision):
    _check_shapes(feat, ref)
    return feat.new_empty((), dtype=_loss_dtype(feat)), torch.empty_like(feat)


register_fused_loss_autograd("gram_loss", "gram_loss_fwd_bwd", 5)


def _reference_loss(feat, ref, reduction: str, weight: float, precision: str) -> torch.Tensor:
    return gram_loss_reference(feat, ref, reduction, weight).detach()


def _reference_fwd_bwd(feat, ref, reduction: str, weight: float, precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, (grad,) = reference_vjp(lambda f: gram_loss_reference(f, ref, reduction, weight), (feat,))
    return loss, torch.empty_like(feat).copy_(grad)


impl_cpu("gram_loss", _reference_loss)
impl_cpu("gram_loss_fwd_bwd", _reference_fwd_bwd)

if HAS_TRITON:
    from .triton import gram_loss_fwd, gram_loss_fwd_bwd

    impl_cuda("gram_loss", gram_loss_fwd)
    impl_cuda("gram_loss_fwd_bwd", gram_loss_fwd_bwd)
