"""flow_correspondence as the torch op `fresco::flow_correspondence`: schema, fake, per-device impl. Integer outputs
only, so there is no autograd formula (the outputs never require grad)."""
from __future__ import annotations

from typing import Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib
from .reference import flow_correspondence_reference

lib.define("flow_correspondence(Tensor bwd_flow, Tensor occ, Tensor frames) -> (Tensor, Tensor)")


@torch.library.register_fake("fresco::flow_correspondence")
def _(bwd_flow, occ, frames):
    torch._check(frames.dim() == 4 and frames.shape[1] == 3,
                 lambda: f"frames must be [N, 3, h, w], got {list(frames.shape)}")
    torch._check(bwd_flow.shape[0] == frames.shape[0] - 1, lambda: "bwd_flow must be [N-1, 2, h, w]")
    n, _, h, w = frames.shape
    return frames.new_empty((n, h * w), dtype=torch.int64), frames.new_empty((n, h * w), dtype=torch.int32)


def _reference_forward(bwd_flow, occ, frames) -> Tuple[torch.Tensor, torch.Tensor]:
    return flow_correspondence_reference(bwd_flow, occ, frames)


impl_cpu("flow_correspondence", _reference_forward)

if HAS_TRITON:
    from .triton import flow_correspondence_fwd

    impl_cuda("flow_correspondence", flow_correspondence_fwd)
