"""The one-batch FRESCO pipeline (fresco.pipeline, issue 5) behind the renderer's `BatchStylizer` interface: frames
in, stylised frames and the per-step latents of frames 0 and N-1 out, anchors' latents restored at every step."""
from __future__ import annotations

import inspect
from typing import Optional

import numpy as np
import torch

from ..config import RenderConfig

# what the renderer needs from FrescoPipeline.__call__ beyond one batch: restore frames 0 and 1 from these
# per-step latents at the start of each step, and return the per-step latents of frames 0 and N-1
NEEDED_ARGS = ("anchor_latents", "return_anchor_record")


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False):
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or loaded from cfg.model), showing a
    per-step progress bar when `progress`; a clear error when that pipeline or its anchor hook is not available."""
    try:
        from ..pipeline import FrescoPipeline
    except ImportError as e:
        raise RuntimeError("fresco render needs the one-batch pipeline fresco.pipeline.FrescoPipeline (and "
                           f"diffusers): {e}") from e
    params = inspect.signature(FrescoPipeline.__call__).parameters
    missing = [a for a in NEEDED_ARGS if a not in params]
    if missing:
        raise RuntimeError(f"fresco.pipeline.FrescoPipeline.__call__ lacks {missing}: the renderer restores the "
                           "anchors' latents at every step of each batch after the first")
    pipe = pipe or FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                          else None, device=cfg.device, dtype=cfg.dtype)

    def stylize(frames: np.ndarray, anchor_latents: Optional[list[torch.Tensor]]):
        out = pipe(frames, cfg.prompt, negative_prompt=cfg.negative_prompt, seed=cfg.seed,
                   num_inference_steps=cfg.num_inference_steps, num_warmup_steps=cfg.num_warmup_steps,
                   end_opt_step=cfg.end_opt_step, opt_iters=cfg.opt_iters, guidance_scale=cfg.guidance_scale,
                   cond_scale=cfg.cond_scale, use_freeu=cfg.use_freeu, backend=cfg.backend,
                   anchor_latents=anchor_latents, return_anchor_record=True, progress=progress)
        return out.images, out.anchor_record

    return stylize
