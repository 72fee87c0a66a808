"""FrescoPipeline: FRESCO's denoising of one batch of N keyframes on current diffusers (SEMANTICS.md "Flow and
occlusion" to "Schedule"), with every op from fresco_kernels behind one `backend="fused"|"reference"` switch.

diffusers is extended only through its public hooks: attention processors on the up_blocks.2/3 self-attention
layers (fresco.attention), forward pre-hooks on unet.up_blocks[i] (fresco.optimization), and this module's own
denoising loop around `unet(...)` / `controlnet(...)`; UNet2DConditionModel.forward is never copied or replaced.
Processors, hooks and FreeU are restored after every call, so the components stay usable as a normal pipeline."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from fresco_kernels import BACKENDS

from .attention import FrescoController, install_processors, restore_processors
from .control import CONTROL_TYPES, control_maps
from ..models.flow import FlowEstimator, batch_flows, get_flow_estimator
from .inputs import BatchInputs
from ..models.sd import TINY, Components, load_components, resolve_device, resolve_dtype, tiny_components
from .optimization import DecoderHooks, smooth_background

# the published schedule, as fractions of a 20-step run: optimisation while the step index < 15, background
# smoothing of x0 at steps 16 and 17, SDEdit strength 0.75 (5 warm-up steps skipped)
PUBLISHED_STEPS = 20
PUBLISHED_END_OPT_STEP = 15
PUBLISHED_BG_STEPS = (16, 17)
# the prompt additions of the published run script (not applied automatically; pass them if wanted)
PUBLISHED_ADDED_PROMPT = ", best quality, extremely detailed, "
PUBLISHED_NEGATIVE_PROMPT = ("longbody, lowres, bad anatomy, bad hands, missing finger, extra digit, fewer digits, "
                             "cropped, worst quality, low quality")
FREEU = dict(s1=1.0, s2=1.0, b1=1.2, b2=1.5)


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


def scaled_schedule(num_inference_steps: int, num_warmup_steps: int, end_opt_step: Optional[int],
                    bg_steps: Optional[Sequence[int]]) -> Dict:
    """The published 20-step boundaries scaled to `num_inference_steps` (explicit values win)."""
    scale = num_inference_steps / PUBLISHED_STEPS
    if end_opt_step is None:
        end_opt_step = int(round(PUBLISHED_END_OPT_STEP * scale))
    if bg_steps is None:
        bg_steps = sorted({min(num_inference_steps - 1, int(round(s * scale))) for s in PUBLISHED_BG_STEPS})
    return dict(num_inference_steps=num_inference_steps, num_warmup_steps=num_warmup_steps,
                end_opt_step=end_opt_step, bg_smoothing_steps=list(bg_steps))


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
                 dtype: torch.dtype = torch.float32, control_type: Optional[str] = "canny",
                 flow: Union[str, FlowEstimator, None] = "dis", annotator_path: Optional[str] = None):
        if control_type is not None and control_type not in CONTROL_TYPES:
            raise ValueError(f"control_type: one of {CONTROL_TYPES} or None, got {control_type!r}")
        self.unet = components.unet
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.controlnet = components.controlnet
        self.control_type = control_type if self.controlnet is not None else None
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

    @classmethod
    def from_pretrained(cls, model: str = TINY, controlnet=None, controlnet_type: Optional[str] = "canny",
                        device: Union[str, torch.device, None] = "auto", dtype=None, flow="dis",
                        local_files_only: bool = False, vae: Optional[str] = None,
                        annotator_path: Optional[str] = None) -> "FrescoPipeline":
        """model: an SD1.5-family diffusers id or folder, or "tiny" (random weights built in code, offline).
        controlnet: a ControlNetModel or id/path; default: the v1.0 ControlNet of controlnet_type (None: no
        ControlNet). device/dtype: "auto" = CUDA fp16 when available, else CPU fp32."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        parts = load_components(model, controlnet=controlnet, controlnet_type=controlnet_type, device=dev, dtype=dt,
                                local_files_only=local_files_only, vae=vae)
        return cls(parts, dev, dt, control_type=controlnet_type if parts.controlnet is not None else None, flow=flow,
                   annotator_path=annotator_path)

    @classmethod
    def from_components(cls, unet, vae, scheduler=None, text_encoder=None, tokenizer=None, controlnet=None,
                        control_type: Optional[str] = "canny", flow="dis", device=None, dtype=None
                        ) -> "FrescoPipeline":
        """From loaded diffusers modules (e.g. those of a StableDiffusionControlNetPipeline). The scheduler is
        replaced by SD1.5's DDPM scheduler when not given. text_encoder/tokenizer may be None when prompts are
        passed as embeddings."""
        from ..models.sd import make_scheduler
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
                 prompt_embeds: Optional[torch.Tensor] = None, negative_prompt_embeds: Optional[torch.Tensor] = None,
                 num_inference_steps: int = 20, strength: Optional[float] = None,
                 num_warmup_steps: Optional[int] = None, guidance_scale: float = 7.5, seed: int = 0,
                 control_images=None, cond_scale: float = 1.0,
                 cross_frame_attention: bool = True, spatial_attention: bool = True,
                 temporal_attention: bool = True, feature_optimization: bool = True,
                 temporal_loss: bool = True, spatial_loss: bool = True,
                 background=None, background_smoothing: bool = True,
                 end_opt_step: Optional[int] = None, opt_iters: int = 20, opt_lr: float = 0.2,
                 spatial_weight: float = 100.0, loss_reduction: str = "l1", adain_eps: float = 1.0,
                 opt_layers: Sequence[int] = (0, 1, 2, 3), spatial_attention_steps: int = 1,
                 temporal_attention_until: int = 350, bg_smoothing_steps: Optional[Sequence[int]] = None,
                 repeat_noise: bool = True, use_freeu: bool = False, backend: str = "fused",
                 anchor_latents: Optional[Sequence[torch.Tensor]] = None, return_anchor_record: bool = False,
                 vae_chunk: int = 1, progress: bool = False) -> FrescoOutput:
        """Translate one batch of keyframes.

        frames: [N, H, W, 3] uint8 RGB 0..255, or float [N, 3, H, W] / [N, H, W, 3] RGB in [0, 1] (numpy, torch or
        a list of frames); N >= 2, H and W multiples of 64 (SD1.5).
        prompt / negative_prompt: a string or one per frame (or prompt_embeds / negative_prompt_embeds [N|1, 77, D]).
        Schedule: `num_inference_steps` DDPM steps; SDEdit skips the first `num_warmup_steps` (or
        round((1 - strength) * steps); default strength 0.75); end_opt_step (default 0.75 * steps) and
        bg_smoothing_steps (default the published 16, 17 scaled) are absolute step indices.
        Constraints, each switchable: cross_frame_attention, spatial_attention (first `spatial_attention_steps` run
        steps), temporal_attention (while t >= temporal_attention_until), feature_optimization (temporal_loss,
        spatial_loss with spatial_weight/loss_reduction, opt_iters Adam steps at lr opt_lr, AdaIN with adain_eps, on
        decoder blocks opt_layers at steps < end_opt_step), background smoothing (needs `background` [N, H, W] in
        [0, 1], 1 = background; features at the optimisation steps, x0 at bg_smoothing_steps).
        control_images: [N, H, W(, 3)] uint8 condition images (default: computed with the ControlNet's type).
        backend: "fused" (fresco_kernels ops) or "reference" (their plain-PyTorch references).
        anchor_latents: per run step a [2, 4, h, w] tensor written into frames 0 and 1 at the start of that step
        (long videos); return_anchor_record: also return frames 0 and N-1's latents at each step start.
        vae_chunk: frames per VAE encode/decode call. progress: a tqdm bar over the denoising steps (cleared when
        the batch is done)."""
        frames, imgs = _frames_input(frames)
        n, H, W = frames.shape[:3]
        if n < 2:
            raise ValueError(f"frames: FRESCO needs N >= 2 frames per batch, got {n}")
        m = self.size_multiple
        if H % m or W % m:
            raise ValueError(f"frames: H and W must be multiples of {m} (the VAE's 8 times the UNet's decoder "
                             f"downsampling), got {H}x{W}; resize first (fresco.video.processing_size)")
        if backend not in BACKENDS:
            raise ValueError(f"backend: one of {BACKENDS}, got {backend!r}")
        for name, v in (("num_inference_steps", num_inference_steps), ("opt_iters", opt_iters),
                        ("seed", seed), ("vae_chunk", vae_chunk), ("spatial_attention_steps",
                                                                    spatial_attention_steps)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: must be >= 1, got {num_inference_steps}")
        if vae_chunk < 1:
            raise ValueError(f"vae_chunk: must be >= 1, got {vae_chunk}")
        if strength is not None and num_warmup_steps is not None:
            raise ValueError("strength and num_warmup_steps: pass one of them")
        if num_warmup_steps is None:
            strength = 0.75 if strength is None else strength
            if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
                raise ValueError(f"strength: must be in (0, 1], got {strength!r}")
            num_warmup_steps = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        if not (isinstance(num_warmup_steps, (int, np.integer)) and 0 <= num_warmup_steps < num_inference_steps):
            raise ValueError(f"num_warmup_steps: must be in [0, num_inference_steps={num_inference_steps}), got "
                             f"{num_warmup_steps!r}")
        sched_info = scaled_schedule(num_inference_steps, int(num_warmup_steps), end_opt_step, bg_smoothing_steps)
        end_opt_step = sched_info["end_opt_step"]
        bg_steps = set(sched_info["bg_smoothing_steps"])
        n_run = num_inference_steps - num_warmup_steps
        latent_shape = (2, self.unet.config.in_channels, H // self.vae_factor, W // self.vae_factor)
        if anchor_latents is not None:
            if len(anchor_latents) != n_run:
                raise ValueError(f"anchor_latents: one {list(latent_shape)} tensor per run step ({n_run}), got "
                                 f"{len(anchor_latents)}")
            bad = [j for j, a in enumerate(anchor_latents)
                   if not isinstance(a, torch.Tensor) or tuple(a.shape) != latent_shape]
            if bad:
                raise ValueError(f"anchor_latents: every entry must be a {list(latent_shape)} tensor (frames 0 and 1 "
                                 f"of this batch); entries {bad[:5]} are not")
        if loss_reduction not in ("l1", "l2"):
            raise ValueError(f"loss_reduction: 'l1' or 'l2', got {loss_reduction!r}")

        dev = self.device
        stages = _Stages(dev)
        use_cn = self.controlnet is not None
        cond_img = None
        if control_images is not None and not use_cn:
            raise ValueError("control_images: this pipeline has no ControlNet")
        if control_images is not None:
            ci = _frames_array(control_images)
            if ci.ndim == 3:
                ci = np.repeat(ci[..., None], 3, axis=-1)
            if ci.shape != frames.shape or ci.dtype != np.uint8:
                raise ValueError(f"control_images: expected uint8 {list(frames.shape)} (or without the channel "
                                 f"axis) matching frames, got {ci.dtype} {list(ci.shape)}")
            cond_img = ci
        bg = None
        if background is not None:
            bg = torch.as_tensor(np.asarray(background) if not isinstance(background, torch.Tensor) else background)
            if bg.shape != (n, H, W) or not bg.is_floating_point():
                raise ValueError(f"background: a float [N, H, W] = {[n, H, W]} map in [0, 1], got "
                                 f"{bg.dtype} {list(bg.shape)}")
            if bool((bg < 0).any() or (bg > 1).any()):
                raise ValueError("background: values must lie in [0, 1] (1 = background)")
            bg = bg.to(dev, torch.float32).unsqueeze(1)
        smoothing = bg is not None and background_smoothing

        optimize_on = feature_optimization and (temporal_loss or (spatial_loss and spatial_weight > 0) or smoothing) \
            and any(num_warmup_steps <= i < end_opt_step for i in range(num_inference_steps))
        need_flow = cross_frame_attention or temporal_attention or (optimize_on and temporal_loss) or smoothing
        gen = torch.Generator(device=dev).manual_seed(int(seed))

        imgs = imgs.to(dev)
        ctrl = FrescoController(backend=backend)
        inputs = None
        with stages("flow"):
            if need_flow:
                fwd, bwd, focc, bocc = batch_flows(imgs, self.flow, backend=backend)
                inputs = BatchInputs(fwd, bwd, focc, bocc, background=bg, backend=backend)
        if use_cn:
            with stages("control"):
                if cond_img is None:
                    cond_img = control_maps(frames, self.control_type, self.annotator_path)
                cond = torch.from_numpy(cond_img).to(dev).permute(0, 3, 1, 2).float() / 255.0
                cond = torch.cat([cond, cond]).to(self.dtype)
        imgs_pm1 = imgs / 127.5 - 1.0
        with stages("prepare"):
            if inputs is not None and (cross_frame_attention or temporal_attention):
                for i in (2, 3):
                    scale = self.vae_factor * self.block_down[i]
                    inputs.add_attention_scale(scale, imgs_pm1, keep=cross_frame_attention,
                                               trajectories=temporal_attention)
            embeds = self._embeds(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n)
        ctrl.inputs = inputs
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        timesteps = [int(t) for t in self.scheduler.timesteps]
        h, w = H // self.vae_factor, W // self.vae_factor
        noise = torch.randn((n, self.unet.config.in_channels, h, w), generator=gen, device=dev)
        with stages("encode"):
            latent_x0 = self.vae_encode(imgs_pm1, gen, vae_chunk)

        previous, names = install_processors(self.unet, ctrl)
        hooks = None
        freeu_set = False
        try:
            if optimize_on:
                hooks = DecoderHooks(self.unet, ctrl, opt_layers, iters=opt_iters, lr=opt_lr,
                                     temporal=temporal_loss, spatial_weight=spatial_weight if spatial_loss else 0.0,
                                     reduction=loss_reduction, adain_eps=adain_eps, smooth=smoothing)
            if use_freeu:
                # on for the reference pass too, as in the published code (FreeU is patched into its UNet)
                self.unet.enable_freeu(**FREEU)
                freeu_set = True
            spatial_on = spatial_attention and spatial_attention_steps > 0
            need_ref = spatial_on or (optimize_on and spatial_loss and spatial_weight > 0)
            if need_ref:
                with stages("reference"):
                    # one UNet call without ControlNet on the frames noised to the last timestep, plain attention
                    ctrl.mode = "record"
                    ctrl.record_attention = spatial_on
                    ctrl.record_features = optimize_on and spatial_loss and spatial_weight > 0
                    t_ref = timesteps[-1]
                    x_ref = self.scheduler.add_noise(latent_x0, noise, torch.tensor([t_ref], device=dev))
                    self.unet(torch.cat([x_ref, x_ref]).to(self.dtype), t_ref, encoder_hidden_states=embeds,
                              return_dict=False)
                    ctrl.mode = "off"
            start_noise = noise[:1].expand_as(noise) if repeat_noise else noise
            latents = self.scheduler.add_noise(latent_x0, start_noise,
                                               torch.tensor([timesteps[num_warmup_steps]], device=dev))
            record = [] if return_anchor_record else None

            def smooth_x0(x0: torch.Tensor) -> torch.Tensor:
                image = self.vae_decode(x0, vae_chunk)
                image = smooth_background(image, inputs, 1, backend=backend)
                ctrl.count("smooth_x0", "image")
                return self.vae_encode(image, gen, vae_chunk)

            with stages("denoise"):
                for j, t in enumerate(tqdm(timesteps[num_warmup_steps:], desc="steps", unit="step", leave=False,
                                           disable=not progress)):
                    i = num_warmup_steps + j
                    ctrl.set_step(i, t, cross_frame=cross_frame_attention, spatial=spatial_on and
                                  j < spatial_attention_steps, temporal=temporal_attention and
                                  t >= temporal_attention_until, optimize=optimize_on and i < end_opt_step)
                    if anchor_latents is not None:
                        latents[0:2] = anchor_latents[j].to(dev, latents.dtype)
                    if record is not None:
                        record.append(latents[[0, n - 1]].clone())
                    x_in = torch.cat([latents, latents]).to(self.dtype)
                    down = mid = None
                    if use_cn:
                        down, mid = self.controlnet(x_in, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                                                    conditioning_scale=cond_scale, guess_mode=False,
                                                    return_dict=False)
                    eps = self.unet(x_in, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                                    mid_block_additional_residual=mid, return_dict=False)[0].float()
                    eps_u, eps_c = eps.chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                    latents = self._step(eps, t, latents, gen, smooth_x0 if smoothing and i in bg_steps else None)
        finally:
            ctrl.mode = "off"
            if hooks is not None:
                hooks.remove()
            restore_processors(self.unet, previous)
            if freeu_set:
                self.unet.disable_freeu()
            events = dict(ctrl.events)
            ctrl.clear()
        with stages("decode"):
            image = self.vae_decode(latents, vae_chunk).clamp(-1, 1)
            out = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return FrescoOutput(images=out, latents=latents, timings=stages.timings, peak_memory=stages.peaks,
                            peak_memory_bytes=stages.overall if stages.cuda else None, anchor_record=record,
                            events=events, steps=sched_info)
