"""FrescoPipeline: FRESCO's denoising of one batch of N keyframes on current diffusers (docs/algorithm.md, "Flow and
occlusion" to "Schedule"), steered by one FrescoSettings; every fresco_kernels op follows its `backend` (None: the
global switch). The call runs in named stages: prepare, reference pass, denoise, decode.

diffusers is extended only through its public hooks: attention processors on the up_blocks.2/3 self-attention
layers (fresco.pipeline.attention), forward pre-hooks on unet.up_blocks[i] (fresco.pipeline.optimization), and this
module's own
denoising loop around `unet(...)` / `controlnet(...)`; UNet2DConditionModel.forward is never copied or replaced.
FreeU is the published variant (fresco.pipeline.freeu), also through hooks. Processors and hooks are removed after
every call, so the components stay usable as a normal pipeline. With settings.compile the UNet's blocks and the
ControlNet run compiled (fresco.pipeline.compiled) until a call without it."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fresco_kernels import get_backend

from ..addon_specs import PREPROCESSORS
from ..models.flow import FlowEstimator, batch_flows, get_flow_estimator
from ..models.sd import (TINY, Components, load_components, make_scheduler, resolve_device, resolve_dtype,
                         tiny_components)
from ..settings import FrescoSettings
from ..threads import intra_op_threads
from .attention import FrescoAttnProcessor, FrescoController, install_processors, restore_processors
from .compiled import DEFAULT_BACKEND, CompiledBlocks, sync_compiled
from .control import control_maps
from .freeu import FreeU
from .inputs import BatchInputs
from .optimization import DecoderHooks, smooth_background

# anchors for frames 0 and 1 per run step j: a sequence, or a callable j -> [2, 4, h, w] (may block until ready)
AnchorSource = Union[Sequence[torch.Tensor], Callable[[int], torch.Tensor]]
# on_anchor_record(j, latents [2, 4, h, w] of frames 0 and N-1 at the start of run step j)
AnchorCallback = Callable[[int, torch.Tensor], None]


@dataclass
class FrescoOutput:
    """images: [N, H, W, 3] uint8 RGB; latents: [N, 4, H/8, W/8] final latents (fp32); timings: seconds per stage;
    peak_memory: peak CUDA bytes allocated per stage (empty on CPU) and `peak_memory_bytes` over the call (None on
    CPU); anchor_record: per run step the [2, 4, h, w] latents of frames 0 and N-1 at its start (when asked);
    events: how often each constraint ran, keyed (kind, step, layer); steps: the schedule actually used."""
    images: np.ndarray
    latents: torch.Tensor
    timings: Dict[str, float]
    peak_memory: Dict[str, int]
    peak_memory_bytes: Optional[int]
    anchor_record: Optional[List[torch.Tensor]] = None
    events: Dict = field(default_factory=dict)
    steps: Dict = field(default_factory=dict)

    @property
    def frames(self) -> np.ndarray:
        return self.images

    def count(self, kind: str, step: Optional[int] = None, layer=None) -> int:
        """How often `kind` ran (optionally only at `step` and/or `layer`)."""
        return sum(v for (k, s, l), v in self.events.items()
                   if k == kind and (step is None or s == step) and (layer is None or l == layer))


class _Stages:
    """Wall time and (on CUDA) peak allocated memory per stage."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.timings: Dict[str, float] = {}
        self.peaks: Dict[str, int] = {}
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        self.overall = 0

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.overall = max(self.overall, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
                self.peaks[name] = max(self.peaks.get(name, 0), peak)
                self.overall = max(self.overall, peak)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t


def _frames_array(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.is_floating_point() else frames).numpy()
    elif isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames: got an empty list; expected N >= 2 frames [H, W, 3] uint8 RGB")
        frames = [np.asarray(f) for f in frames]
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"frames: all frames must have one shape, got {sorted(shapes)}")
        frames = np.stack(frames)
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames: expected a uint8 array [N, H, W, 3] (numpy, torch or a list), got "
                        f"{type(frames).__name__}")
    return frames


def _frames_input(frames) -> "tuple[np.ndarray, torch.Tensor]":
    """The call's frames as ([N, H, W, 3] uint8 RGB for the control maps, [N, 3, H, W] float32 0..255 for flow,
    occlusion and the VAE). Accepted: uint8 [N, H, W, 3] 0..255, or floating point [N, 3, H, W] / [N, H, W, 3] in
    [0, 1] (numpy, torch or a list of frames); float frames are used exactly, rounded only for the control maps."""
    frames = _frames_array(frames)
    if frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected uint8 [N, H, W, 3] RGB, got shape {list(frames.shape)}")
        return frames, torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"frames: expected uint8 RGB values 0..255 or floating point values in [0, 1], got dtype "
                        f"{frames.dtype}")
    if frames.ndim == 4 and frames.shape[1] == 3:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    elif frames.ndim == 4 and frames.shape[-1] == 3:
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
    else:
        raise ValueError(f"frames: expected float [N, 3, H, W] or [N, H, W, 3] RGB, got shape {list(frames.shape)}")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"frames: floating point frames must hold RGB values in [0, 1] (uint8 for 0..255), got "
                         f"values in [{float(x.min()):g}, {float(x.max()):g}]")
    imgs = x * 255.0
    return imgs.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy(), imgs.contiguous()


class FrescoPipeline:
    """FRESCO for one keyframe batch. Build with `from_pretrained(model_id_or_path | "tiny", ...)` or
    `from_components(unet=..., vae=..., ...)`, then call it with frames and a prompt."""

    def __init__(self, components: Components, device: Union[str, torch.device] = "cpu",
                 dtype: torch.dtype = torch.float32, control_type: Union[str, Sequence[str], None] = "canny",
                 flow: Union[str, FlowEstimator, None] = "dis", annotator_path: Optional[str] = None,
                 control_scales: Optional[Sequence[float]] = None):
        """control_type: the preprocessor of the ControlNet, or one per ControlNet of a MultiControlNetModel
        (fresco.addon_specs.PREPROCESSORS). control_scales: one conditioning scale per ControlNet (None, or an
        entry None: the settings' cond_scale, as published)."""
        types = [control_type] if isinstance(control_type, str) or control_type is None else list(control_type)
        if control_type is not None and any(t not in PREPROCESSORS for t in types):
            raise ValueError(f"control_type: one of {PREPROCESSORS} (or a list of them) or None, got {control_type!r}")
        self.unet = components.unet
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.controlnet = components.controlnet
        self.control_type = (types[0] if len(types) == 1 else control_type) if self.controlnet is not None else None
        self.control_types = types if self.controlnet is not None else []
        n_nets = len(getattr(self.controlnet, "nets", [None])) if self.controlnet is not None else 0
        if self.controlnet is not None and len(self.control_types) != n_nets:
            raise ValueError(f"control_type: one preprocessor per ControlNet ({n_nets}), got {control_type!r}")
        if control_scales is not None and len(control_scales) != n_nets:
            raise ValueError(f"control_scales: one scale per ControlNet ({n_nets}), got {list(control_scales)}")
        self.control_scales = list(control_scales) if control_scales is not None else None
        self.addons = components.addons
        self.ip_image = None
        self.device = torch.device(device)
        self.dtype = dtype
        self.flow = get_flow_estimator(flow, self.device)
        self.annotator_path = annotator_path
        ups = [b for b in self.unet.up_blocks]
        if len(ups) != 4:
            raise ValueError(f"unet: FRESCO needs SD1.5's 4 decoder blocks, this UNet has {len(ups)}")
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        # decoder block i's input is the latent downsampled by the upsamplers from block i on
        self.block_down = [2 ** sum(1 for b in ups[i:] if getattr(b, "upsamplers", None)) for i in range(4)]
        self.size_multiple = self.vae_factor * self.block_down[0]
        # settings.compile: torch.compile's backend, the compiled forwards, and the one controller and processor
        # set a compiled pipeline reuses (fresco.pipeline.compiled)
        self.compile_backend: object = DEFAULT_BACKEND
        self._compiled: Optional[CompiledBlocks] = None
        self._controller: Optional[FrescoController] = None
        self._processors: Dict[str, FrescoAttnProcessor] = {}

    @classmethod
    def from_pretrained(cls, model: str = TINY, controlnet=None, controlnet_type: Optional[str] = "canny",
                        device: Union[str, torch.device, None] = "auto", dtype=None, flow="dis",
                        local_files_only: bool = False, vae: Optional[str] = None,
                        annotator_path: Optional[str] = None, log: Callable[[str], None] = print,
                        model_config: Optional[str] = None, controlnets: Optional[Sequence] = None,
                        addons=None) -> "FrescoPipeline":
        """model: an SD1.5-family diffusers id or folder, or "tiny" (random weights built in code, offline).
        controlnet: a ControlNetModel or id/path; default: the v1.0 ControlNet of controlnet_type (None: no
        ControlNet). vae: a separate VAE (fresco.models.sd.load_components; the published one falls back to the
        model's own with one note to `log`). annotator_path: a folder with the HED/depth annotator weights (default:
        the Hugging Face cache). device/dtype: "auto" = CUDA fp16 when available, else CPU fp32.
        model may also be a single-file checkpoint (model_config: the local folder of its diffusers configs);
        controlnets: [fresco.addon_specs.ControlSpec], several ControlNets each with its preprocessor and scale
        (replaces controlnet/controlnet_type); addons: fresco.models.addons.Addons (LoRA, embeddings, IP-Adapter;
        set the IP-Adapter's style image with `set_ip_adapter_image`)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        parts = load_components(model, controlnet=controlnet, controlnet_type=controlnet_type, device=dev, dtype=dt,
                                local_files_only=local_files_only, vae=vae, log=log, model_config=model_config,
                                controlnets=controlnets, addons=addons)
        if controlnets:
            return cls(parts, dev, dt, control_type=[c.preprocessor for c in controlnets], flow=flow,
                       annotator_path=annotator_path, control_scales=[c.scale for c in controlnets])
        return cls(parts, dev, dt, control_type=controlnet_type if parts.controlnet is not None else None, flow=flow,
                   annotator_path=annotator_path)

    def set_ip_adapter_image(self, image) -> None:
        """The IP-Adapter's style image (PIL image or [H, W, 3] uint8 RGB) for the following calls."""
        if self.addons is None or not self.addons.ip_adapter:
            raise ValueError("ip_image: this pipeline has no IP-Adapter (load one with addons=Addons(ip_adapter=...))")
        self.ip_image = image

    @classmethod
    def from_components(cls, unet, vae, scheduler=None, text_encoder=None, tokenizer=None, controlnet=None,
                        control_type: Optional[str] = "canny", flow="dis", device=None, dtype=None
                        ) -> "FrescoPipeline":
        """From loaded diffusers modules (e.g. those of a StableDiffusionControlNetPipeline). The scheduler is
        replaced by SD1.5's DDPM scheduler when not given. text_encoder/tokenizer may be None when prompts are
        passed as embeddings."""
        dev = torch.device(device) if device is not None else next(unet.parameters()).device
        dt = dtype if dtype is not None else next(unet.parameters()).dtype
        from diffusers import DDPMScheduler
        sched = DDPMScheduler.from_config(scheduler.config) if scheduler is not None else make_scheduler()
        parts = Components(unet, vae, text_encoder, tokenizer, sched, controlnet)
        return cls(parts, dev, dt, control_type=control_type if controlnet is not None else None, flow=flow)

    @classmethod
    def tiny(cls, seed: int = 0, controlnet: bool = True, device="cpu", dtype=torch.float32, flow="dis",
             sd15_widths: bool = False, text_encoder: bool = True) -> "FrescoPipeline":
        """The random-weight SD1.5-structured model (see fresco.models.tiny_components)."""
        parts = tiny_components(seed=seed, controlnet=controlnet, sd15_widths=sd15_widths, dtype=dtype,
                                device=device, text_encoder=text_encoder)
        return cls(parts, torch.device(device), dtype, control_type="canny" if controlnet else None, flow=flow)

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def encode_prompt(self, prompt: Union[str, Sequence[str]], n: int) -> torch.Tensor:
        """[n, 77, D] text embeddings of one prompt or one per frame."""
        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError("prompt: this pipeline has no tokenizer/text encoder; pass prompt_embeds instead")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt: a string or a list of {n} strings (one per frame), got {prompt!r}")
        if self.addons is not None and self.addons.embeddings:  # a multi-vector embedding's token -> its tokens
            prompts = [self.addons.loader.maybe_convert_prompt(p, self.tokenizer) for p in prompts]
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def _embeds(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n: int) -> torch.Tensor:
        def as_batch(name, e):
            if not isinstance(e, torch.Tensor) or e.dim() not in (2, 3):
                raise ValueError(f"{name}: a [77, D] or [N, 77, D] tensor, got "
                                 f"{getattr(e, 'shape', type(e).__name__)}")
            e = e.to(self.device, self.dtype)
            e = e.unsqueeze(0) if e.dim() == 2 else e
            if e.shape[0] == 1:
                e = e.expand(n, -1, -1)
            if e.shape[0] != n:
                raise ValueError(f"{name}: batch must be 1 or N={n}, got {e.shape[0]}")
            return e

        if prompt_embeds is not None:
            if prompt is not None:
                raise ValueError("prompt and prompt_embeds: pass one of them")
            cond = as_batch("prompt_embeds", prompt_embeds)
        else:
            if prompt is None:
                raise ValueError("prompt: a prompt (or prompt_embeds) is required")
            cond = self.encode_prompt(prompt, n)
        if negative_prompt_embeds is not None:
            uncond = as_batch("negative_prompt_embeds", negative_prompt_embeds)
        elif self.tokenizer is not None and self.text_encoder is not None:
            uncond = self.encode_prompt("" if negative_prompt is None else negative_prompt, n)
        else:
            raise ValueError("negative_prompt_embeds: required when the pipeline has no text encoder")
        if uncond.shape != cond.shape:
            raise ValueError(f"negative_prompt_embeds: shape {list(uncond.shape)} must match prompt_embeds "
                             f"{list(cond.shape)}")
        return torch.cat([uncond, cond])

    @torch.no_grad()
    def vae_encode(self, images: torch.Tensor, generator: torch.Generator, chunk: int) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> scaled latents (a sample of the posterior), `chunk` frames per VAE call."""
        sf = self.vae.config.scaling_factor
        out = [self.vae.encode(images[i:i + chunk].to(self.dtype)).latent_dist.sample(generator)
               for i in range(0, images.shape[0], chunk)]
        return torch.cat(out).float() * sf

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        sf = self.vae.config.scaling_factor
        out = [self.vae.decode((latents[i:i + chunk] / sf).to(self.dtype)).sample
               for i in range(0, latents.shape[0], chunk)]
        return torch.cat(out).float()

    def _step(self, eps: torch.Tensor, t: int, sample: torch.Tensor, generator: torch.Generator,
              smooth: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
        """One DDPM step as published (fixed-small variance, no clipping); `smooth` edits the predicted x0."""
        sched = self.scheduler
        prev_t = int(sched.previous_timestep(t))
        acp = sched.alphas_cumprod
        a_t = acp[t].item()
        a_prev = acp[prev_t].item() if prev_t >= 0 else 1.0
        b_t, b_prev = 1 - a_t, 1 - a_prev
        cur_a = a_t / a_prev
        cur_b = 1 - cur_a
        x0 = (sample - b_t ** 0.5 * eps) / a_t ** 0.5
        if smooth is not None:
            x0 = smooth(x0)
        mean = (a_prev ** 0.5 * cur_b / b_t) * x0 + (cur_a ** 0.5 * b_prev / b_t) * sample
        std = max(b_prev / b_t * cur_b, 1e-20) ** 0.5
        noise = torch.randn(eps.shape, generator=generator, device=eps.device, dtype=eps.dtype)
        return mean + std * noise

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, frames, prompt: Union[str, Sequence[str], None] = None,
                 negative_prompt: Union[str, Sequence[str], None] = None, *,
                 settings: Optional[FrescoSettings] = None,
                 prompt_embeds: Optional[torch.Tensor] = None, negative_prompt_embeds: Optional[torch.Tensor] = None,
                 control_images=None, background=None, anchor_latents: Optional[AnchorSource] = None,
                 on_anchor_record: Optional[AnchorCallback] = None, return_anchor_record: bool = False,
                 progress: bool = False, step_callback: Optional[Callable[[int, int], None]] = None,
                 **overrides) -> FrescoOutput:
        """Translate one batch of keyframes.

        frames: [N, H, W, 3] uint8 RGB 0..255, or float [N, 3, H, W] / [N, H, W, 3] RGB in [0, 1] (numpy, torch or
        a list of frames); N >= 2, H and W multiples of 64 (SD1.5).
        prompt / negative_prompt: a string or one per frame (or prompt_embeds / negative_prompt_embeds [N|1, 77, D]).
        settings: the FRESCO knobs (fresco.settings.FrescoSettings: schedule, guidance, constraints, optimisation,
        backend, vae_chunk); `overrides` are FrescoSettings fields by keyword (e.g. num_inference_steps=6,
        backend="reference") applied on top of `settings` (default FrescoSettings()). backend=None (the default)
        follows the global switch, fresco_kernels.use_backend / set_backend.
        control_images: [N, H, W(, 3)] uint8 condition images (default: computed with the ControlNet's type); with
        several ControlNets a list of such, one per ControlNet.
        background: [N, h, w] float in [0, 1] (1 = background) for background smoothing, any h x w (e.g. the
        published half-size saliency map): resized bilinearly to each tensor it smooths, as published.
        anchor_latents: for long videos, the [2, 4, h, w] latents written into frames 0 and 1 at the start of each run
        step j: a sequence (one per run step) or a callable j -> tensor (called at step j; it may block until the
        anchors are available). on_anchor_record(j, latents): called at the start of each run step j (after the
        anchors were written) with a copy of frames 0 and N-1's latents [2, 4, h, w]; return_anchor_record: also
        return them as a list in `FrescoOutput.anchor_record`.
        progress: a tqdm bar over the denoising steps (cleared when the batch is done). step_callback(done, total):
        called after each run step with the steps run so far and the run steps in all (front ends' progress; an
        exception it raises stops the batch)."""
        s = self._settings(settings, overrides)
        with intra_op_threads(s.threads):
            return self._call(frames, prompt, negative_prompt, s, prompt_embeds, negative_prompt_embeds,
                              control_images, background, anchor_latents, on_anchor_record, return_anchor_record,
                              progress, step_callback)

    def _call(self, frames, prompt, negative_prompt, s: FrescoSettings, prompt_embeds, negative_prompt_embeds,
              control_images, background, anchor_latents, on_anchor_record, return_anchor_record, progress,
              step_callback) -> FrescoOutput:
        """`__call__`'s body, with the settings resolved and the thread count (`threads`) in force."""
        batch = self._prepare(frames, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                              control_images, background, s)
        anchors = self._anchor_source(anchor_latents, batch)
        record: Optional[List[torch.Tensor]] = [] if return_anchor_record else None
        callbacks = [on_anchor_record] if on_anchor_record is not None else []
        if record is not None:
            callbacks.append(lambda j, latents: record.append(latents))
        self._compiled = sync_compiled(self._compiled, self.unet, self.controlnet, s.compile, self.compile_backend)
        reuse = dict(cache=self._processors) if s.compile else {}  # compiled graphs guard on the processors
        previous, names = install_processors(self.unet, batch.ctrl, **reuse)
        batch.layers = [n[: -len(".processor")] for n in names]
        hooks = None
        freeu = None
        try:
            if batch.optimize_on:
                hooks = DecoderHooks(self.unet, batch.ctrl, s, smooth=batch.smoothing)
            if s.use_freeu:
                # the published variant, on for the reference pass too (FreeU is patched into its UNet); its
                # in-place scaling of the decoder inputs shows in the features the reference pass records
                freeu = FreeU(self.unet, **s.freeu())
            self._reference_pass(batch)
            if hooks is not None:
                hooks.finish_record()
            latents = self._denoise(batch, anchors, callbacks, progress, step_callback)
        finally:
            batch.ctrl.mode = "off"
            if hooks is not None:
                hooks.remove()
            restore_processors(self.unet, previous)
            if freeu is not None:
                freeu.remove()
            events = dict(batch.ctrl.events)
            batch.ctrl.clear()
        images = self._decode(batch, latents)
        st = batch.stages
        return FrescoOutput(images=images, latents=latents, timings=st.timings, peak_memory=st.peaks,
                            peak_memory_bytes=st.overall if st.cuda else None, anchor_record=record, events=events,
                            steps=batch.schedule)

    # ------------------------------------------------------------------ stages of the call
    @staticmethod
    def _settings(settings: Optional[FrescoSettings], overrides: Dict) -> FrescoSettings:
        """`settings` (default FrescoSettings()) with the keyword overrides, backend resolved to a name."""
        if settings is not None and not isinstance(settings, FrescoSettings):
            raise TypeError(f"settings: a fresco.settings.FrescoSettings, got {type(settings).__name__}")
        s = (settings or FrescoSettings()).replace(**overrides)
        return s.replace(backend=s.backend or get_backend())

    def _prepare(self, frames, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, control_images,
                 background, s: FrescoSettings) -> "_Batch":
        """Check the inputs and compute everything the denoising needs: flows/occlusions and per-scale masks, control
        maps, text embeddings, the VAE latents of the frames and the initial noise."""
        frames, imgs = _frames_input(frames)
        n, H, W = frames.shape[:3]
        if n < 2:
            raise ValueError(f"frames: FRESCO needs N >= 2 frames per batch, got {n}")
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"frames: H and W must be multiples of {m} (the VAE's 8 times the UNet's decoder "
                             f"downsampling), got {H}x{W}; resize first (fresco.video.processing_size)")
        schedule = s.schedule()
        warmup = schedule["num_warmup_steps"]
        dev = self.device
        cond_img = self._control_images(control_images, frames)
        bg = self._background(background, n, H, W)
        smoothing = bg is not None and s.background_smoothing
        optimize_on = s.feature_optimization and (s.temporal_loss or (s.spatial_loss and s.spatial_weight > 0)
                                                  or smoothing) \
            and any(warmup <= i < schedule["end_opt_step"] for i in range(s.num_inference_steps))
        need_flow = s.cross_frame_attention or s.temporal_attention or (optimize_on and s.temporal_loss) or smoothing
        batch = _Batch(settings=s, schedule=schedule, n=n, size=(H, W), stages=_Stages(dev),
                       ctrl=self._batch_controller(s), gen=torch.Generator(device=dev).manual_seed(int(s.seed)),
                       smoothing=smoothing, optimize_on=optimize_on)
        stages = batch.stages
        imgs = imgs.to(dev)
        with stages("flow"):
            if need_flow:
                fwd, bwd, focc, bocc = batch_flows(imgs, self.flow, backend=s.backend)
                batch.inputs = BatchInputs(fwd, bwd, focc, bocc, background=bg, backend=s.backend)
        if self.controlnet is not None:
            with stages("control"):
                conds = []
                for k, ctype in enumerate(self.control_types):
                    img = cond_img[k] if cond_img is not None else \
                        control_maps(frames, ctype, self.annotator_path, (s.canny_low, s.canny_high), device=dev)
                    cond = torch.from_numpy(img).to(dev).permute(0, 3, 1, 2).float() / 255.0
                    conds.append(torch.cat([cond, cond]).to(self.dtype))
                batch.cond = conds[0] if len(conds) == 1 else conds
        if self.addons is not None and self.addons.ip_adapter:
            if self.ip_image is None:
                raise ValueError("ip_image: the IP-Adapter needs a style image (FrescoPipeline.set_ip_adapter_image)")
            with stages("prepare"):
                embeds = self.addons.loader.prepare_ip_adapter_image_embeds(self.ip_image, None, dev, n, True)
                batch.added_cond = {"image_embeds": [e.to(self.dtype) for e in embeds]}
        imgs_pm1 = imgs / 127.5 - 1.0
        with stages("prepare"):
            if batch.inputs is not None and (s.cross_frame_attention or s.temporal_attention):
                for i in (2, 3):
                    scale = self.vae_factor * self.block_down[i]
                    batch.inputs.add_attention_scale(scale, imgs_pm1, keep=s.cross_frame_attention,
                                                     trajectories=s.temporal_attention)
            batch.embeds = self._embeds(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n)
        batch.ctrl.inputs = batch.inputs
        self.scheduler.set_timesteps(s.num_inference_steps, device=dev)
        batch.timesteps = [int(t) for t in self.scheduler.timesteps]
        h, w = H // self.vae_factor, W // self.vae_factor
        batch.noise = torch.randn((n, self.unet.config.in_channels, h, w), generator=batch.gen, device=dev)
        with stages("encode"):
            batch.latent_x0 = self.vae_encode(imgs_pm1, batch.gen, s.vae_chunk)
        return batch

    def _batch_controller(self, s: FrescoSettings) -> FrescoController:
        """A new controller for the batch; under compile the pipeline's one controller, reset in place."""
        if not s.compile:
            return FrescoController(s)
        if self._controller is None:
            self._controller = FrescoController(s)
        else:
            self._controller.reset(s)
        return self._controller

    def _control_images(self, control_images, frames: np.ndarray) -> Optional[List[np.ndarray]]:
        """The user's condition images, one [N, H, W, 3] uint8 array per ControlNet, checked against `frames` (None:
        compute them). Several ControlNets take a list with one entry per ControlNet."""
        if control_images is None:
            return None
        if self.controlnet is None:
            raise ValueError("control_images: this pipeline has no ControlNet")
        if len(self.control_types) == 1:
            return [self._control_image(control_images, frames)]
        if not isinstance(control_images, (list, tuple)) or len(control_images) != len(self.control_types):
            raise ValueError(f"control_images: one entry per ControlNet ({len(self.control_types)}), each like "
                             f"frames; got {type(control_images).__name__}")
        return [self._control_image(c, frames) for c in control_images]

    def _control_image(self, control_images, frames: np.ndarray) -> np.ndarray:
        ci = _frames_array(control_images)
        if ci.ndim == 3:
            ci = np.repeat(ci[..., None], 3, axis=-1)
        if ci.shape != frames.shape or ci.dtype != np.uint8:
            raise ValueError(f"control_images: expected uint8 {list(frames.shape)} (or without the channel "
                             f"axis) matching frames, got {ci.dtype} {list(ci.shape)}")
        return ci

    def _background(self, background, n: int, H: int, W: int) -> Optional[torch.Tensor]:
        """The background map as [N, 1, h, w] float32 on the device (None when not given)."""
        if background is None:
            return None
        bg = torch.as_tensor(np.asarray(background) if not isinstance(background, torch.Tensor) else background)
        if bg.dim() != 3 or bg.shape[0] != n or min(bg.shape[1:]) < 1 or not bg.is_floating_point():
            raise ValueError(f"background: a float [N={n}, h, w] map in [0, 1] (e.g. [N, H, W]), got "
                             f"{bg.dtype} {list(bg.shape)}")
        if bool((bg < 0).any() or (bg > 1).any()):
            raise ValueError("background: values must lie in [0, 1] (1 = background)")
        return bg.to(self.device, torch.float32).unsqueeze(1)

    def _anchor_source(self, anchor_latents: Optional[AnchorSource], batch: "_Batch"
                       ) -> Optional[Callable[[int], torch.Tensor]]:
        """anchor_latents as a function of the run step (a sequence is checked whole now, a callable per step)."""
        if anchor_latents is None:
            return None
        n_run = batch.settings.num_inference_steps - batch.schedule["num_warmup_steps"]
        H, W = batch.size
        shape = (2, self.unet.config.in_channels, H // self.vae_factor, W // self.vae_factor)
        if callable(anchor_latents):
            def checked(j: int) -> torch.Tensor:
                a = anchor_latents(j)
                if not isinstance(a, torch.Tensor) or tuple(a.shape) != shape:
                    raise ValueError(f"anchor_latents: the callable returned {getattr(a, 'shape', type(a).__name__)} "
                                     f"for step {j}; expected a {list(shape)} tensor (frames 0 and 1 of this batch)")
                return a
            return checked
        if len(anchor_latents) != n_run:
            raise ValueError(f"anchor_latents: one {list(shape)} tensor per run step ({n_run}), got "
                             f"{len(anchor_latents)}")
        bad = [j for j, a in enumerate(anchor_latents) if not isinstance(a, torch.Tensor) or tuple(a.shape) != shape]
        if bad:
            raise ValueError(f"anchor_latents: every entry must be a {list(shape)} tensor (frames 0 and 1 of this "
                             f"batch); entries {bad[:5]} are not")
        return anchor_latents.__getitem__

    def _reference_pass(self, batch: "_Batch") -> None:
        """One UNet call without ControlNet on the frames noised to the last timestep, plain attention: records the
        FRESCO layers' inputs (spatial-guided attention) and the decoder features (spatial loss)."""
        s, ctrl = batch.settings, batch.ctrl
        spatial_loss = batch.optimize_on and s.spatial_loss and s.spatial_weight > 0
        if not (batch.spatial_on or spatial_loss):
            return
        with batch.stages("reference"):
            ctrl.mode = "record"
            ctrl.record_attention = batch.spatial_on
            ctrl.record_features = spatial_loss
            t_ref = batch.timesteps[-1]
            x_ref = self.scheduler.add_noise(batch.latent_x0, batch.noise, torch.tensor([t_ref], device=self.device))
            self.unet(torch.cat([x_ref, x_ref]).to(self.dtype), torch.tensor(t_ref, device=self.device),
                      encoder_hidden_states=batch.embeds, added_cond_kwargs=batch.added_cond, return_dict=False)
            ctrl.mode = "off"

    def _denoise(self, batch: "_Batch", anchors: Optional[Callable[[int], torch.Tensor]],
                 callbacks: List[AnchorCallback], progress: bool,
                 step_callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """The DDPM loop over the run steps with the constraints switched per step (step_callback(done, total)
        after each); returns the final latents."""
        s, ctrl, n = batch.settings, batch.ctrl, batch.n
        warmup, end_opt = batch.schedule["num_warmup_steps"], batch.schedule["end_opt_step"]
        bg_steps = set(batch.schedule["bg_smoothing_steps"])
        timesteps = batch.timesteps
        start_noise = batch.noise[:1].expand_as(batch.noise) if s.repeat_noise else batch.noise
        if s.pure_noise:
            # the published num_warmup_steps < 0: no SDEdit, every step from the noise
            latents = start_noise.clone()
        else:
            latents = self.scheduler.add_noise(batch.latent_x0, start_noise,
                                               torch.tensor([timesteps[warmup]], device=self.device))

        def smooth_x0(x0: torch.Tensor) -> torch.Tensor:
            image = self.vae_decode(x0, s.vae_chunk)
            image = smooth_background(image, batch.inputs, 1, backend=s.backend)
            ctrl.count("smooth_x0", "image")
            return self.vae_encode(image, batch.gen, s.vae_chunk)

        with batch.stages("denoise"):
            for j, t in enumerate(tqdm(timesteps[warmup:], desc="steps", unit="step", leave=False,
                                       disable=not progress)):
                i = warmup + j
                ctrl.set_step(i, t, cross_frame=s.cross_frame_attention,
                              spatial=batch.spatial_on and j < s.spatial_attention_steps,
                              temporal=s.temporal_attention and t >= s.temporal_attention_until,
                              optimize=batch.optimize_on and i < end_opt)
                if anchors is not None:
                    latents[0:2] = anchors(j).to(self.device, latents.dtype)
                for cb in callbacks:
                    cb(j, latents[[0, n - 1]].clone())
                eps = self._guided_eps(batch, latents, t)
                latents = self._step(eps, t, latents, batch.gen, smooth_x0 if batch.smoothing and i in bg_steps
                                     else None)
                if step_callback is not None:
                    step_callback(j + 1, len(timesteps) - warmup)
        return latents

    def _guided_eps(self, batch: "_Batch", latents: torch.Tensor, t: int) -> torch.Tensor:
        """The classifier-free-guided noise prediction (ControlNet residuals when there is a ControlNet)."""
        s = batch.settings
        x_in = torch.cat([latents, latents]).to(self.dtype)
        # a tensor timestep (diffusers makes one of an int anyway): compiled graphs do not guard on its value
        t = torch.tensor(t, device=self.device)
        down = mid = None
        if self.controlnet is not None:
            scales = [s.cond_scale if x is None else x for x in self.control_scales or [None]]
            scale = scales[0] if len(scales) == 1 else scales
            down, mid = self.controlnet(x_in, t, encoder_hidden_states=batch.embeds, controlnet_cond=batch.cond,
                                        conditioning_scale=scale, guess_mode=False, return_dict=False)
        eps = self.unet(x_in, t, encoder_hidden_states=batch.embeds, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, added_cond_kwargs=batch.added_cond,
                        return_dict=False)[0].float()
        batch.ctrl.count_run_call(batch.layers)
        eps_u, eps_c = eps.chunk(2)
        return eps_u + s.guidance_scale * (eps_c - eps_u)

    def _decode(self, batch: "_Batch", latents: torch.Tensor) -> np.ndarray:
        """Final latents -> [N, H, W, 3] uint8 RGB."""
        with batch.stages("decode"):
            image = self.vae_decode(latents, batch.settings.vae_chunk).clamp(-1, 1)
            return ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class _Batch:
    """What one call computes in `_prepare` and the later stages use."""
    settings: FrescoSettings
    schedule: Dict
    n: int
    size: Tuple[int, int]
    stages: _Stages
    ctrl: FrescoController
    gen: torch.Generator
    smoothing: bool
    optimize_on: bool
    inputs: Optional[BatchInputs] = None
    cond: Union[None, torch.Tensor, List[torch.Tensor]] = None
    # the UNet's added_cond_kwargs (the IP-Adapter's image embeddings), None without an IP-Adapter
    added_cond: Optional[Dict] = None
    embeds: Optional[torch.Tensor] = None
    timesteps: List[int] = field(default_factory=list)
    noise: Optional[torch.Tensor] = None
    latent_x0: Optional[torch.Tensor] = None
    layers: List[str] = field(default_factory=list)

    @property
    def spatial_on(self) -> bool:
        return self.settings.spatial_attention and self.settings.spatial_attention_steps > 0
