"""The one-batch FRESCO pipeline (fresco.pipeline, issue 5) behind the renderer's `BatchStylizer` interface: frames
in, stylised frames and the per-step latents of frames 0 and N-1 out, anchors' latents restored at every step,
with the published prompts, VAE, ControlNet preprocessors, FreeU and constraint switches from the RenderConfig."""
from __future__ import annotations

import inspect
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from .config import RenderConfig
from .prompts import frame_prompts

# what the renderer needs from FrescoPipeline.__call__ beyond one batch: restore frames 0 and 1 from these
# per-step latents at the start of each step, and return the per-step latents of frames 0 and N-1
NEEDED_ARGS = ("anchor_latents", "return_anchor_record")


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False, log=None):
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or loaded from cfg.model with cfg.vae
    and the annotators of cfg.annotator_path), showing a per-step progress bar when `progress`; a clear error when
    that pipeline or its anchor hook is not available. Each frame's prompt is built as published (fresco.prompts):
    prompt + added prompt + that keyframe's extra prompt, with the published negative prompt unless set."""
    try:
        from .pipeline import FrescoPipeline
    except ImportError as e:
        raise RuntimeError("fresco render needs the one-batch pipeline fresco.pipeline.FrescoPipeline (and "
                           f"diffusers): {e}") from e
    params = inspect.signature(FrescoPipeline.__call__).parameters
    missing = [a for a in NEEDED_ARGS if a not in params]
    if missing:
        raise RuntimeError(f"fresco.pipeline.FrescoPipeline.__call__ lacks {missing}: the renderer restores the "
                           "anchors' latents at every step of each batch after the first")
    if pipe is None:
        pipe = FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                              else None, device=cfg.device, dtype=cfg.dtype, vae=cfg.vae,
                                              annotator_path=cfg.annotator_path,
                                              canny_thresholds=(cfg.canny_low, cfg.canny_high),
                                              log=log or _log)
    added, negative = cfg.prompt_pair()

    def stylize(frames: np.ndarray, anchor_latents: Optional[list[torch.Tensor]],
                frame_indices: Optional[Sequence[int]] = None):
        indices = range(len(frames)) if frame_indices is None else frame_indices
        prompts = frame_prompts(cfg.prompt, indices, added, cfg.extra_prompts)
        out = pipe(frames, prompts, negative_prompt=negative, seed=cfg.seed,
                   num_inference_steps=cfg.num_inference_steps, num_warmup_steps=cfg.num_warmup_steps,
                   end_opt_step=cfg.end_opt_step, opt_iters=cfg.opt_iters, guidance_scale=cfg.guidance_scale,
                   cond_scale=cfg.cond_scale, use_freeu=cfg.use_freeu, freeu=cfg.freeu(), backend=cfg.backend,
                   cross_frame_attention=cfg.cross_frame_attention, spatial_attention=cfg.spatial_attention,
                   temporal_attention=cfg.temporal_attention, temporal_loss=cfg.temporal_optimization,
                   spatial_loss=cfg.spatial_optimization, background_smoothing=cfg.background_smoothing,
                   anchor_latents=anchor_latents, return_anchor_record=True, progress=progress)
        return out.images, out.anchor_record

    return stylize


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
