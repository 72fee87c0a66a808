"""The one-batch FRESCO pipeline (fresco.pipeline) behind the renderer's `BatchStylizer` interface: frames and the
anchors' per-step latents in (a sequence or a callable), stylised frames out, frames 0 and N-1's latents reported
per step through a callback. Prompts are built per keyframe as the published script does (fresco.pipeline.prompts),
and the model loads with the config's VAE and annotator weights."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import RenderConfig
from ..pipeline.core import AnchorCallback, AnchorSource
from ..pipeline.prompts import frame_prompts


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> Callable:
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or loaded from cfg.model with cfg.flow,
    cfg.vae and cfg.annotator_path; notes go to `log`, default stderr), running cfg.settings; a per-step progress
    bar when `progress`. Each frame's prompt is prompt + added prompt + that keyframe's extra prompt, with the
    published negative prompt unless set (RenderConfig.prompt_pair)."""
    from ..pipeline import FrescoPipeline
    pipe = pipe or FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                                  else None, device=cfg.device, dtype=cfg.dtype, flow=cfg.flow,
                                                  vae=cfg.vae, annotator_path=cfg.annotator_path, log=log or _log)
    added, negative = cfg.prompt_pair()

    def stylize(frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                on_anchor_record: Optional[AnchorCallback] = None,
                frame_indices: Optional[Sequence[int]] = None) -> np.ndarray:
        indices = range(len(frames)) if frame_indices is None else frame_indices
        prompts = frame_prompts(cfg.prompt, indices, added, cfg.extra_prompts)
        return pipe(frames, prompts, negative_prompt=negative, settings=cfg.settings,
                    anchor_latents=anchor_latents, on_anchor_record=on_anchor_record, progress=progress).images

    return stylize


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
