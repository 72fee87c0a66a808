"""FRESCO's feature optimisation as forward pre-hooks on `unet.up_blocks[i]` (SEMANTICS.md "Feature optimisation"),
and background smoothing (SEMANTICS.md "Background smoothing"). The hooks replace the decoder block's input: on the
reference pass they record it (normalised, for the spatial loss); on denoising steps before end_opt_step they run
`fresco_kernels.optimize_features` on it (then smooth the background when a background map is given)."""
from __future__ import annotations

from typing import List, Optional

import torch

from fresco_kernels import flow_warp, normalize_features, optimize_features

from ..settings import FrescoSettings
from .attention import FrescoController
from .inputs import BatchInputs


@torch.no_grad()
def smooth_background(x: torch.Tensor, inputs: BatchInputs, cfg_chunks: int, backend: Optional[str] = None
                      ) -> torch.Tensor:
    """Warp-and-blend of the background along the batch, a sequential scan inside each CFG chunk (the published
    `warp_tensor`): x[i+1] <- x[i+1](1-m) + warp(x[i], bwd'[i]) m with m = (1 - bwd_occ'[i]) bg[i+1] warp(bg[i],
    bwd'[i]) for i = 0..N-2 (x[i] already blended), then frame N-1 from warp(x[0], fwd'[N-1]) with
    m = (1 - fwd_occ'[N-1]) bg[N-1] warp(bg[0], fwd'[N-1]). x: [cfg_chunks*N, C, h, w]; returns x's dtype."""
    B, C, h, w = x.shape
    n = inputs.n
    fwd, bwd, focc, bocc, bg = inputs.smoothing_inputs(h, w)
    lat = x.float().clone().view(cfg_chunks, n, C, h, w)
    bg = bg.float()
    warped_bg = flow_warp(bg, bwd, backend=backend)
    for i in range(n - 1):
        warped = flow_warp(lat[:, i], bwd[i:i + 1].expand(cfg_chunks, -1, -1, -1), backend=backend)
        m = (1 - bocc[i:i + 1]) * bg[i + 1:i + 2] * warped_bg[i:i + 1]
        lat[:, i + 1] = lat[:, i + 1] * (1 - m) + warped * m
    last = n - 1
    warped = flow_warp(lat[:, 0], fwd[last:last + 1].expand(cfg_chunks, -1, -1, -1), backend=backend)
    m = (1 - focc[last:last + 1]) * bg[last:last + 1] * flow_warp(bg[0:1], fwd[last:last + 1], backend=backend)
    lat[:, last] = lat[:, last] * (1 - m) + warped * m
    return lat.view(B, C, h, w).to(x.dtype)


class DecoderHooks:
    """Forward pre-hooks on unet.up_blocks[settings.opt_layers]; `remove()` takes them off again.

    From `settings`: opt_iters, opt_lr, temporal_loss, spatial_loss and spatial_weight, loss_reduction, adain_eps;
    smooth: background smoothing of the optimised features (the call has a background map and smoothing on)."""

    def __init__(self, unet, controller: FrescoController, settings: FrescoSettings, *, smooth: bool = False):
        n_blocks = len(unet.up_blocks)
        layers = settings.opt_layers
        if any(not 0 <= i < n_blocks for i in layers):
            raise ValueError(f"opt_layers: indices of unet.up_blocks (0..{n_blocks - 1}), got {list(layers)}")
        self.controller = controller
        self.layers = tuple(layers)
        self.iters, self.lr, self.temporal = settings.opt_iters, settings.opt_lr, settings.temporal_loss
        self.spatial_weight = settings.spatial_weight if settings.spatial_loss else 0.0
        self.reduction, self.adain_eps = settings.loss_reduction, settings.adain_eps
        self.smooth = smooth
        self._handles: List = [unet.up_blocks[i].register_forward_pre_hook(self._make_hook(i), with_kwargs=True)
                               for i in self.layers]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _make_hook(self, index: int):
        def hook(module, args, kwargs):
            if "hidden_states" in kwargs:
                x = kwargs["hidden_states"]
            else:
                x = args[0]
            y = self._apply(index, x)
            if y is None:
                return None
            if "hidden_states" in kwargs:
                kwargs = dict(kwargs, hidden_states=y)
            else:
                args = (y,) + tuple(args[1:])
            return args, kwargs
        return hook

    def _apply(self, index: int, x: torch.Tensor) -> Optional[torch.Tensor]:
        c = self.controller
        if c.mode == "record":
            if c.record_features:
                c.ref_features[index] = normalize_features(x.detach())
            return None
        if c.mode != "run" or not c.optimize:
            return None
        h, w = x.shape[-2:]
        # on a 1-pixel side the warp's normalised coordinates 2c/(size-1) and AdaIN's unbiased variance over h*w
        # are undefined (only tiny test frames have one: SD1.5's smallest decoder input is 8x8 at 512²), so such a
        # layer is left as it is and counted
        if h < 2 or w < 2:
            c.count("optimize_undefined", index)
            return None
        flows = (None, None, None, None)
        if self.temporal:
            flows = c.inputs.loss_inputs(h, w)
        ref = c.ref_features.get(index) if self.spatial_weight > 0 else None
        y = optimize_features(x, *flows, ref=ref, iters=self.iters, lr=self.lr, temporal=self.temporal,
                              spatial_weight=self.spatial_weight, reduction=self.reduction,
                              cfg_chunks=c.cfg_chunks, adain_eps=self.adain_eps, backend=c.backend)
        if y is not x:
            c.count("optimize", index)
        if self.smooth:
            y = smooth_background(y, c.inputs, c.cfg_chunks, backend=c.backend)
            c.count("smooth_features", index)
        return y
