"""The one-batch FRESCO pipeline (fresco.pipeline) behind the renderer's `BatchStylizer` interface: frames and the
anchors' per-step latents in (a sequence or a callable), stylised frames out, frames 0 and N-1's latents reported
per step through a callback."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..config import RenderConfig
from ..pipeline.core import AnchorCallback, AnchorSource


def pipeline_key(cfg: RenderConfig) -> tuple:
    """What decides the loaded pipeline of `cfg` (renders with equal keys can share one, e.g. on a Ray actor)."""
    return (cfg.model, cfg.controlnet_type if cfg.use_controlnet else None, cfg.device, cfg.dtype, cfg.flow)


def load_pipeline(cfg: RenderConfig):
    """The FrescoPipeline of `cfg`: its model, ControlNet, device, dtype and flow estimator."""
    from ..pipeline import FrescoPipeline
    return FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                          else None, device=cfg.device, dtype=cfg.dtype, flow=cfg.flow)


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False) -> Callable:
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or `load_pipeline(cfg)`), running
    cfg.settings; a per-step progress bar when `progress`."""
    pipe = pipe or load_pipeline(cfg)

    def stylize(frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                on_anchor_record: Optional[AnchorCallback] = None) -> np.ndarray:
        return pipe(frames, cfg.prompt, negative_prompt=cfg.negative_prompt, settings=cfg.settings,
                    anchor_latents=anchor_latents, on_anchor_record=on_anchor_record, progress=progress).images

    return stylize
