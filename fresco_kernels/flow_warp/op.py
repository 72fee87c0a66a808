"""flow_warp as torch ops `fresco::flow_warp` / `fresco::flow_warp_backward`: schema, fake, autograd, per-device impl."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib, reference_vjp
from .reference import flow_warp_reference

lib.define("flow_warp(Tensor x, Tensor flow) -> Tensor")
lib.define("flow_warp_backward(Tensor grad_out, Tensor x, Tensor flow, bool need_x, bool need_flow) -> (Tensor, Tensor)")


@torch.library.register_fake("fresco::flow_warp")
def _(x, flow):
    return torch.empty_like(x)


@torch.library.register_fake("fresco::flow_warp_backward")
def _(grad_out, x, flow, need_x, need_flow):
    gx = torch.empty_like(x) if need_x else x.new_empty(0)
    gf = torch.empty_like(flow) if need_flow else flow.new_empty(0)
    return gx, gf


def _setup_context(ctx, inputs, output):
    x, flow = inputs
    ctx.save_for_backward(x, flow)


def _backward(ctx, grad_out):
    x, flow = ctx.saved_tensors
    need_x, need_flow = ctx.needs_input_grad
    if not (need_x or need_flow):
        return None, None
    gx, gf = torch.ops.fresco.flow_warp_backward(grad_out, x, flow, need_x, need_flow)
    return (gx if need_x else None), (gf if need_flow else None)


torch.library.register_autograd("fresco::flow_warp", _backward, setup_context=_setup_context)


def _reference_forward(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x).copy_(flow_warp_reference(x, flow))


def _reference_backward(grad_out, x, flow, need_x: bool, need_flow: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    if need_x and need_flow:
        _, grads = reference_vjp(flow_warp_reference, (x, flow), grad_out)
    elif need_x:
        _, grads = reference_vjp(lambda t: flow_warp_reference(t, flow), (x,), grad_out)
    else:
        _, grads = reference_vjp(lambda f: flow_warp_reference(x, f), (flow,), grad_out)
    grads = list(grads)
    gx = torch.empty_like(x).copy_(grads.pop(0)) if need_x else x.new_empty(0)
    gf = torch.empty_like(flow).copy_(grads.pop(0)) if need_flow else flow.new_empty(0)
    return gx, gf


impl_cpu("flow_warp", _reference_forward)
impl_cpu("flow_warp_backward", _reference_backward)

if HAS_TRITON:
    from .triton import flow_warp_bwd, flow_warp_fwd

    impl_cuda("flow_warp", flow_warp_fwd)
    impl_cuda("flow_warp_backward", flow_warp_bwd)
