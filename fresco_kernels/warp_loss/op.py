"""warp_consistency_loss as torch ops `fresco::warp_consistency_loss` (loss only) and
`fresco::warp_consistency_loss_fwd_bwd` (loss and dL/dfeat in one pass): schema, fake, autograd, per-device impl.
Flows and occlusions are constants: no gradient flows to them."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib
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


# fresco::warp_consistency_loss: the backward runs the fused pass (the loss-only forward kept nothing)
def _setup_loss(ctx, inputs, output):
    feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks = inputs
    ctx.save_for_backward(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ)
    ctx.cfg_chunks = cfg_chunks


def _backward_loss(ctx, grad_loss):
    _, grad = torch.ops.fresco.warp_consistency_loss_fwd_bwd(*ctx.saved_tensors, ctx.cfg_chunks)
    return grad * grad_loss, None, None, None, None, None


torch.library.register_autograd("fresco::warp_consistency_loss", _backward_loss, setup_context=_setup_loss)


# fresco::warp_consistency_loss_fwd_bwd: its gradient output is what the backward needs; not itself differentiable
def _setup_fwd_bwd(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])
    # the gradient output gets no incoming gradient: don't have autograd zero-fill a feat-sized tensor for it
    ctx.set_materialize_grads(False)


def _backward_fwd_bwd(ctx, grad_loss, _grad_of_grad):
    if grad_loss is None:
        return None, None, None, None, None, None
    (grad,) = ctx.saved_tensors
    return grad * grad_loss, None, None, None, None, None


torch.library.register_autograd("fresco::warp_consistency_loss_fwd_bwd", _backward_fwd_bwd, setup_context=_setup_fwd_bwd)


def _reference_loss(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks: int) -> torch.Tensor:
    loss = warp_consistency_loss_reference(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks)
    return loss.detach().to(_loss_dtype(feat))


def _reference_fwd_bwd(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks: int) -> Tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        f = feat.detach().requires_grad_()
        loss = warp_consistency_loss_reference(f, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks)
        (grad,) = torch.autograd.grad(loss, f)
    return loss.detach().to(_loss_dtype(feat)), torch.empty_like(feat).copy_(grad)


CPU_BACKEND = impl_cpu("warp_consistency_loss", _reference_loss)
impl_cpu("warp_consistency_loss_fwd_bwd", _reference_fwd_bwd)

if HAS_TRITON:
    from .triton import warp_loss_fwd, warp_loss_fwd_bwd

    impl_cuda("warp_consistency_loss", warp_loss_fwd)
    impl_cuda("warp_consistency_loss_fwd_bwd", warp_loss_fwd_bwd)
