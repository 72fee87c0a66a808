"""The published FRESCO's FreeU (its src/free_lunch_utils.py), installed on a diffusers UNet through forward
pre-hooks; diffusers' own `enable_freeu` is a different variant (it picks blocks by index and scales every channel
of a block the same way) and is not used.

What the published variant does, before each resnet of every decoder block, to that resnet's two inputs (the
hidden states h [B, C, H, W] and the skip features r from the encoder):
- C == the UNet's widest width (1280 in SD1.5): h[:, :C/2] *= (b1 - 1) * m + 1 and r = fourier(r, s1);
- C == half of it (640 in SD1.5): the same with b2, s2;
where m [B, 1, H, W] is h's channel mean min-max normalised over each sample's H x W. In SD1.5 the b1 case hits
up_blocks 0 and 1 (every resnet) and up_blocks.2's first resnet; the b2 case up_blocks.2's resnets 1-2 and
up_blocks.3's first resnet. At a block's first resnet h is the block's input tensor and the published code scales it
in place, so whoever holds that tensor sees the change: FRESCO's reference pass records the decoder blocks' inputs
by reference, so their Gram matrices are those of the FreeU-scaled features (fresco.pipeline.optimization records
them the same way). The Fourier filter multiplies the centred 2x2 lowest frequencies (threshold 1) by s."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

# the published values (run_fresco.py: apply_freeu(pipe, b1=1.2, b2=1.5, s1=1.0, s2=1.0))
PUBLISHED_FREEU = dict(b1=1.2, b2=1.5, s1=1.0, s2=1.0)


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """x [B, C, H, W] with its centred (2 threshold)^2 lowest spatial frequencies multiplied by `scale`; computed in
    fp32 (the published code does so for non-power-of-2 sizes), returned in x's dtype."""
    if scale == 1.0:
        # the mask is all ones: the published round trip through the FFT returns x up to rounding
        return x
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    cy, cx = h // 2, w // 2
    mask = torch.ones_like(freq.real)
    mask[..., cy - threshold:cy + threshold, cx - threshold:cx + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _backbone_scale_(h: torch.Tensor, b: float) -> None:
    """In place: h[:, :C/2] *= (b - 1) * minmax(mean_C(h)) + 1, the min-max over each sample's H x W. Where a
    sample's channel mean is constant (a 1x1 map: only tiny test frames have one, SD1.5's smallest decoder input
    is 8x8 at 512x512) the published 0/0 would give NaN; that sample is left unscaled instead."""
    mean = h.mean(1, keepdim=True)
    flat = mean.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    mean = torch.where(span > 0, (mean - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(mean))
    half = h.shape[1] // 2
    h[:, :half] = h[:, :half] * ((b - 1) * mean + 1)


class FreeU:
    """The published FreeU as hooks on `unet.up_blocks`; `remove()` takes them off.

    widths: (b1 width, b2 width); default (block_out_channels[-1], block_out_channels[-1] // 2), i.e. SD1.5's
    (1280, 640). b1, b2 scale the backbone features, s1, s2 the skip features' lowest frequencies. Register after
    any hook that must see a decoder block's input before FreeU scales it (fresco.pipeline.optimization.DecoderHooks
    prepends its hooks, so the order of installation does not matter there)."""

    def __init__(self, unet, b1: float = 1.2, b2: float = 1.5, s1: float = 1.0, s2: float = 1.0,
                 widths: Optional[Tuple[int, int]] = None):
        for name, v in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"freeu {name}: expected a number, got {type(v).__name__}")
        top = unet.config.block_out_channels[-1]
        self.widths = tuple(widths) if widths is not None else (top, top // 2)
        self.params = {self.widths[0]: (float(b1), float(s1)), self.widths[1]: (float(b2), float(s2))}
        self._handles: List = []
        for block in unet.up_blocks:
            self._handles.append(block.register_forward_pre_hook(self._block_hook(block), with_kwargs=True))
            for j in range(1, len(block.resnets)):
                width = block.resnets[j - 1].out_channels
                if width in self.params:
                    self._handles.append(block.resnets[j].register_forward_pre_hook(self._resnet_hook(width)))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _block_hook(self, block):
        """Before the block: scale its input in place (first resnet) and filter the skip features of every resnet
        whose hidden states have a FreeU width."""
        def hook(module, args, kwargs):
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if "res_hidden_states_tuple" in kwargs:
                res = kwargs["res_hidden_states_tuple"]
            else:
                res = args[1]
            res = list(res)
            changed = False
            for j in range(len(block.resnets)):
                width = h.shape[1] if j == 0 else block.resnets[j - 1].out_channels
                if width not in self.params:
                    continue
                b, s = self.params[width]
                if j == 0:
                    _backbone_scale_(h, b)
                if s != 1.0:
                    res[-1 - j] = fourier_filter(res[-1 - j], 1, s)
                    changed = True
            if not changed:
                return None
            if "res_hidden_states_tuple" in kwargs:
                return args, dict(kwargs, res_hidden_states_tuple=tuple(res))
            return (args[0], tuple(res)) + tuple(args[2:]), kwargs
        return hook

    def _resnet_hook(self, width: int):
        """Before resnet j >= 1: its input is cat([h, r]) with h `width` channels; scale h's first half."""
        b, _ = self.params[width]

        def hook(module, args):
            x = args[0]
            # the concatenation is a fresh tensor, so scaling its h part in place changes nothing else
            _backbone_scale_(x[:, :width], b)
            return None
        return hook
