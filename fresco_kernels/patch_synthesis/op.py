"""patch_synthesis as the torch op `fresco::patch_synthesis`: schema, fake, per-device impl. Integer fields and
non-differentiable outputs (the synthesis is a search), so there is no autograd formula: registering one that
raises makes a gradient request fail loudly instead of silently returning nothing."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._config import HAS_TRITON
from .._library import impl_cpu, impl_cuda, lib
from .reference import patch_synthesis_reference

lib.define("patch_synthesis(Tensor style, Tensor source_guide, Tensor target_guide, Tensor weights, int style_weight, "
           "Tensor? init_nnf, int patch_size, int levels, int em_iters, int pm_iters, int search_radius, "
           "int uniformity, int seed) -> (Tensor, Tensor, Tensor)")


@torch.library.register_fake("fresco::patch_synthesis")
def _(style, source_guide, target_guide, weights, style_weight, init_nnf, patch_size, levels, em_iters, pm_iters,
      search_radius, uniformity, seed):
    c = style.shape[0]
    ht, wt = target_guide.shape[1], target_guide.shape[2]
    return (style.new_empty((c, ht, wt), dtype=torch.float32), style.new_empty((2, ht, wt), dtype=torch.int32),
            style.new_empty((ht, wt), dtype=torch.float32))


def _no_grad(ctx, *grads):
    raise RuntimeError("patch_synthesis: the synthesis is a discrete search and has no gradient")


def _setup(ctx, inputs, output):
    pass


torch.library.register_autograd("fresco::patch_synthesis", _no_grad, setup_context=_setup)


def _reference_forward(style, source_guide, target_guide, weights, style_weight, init_nnf: Optional[torch.Tensor],
                       patch_size, levels, em_iters, pm_iters, search_radius, uniformity, seed
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return patch_synthesis_reference(style, source_guide, target_guide, weights, style_weight, init_nnf, patch_size,
                                     levels, em_iters, pm_iters, search_radius, uniformity, seed)


impl_cpu("patch_synthesis", _reference_forward)

if HAS_TRITON:
    from .triton import patch_synthesis_fwd

    impl_cuda("patch_synthesis", patch_synthesis_fwd)
