"""Per-resolution inputs of one keyframe batch, computed once from the image-size flows and occlusions: the shared-K/V
token masks and trajectories for each FRESCO attention resolution, the flows/occlusions for the losses at each
decoder-input size, and the background-smoothing inputs. The glue between the pipeline and the fresco_kernels ops:
it only picks and caches the ops' results per size."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from fresco_kernels import cross_frame_keep, dilate, flow_correspondence_at_scale, resample_for_loss


class BatchInputs:
    """Flows/occlusions of a batch at image size and what each feature size needs of them.

    fwd_flow, bwd_flow: [N, 2, H, W] pixels (cyclic pairs, wrap pair last); fwd_occ, bwd_occ: [N, H, W] 0/1;
    background: optional [N, 1, H, W] in [0, 1] (1 = background)."""

    def __init__(self, fwd_flow: torch.Tensor, bwd_flow: torch.Tensor, fwd_occ: torch.Tensor, bwd_occ: torch.Tensor,
                 background: Optional[torch.Tensor] = None, backend: Optional[str] = None):
        self.fwd_flow, self.bwd_flow = fwd_flow, bwd_flow
        self.fwd_occ, self.bwd_occ = fwd_occ, bwd_occ
        self.background = background
        self.backend = backend
        self.n = fwd_flow.shape[0]
        self.size = tuple(fwd_flow.shape[2:])
        # hw -> [N, hw] bool (frame 0 + occluded tokens join the shared K/V)
        self.keep: Dict[int, torch.Tensor] = {}
        # hw -> (fwd_mapping [N, hw] int64, segment [N, hw] int32)
        self.trajectories: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._loss: Dict[Tuple[int, int], Tuple[torch.Tensor, ...]] = {}
        self._smooth: Dict[Tuple[int, int], Tuple[torch.Tensor, ...]] = {}

    def add_attention_scale(self, scale: int, frames: Optional[torch.Tensor], keep: bool, trajectories: bool) -> None:
        """Masks for attention layers at 1/scale of the image: cross-frame keep masks and (from `frames`, [N, 3, H, W]
        RGB in [-1, 1]) the trajectories."""
        H, W = self.size
        hw = (H // scale) * (W // scale)
        if keep:
            # the published attn_mask: bwd_occ of the pairs (i, i+1), i < N-1, on frame i+1's grid
            self.keep[hw] = cross_frame_keep(self.bwd_occ[:-1], scale)
        if trajectories:
            self.trajectories[hw] = flow_correspondence_at_scale(self.bwd_flow, self.bwd_occ, frames, scale,
                                                                 backend=self.backend)

    def loss_inputs(self, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(fwd_flow', bwd_flow' [N, 2, h, w], fwd_occ', bwd_occ' [N, 1, h, w]) resampled for the losses."""
        key = (h, w)
        if key not in self._loss:
            fwd, focc = resample_for_loss(self.fwd_flow, self.fwd_occ, key)
            bwd, bocc = resample_for_loss(self.bwd_flow, self.bwd_occ, key)
            self._loss[key] = (fwd.contiguous(), bwd.contiguous(), focc.contiguous(), bocc.contiguous())
        return self._loss[key]

    def smoothing_inputs(self, h: int, w: int) -> Tuple[torch.Tensor, ...]:
        """(fwd_flow', bwd_flow', fwd_occ', bwd_occ', bg') for background smoothing at h x w: the loss resampling,
        occlusions dilated 13x13 at image size, background resized bilinearly."""
        if self.background is None:
            raise RuntimeError("background smoothing needs a background map")
        key = (h, w)
        if key not in self._smooth:
            fwd, bwd, focc, bocc = self.loss_inputs(h, w)
            if key == self.size:
                focc, bocc = dilate(focc, 13), dilate(bocc, 13)
            bg = self.background
            if tuple(bg.shape[2:]) != key:
                bg = F.interpolate(bg, size=key, mode="bilinear")
            self._smooth[key] = (fwd, bwd, focc, bocc, bg)
        return self._smooth[key]
