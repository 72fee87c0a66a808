"""Peak GPU memory of one keyframe batch, predicted on a machine without a GPU (issue 28).

The real code runs on `meta` tensors (shapes and dtypes, no data, nothing allocated) under `StorageTracker`, a
TorchDispatchMode that sees every op's outputs (autograd's backward included) and keeps the byte count of the
storages still alive through weak references, rounded up to the CUDA caching allocator's 512-byte blocks. What it
reports is what `torch.cuda.max_memory_allocated()` counts above the memory allocated before the traced call, as
measured in shared/GPU-BASELINE.md. Two things of CUDA are emulated, because the CPU build would take another path:
scaled-dot-product attention runs as CUDA's flash kernel (fp16/bf16, no mask) or memory-efficient kernel (otherwise)
instead of the CPU's materialised softmax, and Adam takes its CUDA default, the `foreach` implementation. The fused
ops' scratch buffers (their CUDA implementations allocate them inside the op) are added at the op from `WORKSPACES`.
Not seen: cuDNN/cuBLAS workspaces (allocated once, on warm-up, in the measured setup: not in its figures), the CUDA
context and the allocator's fragmentation; `usable` keeps headroom for those when a plan is checked against a card.

`plan_batch` traces SD1.5 (UNet, ControlNet, VAE, on meta) through the pipeline's own stages: the reference pass,
a denoising step with FRESCO's attention processors (`unet+controlnet`), a denoising step with the decoder-feature
optimisation in its hooks (`optimisation`: Adam state, the fused ops' outputs, autograd's saved tensors, on top of
the UNet activations alive when a decoder block starts); the batch's own tensors (latents, embeddings, control
images, flows, the reference pass's records) stay alive across these stages as they do in FrescoPipeline.
`trace_vae` adds one VAE encode and one decode chunk (FrescoPipeline.vae_encode / vae_decode) per chunk size, with
the batch's frames or latents alive. Storages made before a trace (weights, inputs) are not counted. `baseline_optimize` is the measured setup of GPU-BASELINE.md, for validating the tracer."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fresco_kernels import (normalize_features, optimize_features, resample_for_loss,
                            warp_consistency_loss_reference)
from fresco_kernels.gram_loss import gram_matrix

from .settings import FrescoSettings

MiB = 2 ** 20
GiB = 2 ** 30
BLOCK = 512  # the CUDA caching allocator rounds every allocation up to 512 bytes
# what a check against a card's memory keeps free for what the trace does not see: the CUDA context (outside
# torch's allocator, ~0.5 GiB on recent drivers), cuDNN/cuBLAS workspaces and the allocator's fragmentation
HEADROOM_BYTES = 1 * GiB
HEADROOM_FRACTION = 0.08
# the share of tokens of frames 1..N-1 that join the shared K/V (the occluded ones; data-dependent on a GPU)
KEEP_FRACTION = 0.1


def _gram_workspace(feat, ref, reduction, weight, precision, grad: bool = True) -> int:
    """Scratch of fresco::gram_loss(_fwd_bwd) on CUDA (gram_loss/triton.py `_run`): the normalised rows x̂ (bf16 for
    precision "bf16", else fp32), 1/‖x‖, the per-tile partial sums, and with the gradient the fp32 D·x̂ rows; the
    L2 closed form holds three C x C products instead of the tiles."""
    B, n, C = feat.shape
    dot = 2 if precision == "bf16" else 4
    tiles = B * C * C * 4 * 3 if reduction == "l2" and C < n else B * (-(-n // 64)) ** 2 * 4
    return B * n * C * dot + B * n * 4 + tiles + (B * n * C * 4 if grad else 0)


def _warp_workspace(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, cfg_chunks, grad: bool = True) -> int:
    """Scratch of fresco::warp_consistency_loss(_fwd_bwd) on CUDA (warp_loss/triton.py): the per-block partial sums,
    and the fp32 gradient buffer when it is not itself the returned gradient (feat not contiguous fp32)."""
    B, C, H, W = feat.shape
    partial = 2 * B * (-(-H * W // 16)) * 4
    own = grad and not (feat.dtype == torch.float32 and feat.is_contiguous())
    return partial + (B * C * H * W * 4 if own else 0)


# scratch memory inside one fused op (allocated and freed by its CUDA implementation; not an output), by op name
WORKSPACES = {
    "fresco::gram_loss_fwd_bwd": _gram_workspace,
    "fresco::gram_loss": lambda *a: _gram_workspace(*a, grad=False),
    "fresco::warp_consistency_loss_fwd_bwd": _warp_workspace,
    "fresco::warp_consistency_loss": lambda *a: _warp_workspace(*a, grad=False),
}


class StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created by ops on `device_type` while active; `peak` over the whole trace and
    `peaks[stage]` per named stage (`with tracker.stage(name)`). A storage is counted once however many views
    share it, and stops counting when the last tensor (or autograd's saved copy) holding it is gone.

    keep_fraction: the density of True assumed for `nonzero` on meta tensors (the shared K/V's token masks)."""

    def __init__(self, device_type: str = "meta", keep_fraction: float = KEEP_FRACTION):
        super().__init__()
        self.device_type = device_type
        self.keep_fraction = keep_fraction
        self.live: Dict[int, Tuple[weakref.ref, int]] = {}
        self.current = 0
        self.peak = 0
        self.peaks: Dict[str, int] = {}
        self._stages: List[str] = []

    def _sweep(self) -> None:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            self.current -= self.live.pop(k)[1]

    def _add(self, t: torch.Tensor, inputs: set) -> None:
        if t.device.type != self.device_type or t.is_sparse:
            return
        st = t.untyped_storage()
        ref = StorageWeakRef(st)
        if ref.cdata in self.live or ref.cdata in inputs:
            # already counted, or a view of / in-place result on a storage made before the trace (weights, inputs)
            return
        nbytes = -(-st.nbytes() // BLOCK) * BLOCK
        self.live[ref.cdata] = (ref, nbytes)
        self.current += nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.nonzero.default and args[0].device.type == "meta":
            out = self._nonzero(args[0])
        elif func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool and
                                                          i.device.type == "meta" for i in args[1]):
            # boolean-mask indexing: the meta kernel would call nonzero itself
            indices: List = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:
                    nz = self._nonzero(i)
                    indices += [nz[:, d] for d in range(i.dim())]
                else:
                    indices.append(i)
            out = func(args[0], indices)
        else:
            out = func(*args, **kwargs)
        self._sweep()
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == self.device_type and not t.is_sparse}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, inputs)
        workspace = WORKSPACES.get(func.name())
        top = self.current + (workspace(*args, **kwargs) if workspace else 0)
        if top > self.peak:
            self.peak = top
        for s in self._stages:
            self.peaks[s] = max(self.peaks.get(s, 0), top)
        return out

    def _nonzero(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty((max(1, int(x.numel() * self.keep_fraction)), x.dim()), dtype=torch.long, device=x.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Record the peak of live bytes while the block runs (including what was alive when it started)."""
        self._sweep()
        self._stages.append(name)
        self.peaks[name] = max(self.peaks.get(name, 0), self.current)
        try:
            yield
        finally:
            self._stages.remove(name)


class CudaAttention(TorchFunctionMode):
    """F.scaled_dot_product_attention as CUDA runs it: the flash kernel for fp16/bf16 without a mask (head dim <=
    256), else the memory-efficient kernel, so that no [heads, L, S] matrix is traced."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _cuda_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


def _cuda_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa:
        raise NotImplementedError("fresco.memory: grouped-query attention is not traced (SD1.5 has none)")
    if attn_mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
    if attn_mask is not None:
        attn_mask = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, attn_mask, False, dropout_p, is_causal,
                                                                  scale=scale)[0]


@contextmanager
def cuda_adam() -> Iterator[None]:
    """torch.optim.Adam with CUDA's default implementation (foreach) for meta parameters."""
    original = torch.optim.Adam

    class Adam(original):
        def __init__(self, params, *args, **kwargs):
            kwargs.setdefault("foreach", True)
            super().__init__(params, *args, **kwargs)

    torch.optim.Adam = Adam
    try:
        yield
    finally:
        torch.optim.Adam = original


@contextmanager
def tracing(tracker: StorageTracker) -> Iterator[StorageTracker]:
    """Run the enclosed code as on CUDA (attention kernels, Adam), counting its meta storages."""
    with cuda_adam(), CudaAttention(), tracker:
        yield tracker


def _meta(*shape: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(-(-t.numel() * t.element_size() // BLOCK) * BLOCK for t in tensors if t is not None)


# ---------------------------------------------------------------------------------------------------------------
# the measured setup of shared/GPU-BASELINE.md, for validation
# ---------------------------------------------------------------------------------------------------------------
def baseline_optimize(sample: torch.Tensor, ref: torch.Tensor, fwd_img: torch.Tensor, bwd_img: torch.Tensor,
                      focc_img: torch.Tensor, bocc_img: torch.Tensor, *, spatial: bool = True, temporal: bool = True,
                      iters: int = 20) -> torch.Tensor:
    """`optimize[...]` of GPU-BASELINE.md: the fp32 target Gram of `ref`; flows resized and masks max-pooled to the
    feature size; `cs = Parameter(sample.float())`, Adam lr 0.2; per iteration the temporal loss and its backward,
    then the spatial loss and its backward, then the step. The temporal loss is `warp_consistency_loss_reference`
    (its intermediates die with its call); the spatial loss is written inline as in the published optimize_feature, so
    its [B, hw, hw] Gram is still referenced during the backward. Returns cs."""
    h, w = sample.shape[-2:]
    target = gram_matrix(normalize_features(ref)) if spatial else None
    if temporal:
        fwd, focc = resample_for_loss(fwd_img, focc_img, (h, w))
        bwd, bocc = resample_for_loss(bwd_img, bocc_img, (h, w))
    cs = torch.nn.Parameter(sample.float())
    opt = torch.optim.Adam([cs], lr=0.2)
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad()
            if temporal:
                warp_consistency_loss_reference(cs, fwd, bwd, focc, bocc).backward()
            if spatial:
                # inline, as published: the Gram stays referenced until the iteration's end, through the backward
                gram = gram_matrix(normalize_features(cs))
                loss_s = F.l1_loss(gram, target) * 100.0
                loss_s.backward()
            opt.step()
    return cs.detach()


def pipeline_optimize(sample: torch.Tensor, ref: torch.Tensor, fwd_img: torch.Tensor, bwd_img: torch.Tensor,
                      focc_img: torch.Tensor, bocc_img: torch.Tensor, *, spatial: bool = True, temporal: bool = True,
                      iters: int = 20, backend: str = "reference") -> torch.Tensor:
    """The same inputs through this project's code path (fresco_kernels.optimize_features, as the decoder hooks call
    it): normalised reference features and the resampled flows, then the optimisation and AdaIN."""
    h, w = sample.shape[-2:]
    flows: Tuple = (None, None, None, None)
    if temporal:
        fwd, focc = resample_for_loss(fwd_img, focc_img, (h, w))
        bwd, bocc = resample_for_loss(bwd_img, bocc_img, (h, w))
        flows = (fwd, bwd, focc, bocc)
    ref_rows = normalize_features(ref) if spatial else None
    published = FrescoSettings()
    return optimize_features(sample, *flows, ref=ref_rows, iters=iters, lr=published.opt_lr, temporal=temporal,
                             spatial_weight=published.spatial_weight if spatial else 0.0,
                             reduction=published.loss_reduction, adain_eps=published.adain_eps, backend=backend)


def trace_optimize(n: int, channels: int, size: Tuple[int, int], image_size: Tuple[int, int], *,
                   spatial: bool = True, temporal: bool = True, iters: int = 20, which: str = "reference") -> int:
    """Peak bytes above the inputs of one layer's optimisation, in the setup of GPU-BASELINE.md (fp16 inputs
    [2N, C, h, w] sample and ref, image-size flows and masks). which: "baseline" (the measured program,
    `baseline_optimize`), "reference" or "fused" (`pipeline_optimize` on that backend)."""
    h, w = size
    H, W = image_size
    sample, ref = _meta(2 * n, channels, h, w), _meta(2 * n, channels, h, w)
    flows = (_meta(n, 2, H, W, dtype=torch.float32), _meta(n, 2, H, W, dtype=torch.float32),
             _meta(n, H, W, dtype=torch.float32), _meta(n, H, W, dtype=torch.float32))
    tracker = StorageTracker()
    with tracing(tracker):
        if which == "baseline":
            baseline_optimize(sample, ref, *flows, spatial=spatial, temporal=temporal, iters=iters)
        else:
            pipeline_optimize(sample, ref, *flows, spatial=spatial, temporal=temporal, iters=iters, backend=which)
    return tracker.peak


def trace_unet_forward(n: int, latent: Tuple[int, int], unet=None) -> int:
    """Peak bytes above weights and inputs of the SD1.5 UNet forward (fp16, eval, no_grad, batch 2N, timestep 500,
    text embeddings [2N, 77, 768]): GPU-BASELINE.md's `unet_sd15_fwd`."""
    unet = unet if unet is not None else sd15_models(controlnet=False, vae=False).unet
    x = _meta(2 * n, 4, *latent)
    emb = _meta(2 * n, 77, unet.config.cross_attention_dim)
    tracker = StorageTracker()
    with torch.no_grad(), tracing(tracker):
        unet(x, 500, encoder_hidden_states=emb, return_dict=False)
    return tracker.peak


# ---------------------------------------------------------------------------------------------------------------
# one keyframe batch of the pipeline
# ---------------------------------------------------------------------------------------------------------------
_MODELS: Dict[Tuple, SimpleNamespace] = {}


@contextmanager
def _on_meta() -> Iterator[None]:
    """Modules built inside have their parameters and buffers on meta: factories default to meta, and (should a
    factory have been wrapped so that the default device is lost) each parameter/buffer is moved to meta as it is
    registered, so at most one layer's tensor is ever allocated."""
    module = torch.nn.Module
    register_parameter, register_buffer = module.register_parameter, module.register_buffer

    def parameter(self, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, tensor if tensor is None else tensor.to("meta"), persistent)

    module.register_parameter, module.register_buffer = parameter, buffer
    try:
        with torch.device("meta"):
            yield
    finally:
        module.register_parameter, module.register_buffer = register_parameter, register_buffer


def sd15_models(tiny: bool = False, controlnet: bool = True, vae: bool = True,
                dtype: torch.dtype = torch.float16) -> SimpleNamespace:
    """SD1.5's UNet, ControlNet and VAE (tiny=True: the tiny stand-in's widths) on the meta device, cached; and
    `weights`: the bytes of their parameters and buffers plus the CLIP-L text encoder's (`text_weights`), in
    `dtype`."""
    key = (tiny, controlnet, vae, dtype)
    if key in _MODELS:
        return _MODELS[key]
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from .models.sd import text_config, unet_config, vae_config
    verbosity = diffusers_logging.get_verbosity()
    # `.to(float16)` of a model built from a config warns about modules to keep in float32; SD1.5 lists none
    diffusers_logging.set_verbosity_error()
    try:
        with _on_meta():
            unet = UNet2DConditionModel(**unet_config(tiny)).to(dtype).eval().requires_grad_(False)
            cn = ae = None
            if controlnet:
                cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32) if tiny
                                               else (16, 32, 96, 256)).to(dtype).eval().requires_grad_(False)
            if vae:
                ae = AutoencoderKL(**vae_config(tiny)).to(dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    cfg = text_config(tiny)
    # CLIP text model: token and position embeddings, per layer 4 projections + 2 MLP matrices + 2 layer norms
    d, ff = cfg.hidden_size, cfg.intermediate_size
    text_params = (cfg.vocab_size + cfg.max_position_embeddings) * d + cfg.num_hidden_layers * (
        4 * (d * d + d) + 2 * d * ff + ff + d + 4 * d) + 2 * d
    weights = sum(_bytes(*m.parameters(), *m.buffers()) for m in (unet, cn, ae) if m is not None)
    text_weights = text_params * torch.finfo(dtype).bits // 8
    _MODELS[key] = SimpleNamespace(unet=unet, controlnet=cn, vae=ae, weights=weights + text_weights,
                                   text_weights=text_weights, tiny=tiny, dtype=dtype)
    return _MODELS[key]


@dataclass
class BatchPlan:
    """Predicted peak CUDA memory of one keyframe batch, in bytes: `stages` is the peak of live tensors (the batch's
    own and the stage's) per stage, `weights` what the models hold; `total` = weights + the largest stage."""
    size: Tuple[int, int]
    batch_size: int
    backend: str
    dtype: str
    vae_chunk: int
    weights: int
    stages: Dict[str, int] = field(default_factory=dict)
    # VAE chunk -> {"encode": bytes, "decode": bytes}
    vae: Dict[int, Dict[str, int]] = field(default_factory=dict)

    def all_stages(self, vae_chunk: Optional[int] = None) -> Dict[str, int]:
        """The UNet stages and the VAE stages at `vae_chunk` (default: the plan's)."""
        k = self.vae_chunk if vae_chunk is None else vae_chunk
        return {f"vae encode (chunk {k})": self.vae[k]["encode"], **self.stages,
                f"vae decode (chunk {k})": self.vae[k]["decode"]}

    @property
    def peak_stage(self) -> str:
        st = self.all_stages()
        return max(st, key=st.get)

    def total_at(self, vae_chunk: int) -> int:
        return self.weights + max(self.all_stages(vae_chunk).values())

    @property
    def total(self) -> int:
        return self.total_at(self.vae_chunk)

    def fits(self, device_bytes: int, vae_chunk: Optional[int] = None) -> bool:
        """Whether the total (at `vae_chunk`, default the plan's) fits in `usable(device_bytes)`."""
        return self.total_at(self.vae_chunk if vae_chunk is None else vae_chunk) <= usable(device_bytes)

    def largest_vae_chunk(self, device_bytes: int) -> Optional[int]:
        """The largest VAE chunk of the plan that fits (None: not even the UNet stages fit)."""
        ok = [k for k in self.vae if self.fits(device_bytes, k)]
        return max(ok) if ok else None

    def table(self) -> str:
        W, H = self.size
        lines = [f"{W}x{H}, batch size {self.batch_size}, {self.dtype}, backend {self.backend}, "
                 f"vae_chunk {self.vae_chunk}", "", "| stage | peak MiB |", "|---|---|",
                 f"| weights | {self.weights / MiB:.0f} |"]
        lines += [f"| {k} | {v / MiB:.0f} |" for k, v in self.all_stages().items()]
        lines.append(f"| total (weights + {self.peak_stage}) | {self.total / MiB:.0f} |")
        return "\n".join(lines)


def usable(device_bytes: int) -> int:
    """What of a card's memory a plan may use (the rest is headroom for what the trace cannot see)."""
    return max(0, int(device_bytes * (1 - HEADROOM_FRACTION)) - HEADROOM_BYTES)


def plan_batch(size: Tuple[int, int], batch_size: int, *, settings=None, backend: str = "fused",
               dtype: torch.dtype = torch.float16, controlnet: bool = True, vae_chunk: Optional[int] = None,
               tiny: bool = False) -> BatchPlan:
    """Trace one keyframe batch of `batch_size` frames at `size` (W, H) through FrescoPipeline's stages on meta
    tensors (see the module docstring). settings: the FrescoSettings of the render (default FrescoSettings()); its
    backend and vae_chunk are replaced by `backend` and `vae_chunk` (default: settings.vae_chunk)."""
    from .pipeline.attention import FrescoController, install_processors, restore_processors
    from .pipeline.inputs import BatchInputs
    from .pipeline.optimization import DecoderHooks

    s = (settings or FrescoSettings()).replace(backend=backend)
    W, H = size
    n = batch_size
    models = sd15_models(tiny=tiny, controlnet=controlnet, dtype=dtype)
    unet, cn = models.unet, models.controlnet
    factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    if W % (8 * factor) or H % (8 * factor) or n < 2:
        raise ValueError(f"size: W and H multiples of {8 * factor} and batch size >= 2, got {W}x{H}, {n}")
    h, w = H // factor, W // factor
    ctx_dim = unet.config.cross_attention_dim
    tracker = StorageTracker()
    plan = BatchPlan(size=(W, H), batch_size=n, backend=backend, dtype=str(dtype).replace("torch.", ""),
                     vae_chunk=min(n, s.vae_chunk if vae_chunk is None else vae_chunk), weights=models.weights)
    with torch.no_grad(), tracing(tracker):
        latent_x0 = torch.empty(n, 4, h, w, device="meta")
        noise = torch.empty(n, 4, h, w, device="meta")
        embeds = _meta(2 * n, 77, ctx_dim, dtype=dtype)
        cond = _meta(2 * n, 3, H, W, dtype=dtype) if cn is not None else None
        fwd, bwd = _meta(n, 2, H, W, dtype=torch.float32), _meta(n, 2, H, W, dtype=torch.float32)
        focc, bocc = _meta(n, 1, H, W, dtype=torch.float32), _meta(n, 1, H, W, dtype=torch.float32)
        inputs = BatchInputs(fwd, bwd, focc, bocc, backend=backend)
        ctrl = FrescoController(s)
        ctrl.inputs = inputs
        for scale in (factor * 2, factor):  # up_blocks.2 and .3 at 1/16 and 1/8 of the image
            hw = (H // scale) * (W // scale)
            inputs.keep[hw] = torch.empty(n, hw, dtype=torch.bool, device="meta")
            inputs.trajectories[hw] = (torch.empty(n, hw, dtype=torch.long, device="meta"),
                                       torch.empty(n, hw, dtype=torch.int32, device="meta"))
        previous, _ = install_processors(unet, ctrl)
        hooks = DecoderHooks(unet, ctrl, s)
        try:
            with tracker.stage("reference pass"):
                ctrl.mode, ctrl.record_attention, ctrl.record_features = "record", True, True
                unet(torch.cat([latent_x0, latent_x0]).to(dtype), 999, encoder_hidden_states=embeds,
                     return_dict=False)
                ctrl.mode = "off"
                hooks.finish_record()
            latents = latent_x0 + noise
            for name, optimize in (("unet+controlnet", False), ("optimisation", True)):
                with tracker.stage(name):
                    ctrl.set_step(5, 700, cross_frame=s.cross_frame_attention, spatial=s.spatial_attention,
                                  temporal=s.temporal_attention, optimize=optimize and s.feature_optimization)
                    x_in = torch.cat([latents, latents]).to(dtype)
                    down = mid = None
                    if cn is not None:
                        down, mid = cn(x_in, 700, encoder_hidden_states=embeds, controlnet_cond=cond,
                                       return_dict=False)
                    eps = unet(x_in, 700, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, return_dict=False)[0].float()
                    eps_u, eps_c = eps.chunk(2)
                    latents = latents + (eps_u + 7.5 * (eps_c - eps_u))
                    del x_in, down, mid, eps, eps_u, eps_c
        finally:
            hooks.remove()
            restore_processors(unet, previous)
            ctrl.clear()
    plan.stages = {k: tracker.peaks[k] for k in ("reference pass", "unet+controlnet", "optimisation")}
    plan.vae = {k: trace_vae(models, (W, H), n, k) for k in vae_chunks(n, plan.vae_chunk)}
    return plan


def vae_chunks(n: int, largest: int) -> List[int]:
    """The VAE chunk sizes a plan weighs: 1, 2, 4, ... up to min(n, largest), and min(n, largest) itself."""
    top = max(1, min(n, largest))
    return sorted({1 << i for i in range(top.bit_length()) if 1 << i <= top} | {top})


def trace_vae(models: SimpleNamespace, size: Tuple[int, int], n: int, chunk: int) -> Dict[str, int]:
    """Peaks of one VAE encode chunk (with the batch's fp32 frames in [-1, 1] and latents alive) and one decode
    chunk (with the final latents and the decoded chunks gathered so far), through FrescoPipeline's own
    vae_encode / vae_decode."""
    from .pipeline.core import FrescoPipeline
    W, H = size
    factor = 2 ** (len(models.vae.config.block_out_channels) - 1)
    h, w = H // factor, W // factor
    tracker = StorageTracker()
    with torch.no_grad(), tracing(tracker):
        with tracker.stage("encode"):
            frames = torch.empty(n, 3, H, W, device="meta")
            latent_x0 = torch.empty(n, 4, h, w, device="meta")
            enc = SimpleNamespace(vae=_Posterior(models.vae), dtype=models.dtype)
            FrescoPipeline.vae_encode(enc, frames[:chunk], None, chunk)
            del frames
        with tracker.stage("decode"):
            FrescoPipeline.vae_decode(SimpleNamespace(vae=models.vae, dtype=models.dtype), latent_x0, chunk)
    return {"encode": tracker.peaks["encode"], "decode": tracker.peaks["decode"]}


class _Posterior:
    """The VAE with an encode whose posterior sample needs no generator (meta tensors draw no random numbers)."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, x):
        dist = self.vae.encode(x).latent_dist
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator: dist.mean + dist.std))

    @property
    def config(self):
        return self.vae.config


# shared/GPU-BASELINE.md, H100, torch 2.11: (case, kind, N, C, feature h x w, image H x W, spatial, temporal, MiB)
MEASURED = [
    ("L3 512², N=8", "optimize", 8, 640, (64, 64), (512, 512), True, True, 7106.0),
    ("L3 512², N=16", "optimize", 16, 640, (64, 64), (512, 512), True, True, 14212.0),
    ("L3 512×896, N=8", "optimize", 8, 640, (64, 112), (512, 896), True, True, 20499.5),
    ("L3 512×896, N=16", "optimize", 16, 640, (64, 112), (512, 896), True, True, 40999.0),
    ("L3 512², N=8, spatial only", "optimize", 8, 640, (64, 64), (512, 512), True, False, 6946.0),
    ("L3 512², N=8, temporal only", "optimize", 8, 640, (64, 64), (512, 512), False, True, 1922.8),
    ("UNet SD1.5 forward, N=8, latent 64²", "unet", 8, 4, (64, 64), (512, 512), False, False, 1041.0),
]
