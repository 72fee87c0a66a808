"""FRESCO-guided self-attention as a diffusers attention processor for the self-attention (`attn1`) layers of the
transformer blocks in `up_blocks.2` and `up_blocks.3` (docs/algorithm.md, "Attention"), and the controller that the
pipeline drives step by step. The processor keeps nothing between calls except what the controller recorded on the
reference pass (the layers' input hidden states)."""
from __future__ import annotations

from collections import Counter
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from fresco_kernels import (cross_frame_attention, cross_frame_attention_reference, cross_frame_kv, get_backend,
                            trajectory_attention)

from ..settings import FrescoSettings
from .inputs import BatchInputs

FRESCO_BLOCKS = ("up_blocks.2.", "up_blocks.3.")


class FrescoController:
    """What the FRESCO processors and decoder hooks do at the current UNet call.

    mode: "off" (plain attention, no hooks), "record" (the reference pass: store the layers' inputs) or "run" (the
    denoising steps: apply the constraints switched on for this step). `events` counts every constraint application
    as (kind, step, layer) for statistics and tests. `settings` are the call's knobs; the ops run on
    settings.backend (None: the global switch, resolved here once)."""

    def __init__(self, settings: Optional[FrescoSettings] = None, cfg_chunks: int = 2):
        self.reset(settings, cfg_chunks)

    def reset(self, settings: Optional[FrescoSettings] = None, cfg_chunks: int = 2) -> None:
        """The state of a new controller for `settings`, set in place (a compiled pipeline keeps one controller:
        its graphs guard on the objects they read)."""
        self.mode = "off"
        self.settings = settings or FrescoSettings()
        self.backend = self.settings.backend or get_backend()
        self.cfg_chunks = cfg_chunks
        self.step = -1
        self.timestep = -1
        # per-step switches (set by the pipeline before each UNet call)
        self.cross_frame = False
        self.spatial = False
        self.temporal = False
        self.optimize = False
        # what the reference pass records
        self.record_attention = False
        self.record_features = False
        self.spatial_scale_k = 0.2
        self.temporal_scale_k = 0.2
        self.inputs: Optional[BatchInputs] = None
        # layer name -> [B, hw, C] input hidden states of the reference pass
        self.ref_hidden: Dict[str, torch.Tensor] = {}
        # decoder block index -> [B, hw, C] normalised input features of the reference pass
        self.ref_features: Dict[int, torch.Tensor] = {}
        self.events: Counter = Counter()
        # False under torch.compile: the events are keyed on the step index, so the pipeline counts them after
        # each UNet call (count_run_call) instead of the processors inside the graph
        self.counting = not self.settings.compile

    def set_step(self, step: int, timestep: int, *, cross_frame: bool, spatial: bool, temporal: bool,
                 optimize: bool) -> None:
        self.mode = "run"
        self.step, self.timestep = step, timestep
        self.cross_frame, self.spatial, self.temporal, self.optimize = cross_frame, spatial, temporal, optimize

    def count(self, kind: str, layer) -> None:
        self.events[(kind, self.step, layer)] += 1

    def count_run_call(self, layers) -> None:
        """The events the processors of `layers` count in one UNet call (when `counting` is off)."""
        if self.counting or self.mode != "run":
            return
        for layer in layers:
            for kind, on in (("spatial_attention", self.spatial), ("cross_frame_attention", self.cross_frame),
                             ("temporal_attention", self.temporal)):
                if on:
                    self.count(kind, layer)

    def clear(self) -> None:
        """Drop everything recorded for the batch (called when the batch is done)."""
        self.mode = "off"
        self.inputs = None
        self.ref_hidden = {}
        self.ref_features = {}


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class FrescoAttnProcessor:
    """Self-attention with FRESCO's constraints, in the published order (docs/algorithm.md, "Attention"):
    1. q, k, v = to_q/to_k/to_v(x); keep the raw q, k for step 4;
    2. cross-frame: one shared K/V per CFG half (frame 0 + the occluded tokens of frames 1..N-1);
    3. spatial-guided (first run step): q <- SDPA(to_q(x_ref), 0.2 to_k(x_ref), q) with x_ref the layer's input on the
       reference pass (no dense bias); then out = SDPA(q, K, V);
    4. temporal-guided (t >= 350): attention along trajectories with q_raw, 0.2 k_raw, out;
    then to_out. With the controller off (or recording) it is plain scaled-dot-product self-attention."""

    def __init__(self, name: str, controller: FrescoController):
        self.name = name
        self.controller = controller

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        c = self.controller
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: the FRESCO processor is for self-attention without a mask; it got "
                             "encoder_hidden_states or attention_mask")
        if attn.norm_q is not None or attn.norm_k is not None:
            raise ValueError(f"{self.name}: attention with q/k normalisation is not supported by FRESCO")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if c.mode == "record" and c.record_attention:
            c.ref_hidden[self.name] = hidden_states.detach()
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        run = c.mode == "run"
        hw = q.shape[1]
        if run and c.spatial:
            ref = c.ref_hidden[self.name]
            if ref.shape != hidden_states.shape:
                raise RuntimeError(f"{self.name}: reference hidden states {list(ref.shape)} do not match "
                                   f"{list(hidden_states.shape)}")
            q_ref = _heads(attn.to_q(ref), heads)
            k_ref = _heads(attn.to_k(ref), heads)
            q_guided = _tokens(F.scaled_dot_product_attention(q_ref, k_ref * c.spatial_scale_k, _heads(q, heads)))
            if c.counting:
                c.count("spatial_attention", self.name)
        else:
            q_guided = q
        if run and c.cross_frame:
            keep = c.inputs.keep[hw]
            if c.backend == "reference":
                out = cross_frame_attention_reference(q_guided, k, v, keep, heads, c.cfg_chunks)
            else:
                K, V = cross_frame_kv(k, v, keep, c.cfg_chunks)
                if torch.compiler.is_compiling():
                    # frame 0's tokens are always kept (cross_frame_keep): the length is >= hw, which tells a
                    # compiled graph (where it is a data-dependent size) that the attention is not over an empty
                    # key set (eager needs no hint; fresco.memory's meta trace assumes a share of kept tokens)
                    torch._check(K.shape[1] >= hw)
                out = cross_frame_attention(q_guided, K, V, heads, c.cfg_chunks)
            if c.counting:
                c.count("cross_frame_attention", self.name)
        else:
            out = _tokens(F.scaled_dot_product_attention(_heads(q_guided, heads), _heads(k, heads),
                                                         _heads(v, heads)))
        if run and c.temporal:
            fwd_mapping, segment = c.inputs.trajectories[hw]
            out = trajectory_attention(q, k, out.to(q.dtype), fwd_mapping, segment, c.temporal_scale_k, heads,
                                       c.cfg_chunks, check_mapping=False, backend=c.backend)
            if c.counting:
                c.count("temporal_attention", self.name)
        out = attn.to_out[0](out.to(q.dtype))
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def fresco_layer_names(unet) -> list:
    """Processor names of the self-attention layers FRESCO replaces (attn1 in up_blocks.2/3)."""
    return [n for n in unet.attn_processors if n.startswith(FRESCO_BLOCKS) and n.endswith("attn1.processor")]


def install_processors(unet, controller: FrescoController, cache: Optional[Dict[str, FrescoAttnProcessor]] = None
                       ) -> Tuple[dict, list]:
    """Put a FrescoAttnProcessor on every FRESCO layer, keep the others; returns (the previous processors, to hand
    to `restore_processors`, and the names of the replaced layers). cache: processors kept between calls (layer
    name -> processor), reused while they drive `controller`, so compiled graphs see the same objects."""
    previous = dict(unet.attn_processors)
    names = fresco_layer_names(unet)
    if not names:
        raise ValueError("unet: no self-attention layers in up_blocks.2/3; FRESCO needs SD1.5's UNet structure")
    new = dict(previous)
    for n in names:
        layer = n[: -len(".processor")]
        proc = cache.get(layer) if cache is not None else None
        if proc is None or proc.controller is not controller:
            proc = FrescoAttnProcessor(layer, controller)
            if cache is not None:
                cache[layer] = proc
        new[n] = proc
    unet.set_attn_processor(new)
    return previous, names


def restore_processors(unet, previous: dict) -> None:
    unet.set_attn_processor(previous)
