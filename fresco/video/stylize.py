"""The one-batch FRESCO pipeline (fresco.pipeline) behind the renderer's `BatchStylizer` interface: frames and the
anchors' per-step latents in (a sequence or a callable), stylised frames out, frames 0 and N-1's latents reported
per step through a callback."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..config import RenderConfig
from ..pipeline.core import AnchorCallback, AnchorSource


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False) -> Callable:
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or loaded from cfg.model with
    cfg.flow), running cfg.settings; a per-step progress bar when `progress`."""
    from ..pipeline import FrescoPipeline
    pipe = pipe or FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                                  else None, device=cfg.device, dtype=cfg.dtype, flow=cfg.flow)

    def stylize(frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                on_anchor_record: Optional[AnchorCallback] = None) -> np.ndarray:
        return pipe(frames, cfg.prompt, negative_prompt=cfg.negative_prompt, settings=cfg.settings,
                    anchor_latents=anchor_latents, on_anchor_record=on_anchor_record, progress=progress).images

    return stylize
