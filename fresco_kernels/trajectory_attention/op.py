"""trajectory_attention as the torch op `fresco::trajectory_attention`: schema, fake, per-device impl. Inference
only: the autograd registration refuses inputs that require grad (at forward time, with a clear message)."""
from __future__ import annotations

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib
from .reference import trajectory_attention_reference

lib.define("trajectory_attention(Tensor q, Tensor k, Tensor v, Tensor fwd_mapping, Tensor segment, float scale_k, "
           "int heads) -> Tensor")

INFERENCE_ONLY = ("trajectory_attention is inference-only (no backward): call it under torch.no_grad() / "
                  "torch.inference_mode() or pass q, k, v that do not require grad")


@torch.library.register_fake("fresco::trajectory_attention")
def _(q, k, v, fwd_mapping, segment, scale_k, heads):
    torch._check(q.dim() == 3, lambda: f"q must be [B, hw, heads*D], got {list(q.shape)}")
    torch._check(q.shape[0] % fwd_mapping.shape[0] == 0, lambda: "B must be a multiple of N = fwd_mapping.shape[0]")
    return q.new_empty(q.shape)


def _refuse_grad(ctx, inputs, output):
    raise RuntimeError(INFERENCE_ONLY)


def _no_backward(ctx, grad_out):
    raise RuntimeError(INFERENCE_ONLY)


torch.library.register_autograd("fresco::trajectory_attention", _no_backward, setup_context=_refuse_grad)


def _reference_forward(q, k, v, fwd_mapping, segment, scale_k: float, heads: int) -> torch.Tensor:
    chunks = q.shape[0] // fwd_mapping.shape[0]
    out = trajectory_attention_reference(q, k, v, fwd_mapping, segment, scale_k, heads, chunks)
    return q.new_empty(q.shape).copy_(out)


impl_cpu("trajectory_attention", _reference_forward)

if HAS_TRITON:
    from .triton import trajectory_attention_fwd

    impl_cuda("trajectory_attention", trajectory_attention_fwd)
