"""gram_loss as torch ops `fresco::gram_loss` (loss only) and `fresco::gram_loss_fwd_bwd` (loss and dL/dfeat in one
pass over the Gram tiles): schema, fake, autograd, per-device impl."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib
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


# fresco::gram_loss: the backward recomputes the tiles with the fused op (the loss-only forward kept nothing)
def _setup_loss(ctx, inputs, output):
    feat, ref, reduction, weight, precision = inputs
    ctx.save_for_backward(feat, ref)
    ctx.args = (reduction, weight, precision)


def _backward_loss(ctx, grad_loss):
    feat, ref = ctx.saved_tensors
    _, grad = torch.ops.fresco.gram_loss_fwd_bwd(feat, ref, *ctx.args)
    return grad * grad_loss, None, None, None, None


torch.library.register_autograd("fresco::gram_loss", _backward_loss, setup_context=_setup_loss)


# fresco::gram_loss_fwd_bwd: its gradient output is what the backward needs; it is not itself differentiable
def _setup_fwd_bwd(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    # the gradient output gets no incoming gradient: don't have autograd zero-fill a feat-sized tensor for it
    ctx.set_materialize_grads(False)


def _backward_fwd_bwd(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:
        return None, None, None, None, None
    (grad,) = ctx.saved_tensors
    return grad * grad_loss, None, None, None, None


torch.library.register_autograd("fresco::gram_loss_fwd_bwd", _backward_fwd_bwd, setup_context=_setup_fwd_bwd)


def _reference_loss(feat, ref, reduction: str, weight: float, precision: str) -> torch.Tensor:
    return gram_loss_reference(feat, ref, reduction, weight).detach()


def _reference_fwd_bwd(feat, ref, reduction: str, weight: float, precision: str) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        f = feat.detach().requires_grad_()
        loss = gram_loss_reference(f, ref, reduction, weight)
        (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), torch.empty_like(feat).copy_(grad)


CPU_BACKEND = impl_cpu("gram_loss", _reference_loss)
impl_cpu("gram_loss_fwd_bwd", _reference_fwd_bwd)

if HAS_TRITON:
    from .triton import gram_loss_fwd, gram_loss_fwd_bwd

    impl_cuda("gram_loss", gram_loss_fwd)
    impl_cuda("gram_loss_fwd_bwd", gram_loss_fwd_bwd)
