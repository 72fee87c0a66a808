"""The one-batch FRESCO pipeline (fresco.pipeline) behind the renderer's `BatchStylizer` interface: frames and the
anchors' per-step latents in (a sequence or a callable), stylised frames out, frames 0 and N-1's latents reported
per step through a callback. Prompts are built per keyframe as the published script does (fresco.prompts),
and the model loads with the config's VAE, annotator weights and the models users bring (fresco.models.addons). With
`use_salinecy` each batch's background map (saliency, docs/flow_and_saliency.md) goes to the pipeline, so both
background smoothings run."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .. import addon_specs
from ..config import RenderConfig
from ..models import addons
from ..models.flow import FlowEstimator, get_flow_estimator
from ..models.saliency import SaliencyEstimator, background_mask, get_saliency_estimator
from ..pipeline import FrescoPipeline
from ..pipeline.core import AnchorCallback, AnchorSource
from ..prompts import frame_prompts
from .preflight import check_device


def pipeline_key(cfg: RenderConfig) -> tuple:
    """What decides `load_pipeline(cfg)`'s result: renders with equal keys can share one pipeline (a Ray actor
    keeps one per key for the jobs it runs)."""
    return (cfg.model, cfg.controlnet_type if cfg.use_controlnet else None, cfg.device, cfg.dtype, cfg.vae,
            cfg.annotator_path, cfg.flow_name, cfg.gmflow_path, cfg.raft_path) + models_key(cfg)


def models_key(cfg: RenderConfig) -> tuple:
    """What decides the user models `model_kwargs(cfg)` loads (part of pipeline_key)."""
    return (cfg.model_config, tuple(cfg.loras or ()), cfg.fuse_lora, tuple(cfg.embeddings or ()), cfg.ip_adapter,
            cfg.ip_scale, str(cfg.controlnets) if cfg.use_controlnet else None)


def model_kwargs(cfg: RenderConfig) -> dict:
    """FrescoPipeline.from_pretrained's keywords for the models users bring (fresco.models.addons): the single-file
    model's config folder, several ControlNets, and the LoRAs / embeddings / IP-Adapter."""
    controlnets = addon_specs.parse_controlnets(cfg.controlnets) if cfg.use_controlnet and cfg.controlnets else None
    return dict(model_config=cfg.model_config, controlnets=controlnets, addons=addons.user_addons(cfg))


def flow_estimator(cfg: RenderConfig) -> FlowEstimator:
    """The flow estimator cfg names (flow / gmflow_path / raft_path) on cfg's device; one serves the batches and the
    propagation of a render."""
    return get_flow_estimator(cfg.flow_name, check_device(cfg.device), gmflow_path=cfg.gmflow_path,
                              raft_path=cfg.raft_path)


def load_pipeline(cfg: RenderConfig, flow: Optional[FlowEstimator] = None, local_files_only: bool = False,
                  log: Optional[Callable[[str], None]] = None):
    """The FrescoPipeline of `cfg`: model, ControlNet, VAE, annotators, device, dtype and flow estimator (`flow`,
    default the one cfg names: flow / gmflow_path / raft_path)."""
    if flow is None:
        flow = flow_estimator(cfg)
    return FrescoPipeline.from_pretrained(cfg.model, controlnet_type=cfg.controlnet_type if cfg.use_controlnet
                                          else None, device=cfg.device, dtype=cfg.dtype, flow=flow,
                                          vae=cfg.vae, annotator_path=cfg.annotator_path, log=log or _log,
                                          local_files_only=local_files_only, **model_kwargs(cfg))


def make_stylizer(cfg: RenderConfig, pipe=None, progress: bool = False, local_files_only: bool = False,
                  flow: Optional[FlowEstimator] = None, saliency: Optional[SaliencyEstimator] = None,
                  log: Optional[Callable[[str], None]] = None,
                  on_step: Optional[Callable[[int, int], None]] = None) -> Callable:
    """A BatchStylizer for `cfg` from fresco.pipeline.FrescoPipeline (`pipe`, or loaded from cfg.model with cfg.vae and
    cfg.annotator_path, from the local cache only when `local_files_only`; notes go to `log`, default stderr),
    running cfg.settings; a per-step progress bar when `progress`. `flow`: the render's flow estimator (default:
    built from cfg's flow / gmflow_path / raft_path). With cfg.use_salinecy each batch's background map comes from
    `saliency` (default: EGNet from cfg.sod_path). Each frame's prompt is prompt + added prompt + that keyframe's
    extra prompt, with the published negative prompt unless set (RenderConfig.prompt_pair).
    `on_step(done, total)` is called after each denoising step."""
    pipe = pipe or load_pipeline(cfg, flow, local_files_only, log)
    if flow is not None:
        pipe.flow = flow
    if cfg.ip_image is not None:
        pipe.set_ip_adapter_image(addons.load_style_image(cfg.ip_image))
    if cfg.use_salinecy and saliency is None:
        if not cfg.sod_path:
            raise ValueError("sod_path: use_salinecy needs the EGNet checkpoint (or turn saliency off with "
                             "--no-saliency), got none")
        saliency = get_saliency_estimator(cfg.sod_path, pipe.device)
    added, negative = cfg.prompt_pair()

    def stylize(frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                on_anchor_record: Optional[AnchorCallback] = None,
                frame_indices: Optional[Sequence[int]] = None) -> np.ndarray:
        indices = range(len(frames)) if frame_indices is None else frame_indices
        prompts = frame_prompts(cfg.prompt, indices, added, cfg.extra_prompts)
        background = None
        if cfg.use_salinecy:
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(pipe.device).permute(0, 3, 1, 2).float()
            background = background_mask(x, saliency)
        return pipe(frames, prompts, negative_prompt=negative, settings=cfg.settings, background=background,
                    anchor_latents=anchor_latents, on_anchor_record=on_anchor_record, progress=progress,
                    step_callback=on_step).images

    return stylize


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
