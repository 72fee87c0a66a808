"""Saliency behind one interface, and the published rule that turns saliency into FRESCO's background map
(docs/flow_and_saliency.md): background = 1 - clamp(box7(saliency), 0, 1), a 7x7 all-ones convolution over the
replicate-padded saliency, i.e. a soft dilation of the salient region by 3 pixels.

Estimators: the published EGNet (`EGNetSaliency`, weights from `sod_path`) or any callable with the
`SaliencyEstimator` signature."""
from __future__ import annotations

import os
from typing import Callable, Protocol, Union

import torch
import torch.nn.functional as F

from .egnet import SOD_MEAN, load_egnet

__all__ = ["SaliencyEstimator", "EGNetSaliency", "get_saliency_estimator", "background_from_saliency",
           "background_mask", "DILATE_KERNEL"]

DILATE_KERNEL = 7


class SaliencyEstimator(Protocol):
    """frames [N, 3, H, W] float RGB in 0..255 -> [N, h, w] float saliency in [0, 1] (1 = salient object) at any
    resolution h x w (EGNet: H/2 x W/2), on frames' device."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor: ...


class EGNetSaliency:
    """The published EGNet call: RGB minus `SOD_MEAN` per channel (the published code feeds RGB to the BGR-trained
    net; kept as published), bilinear downscale by 2, the network's last fused score through a sigmoid. All N
    frames in one batched pass on `device`."""

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"):
        self.model = load_egnet(path, device)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.device, torch.float32)
        x = x - torch.tensor(SOD_MEAN, device=x.device).view(1, 3, 1, 1)
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        return torch.sigmoid(self.model(x)[2][-1])[:, 0].to(frames.device)


def get_saliency_estimator(saliency: Union[str, os.PathLike, SaliencyEstimator, Callable],
                           device: Union[str, torch.device] = "cpu") -> SaliencyEstimator:
    """An estimator from a `sod_path` (EGNet weights) or the callable itself."""
    if isinstance(saliency, (str, os.PathLike)):
        return EGNetSaliency(saliency, device)
    if callable(saliency):
        return saliency
    raise ValueError(f"saliency: a path to the EGNet checkpoint (sod_path) or a callable frames -> [N, h, w] "
                     f"saliency, got {saliency!r}")


def background_from_saliency(saliency: torch.Tensor, kernel: int = DILATE_KERNEL) -> torch.Tensor:
    """[N, h, w] saliency in [0, 1] -> [N, h, w] background weight 1 - clamp(box_kernel(sal), 0, 1) (box sum over a
    kernel x kernel window, replicate padding)."""
    r = (kernel - 1) // 2
    x = F.pad(saliency.float().unsqueeze(1), (r, r, r, r), mode="replicate")
    box = F.conv2d(x, torch.ones(1, 1, kernel, kernel, device=x.device, dtype=x.dtype))
    return 1.0 - box.clamp(0, 1)[:, 0]


@torch.no_grad()
def background_mask(frames: torch.Tensor, estimator: SaliencyEstimator) -> torch.Tensor:
    """The background map of a keyframe batch, [N, 3, H, W] RGB 0..255 -> [N, h, w] in [0, 1] (1 = background) at
    the estimator's resolution (the pipeline resizes it bilinearly to each tensor it smooths, as published)."""
    sal = estimator(frames)
    n = frames.shape[0]
    if sal.dim() != 3 or sal.shape[0] != n or not sal.is_floating_point():
        raise RuntimeError(f"saliency estimator returned {sal.dtype} {list(sal.shape)}, expected a float "
                           f"[{n}, h, w] map")
    return background_from_saliency(sal)
