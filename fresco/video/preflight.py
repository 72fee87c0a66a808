"""Checks a render runs before it loads any model or decodes the video at the processing size, so that a request
that cannot work fails at once with one clear line: the device exists, the model can be had (in the local Hugging
Face cache, a local folder, or a reachable hub; `HF_HUB_OFFLINE` honoured), and the memory a render needs fits
in what the host (and GPU) has free."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch

from ..addon_specs import is_single_file, parse_controlnets
from ..config import RenderConfig
from ..constants import CONTROLNET_IDS, TINY_NAMES, VIDEO_SUFFIXES
from ..models import addons
from .io import VideoInfo
from .outdir import check_not_input

GiB = 1024 ** 3


def check_device(device: str) -> torch.device:
    """The torch device of `device` ('auto', 'cpu', 'cuda', 'cuda:1', ...), or a clear error when it is not one or
    is not present on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: one of 'auto', 'cpu', 'cuda', 'cuda:N'; got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} but this machine has no usable CUDA device (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        raise ValueError(f"device: one of 'auto', 'cpu', 'cuda', 'cuda:N'; got {device!r}")
    return dev


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint (HF_ENDPOINT), no retries."""
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model_available(model: str, probe_file: str, key: str) -> bool:
    """Whether hub id `model` must be loaded from the local cache only (True: cached, and offline or the hub is
    unreachable). Local folders and the tiny model return False. Raises at once when `model` is a hub id that is
    neither cached nor reachable, instead of waiting on network retries. probe_file: a file every copy of the model
    has (its config), looked up in the cache."""
    if model in TINY_NAMES or os.path.isdir(model):
        return False
    if "/" not in model or model.count("/") > 1 or model.startswith(("/", ".")):
        raise ValueError(f"{key}: a diffusers model id ('owner/name'), an existing local folder, or one of "
                         f"{TINY_NAMES}; got {model!r}")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # no hub client (it comes with diffusers): loading will say what is missing
        return False
    cached = isinstance(try_to_load_from_cache(model, probe_file), str)
    if _offline():
        if not cached:
            raise ValueError(f"{key}: {model!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                             f"HF_HUB_OFFLINE is set; download it first or pass a local folder")
        return True
    if _hub_reachable():
        return False
    if not cached:
        raise ValueError(f"{key}: {model!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                         f"{constants.ENDPOINT} cannot be reached; download it first or pass a local folder")
    return True


@dataclass
class MemoryEstimate:
    """Bytes a render needs at its peak, by part; `host` and `device` are the totals on each side."""
    frames: int
    latents: int
    activations: int
    weights: int
    on_gpu: bool

    @property
    def host(self) -> int:
        return self.frames + (0 if self.on_gpu else self.latents + self.activations + self.weights)

    @property
    def device(self) -> int:
        return self.latents + self.activations + self.weights if self.on_gpu else 0

    def describe(self) -> str:
        return (f"frames {self.frames / GiB:.1f} GiB, latents {self.latents / GiB:.1f} GiB, activations "
                f"{self.activations / GiB:.1f} GiB, weights {self.weights / GiB:.1f} GiB")


# SD1.5's parameters (UNet 860M, VAE 84M, CLIP-L text 123M; ControlNet 361M)
SD15_PARAMS, CONTROLNET_PARAMS = 1_067_000_000, 361_000_000


def estimate_memory(size: tuple[int, int], batch_size: int, model: Optional[str], dtype_bytes: int, on_gpu: bool,
                    controlnet: bool) -> MemoryEstimate:
    """A lower-bound estimate of a render's peak memory at processing size (W, H) with `batch_size` keyframes per
    batch. frames: the batch's uint8 frames plus anchors, and the float32 flows/warps propagation holds for one
    frame. latents: [2N, 4, H/8, W/8] in float32, a few copies (latents, noise prediction, optimiser state).
    activations: the UNet on 2N frames (classifier-free guidance) with SD1.5's widths 320/640/1280/1280 at 1/8 ..
    1/64 of the pixels (tiny model: 32/32/64/64), about 16 live tensors per level and twice that for the decoder
    optimisation's backward pass; plus one frame through the VAE decoder (128..512 channels at 1/1 .. 1/8 of the
    pixels; tiny: 8..16), about 6 live tensors per level. model: "sd15", "tiny", or None when the caller brings
    its own stylizer (then only frames and latents are counted)."""
    w, h = size
    px = w * h
    n = batch_size
    frames = (n + 3) * px * 3 + px * (8 * 4 + 4 * 3 * 4)
    latents = 6 * 2 * n * 4 * (px // 64) * 4
    if model is None:
        return MemoryEstimate(frames, latents, 0, 0, on_gpu)
    tiny = model == "tiny"
    unet_widths = (32, 32, 64, 64) if tiny else (320, 640, 1280, 1280)
    vae_widths = (8, 16, 16, 16) if tiny else (128, 256, 512, 512)
    unet_per_px = sum(c / 64 / 4 ** i for i, c in enumerate(unet_widths))
    vae_per_px = sum(c / 4 ** i for i, c in enumerate(vae_widths))
    activations = int(px * dtype_bytes * (2 * n * unet_per_px * 16 * 2 + vae_per_px * 6))
    weights = 0 if tiny else (SD15_PARAMS + (CONTROLNET_PARAMS if controlnet else 0)) * dtype_bytes
    return MemoryEstimate(frames, latents, activations, weights, on_gpu)


def host_available() -> Optional[int]:
    """Bytes the host can still give this process: MemAvailable, capped by a cgroup memory limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            used_path = path.replace("memory.max", "memory.current").replace("limit_in_bytes", "usage_in_bytes")
            try:
                free = int(text) - int(open(used_path).read().strip())
                avail = free if avail is None else min(avail, free)
            except (OSError, ValueError):
                pass
        break
    return avail


def check_memory(est: MemoryEstimate, device: torch.device, size: tuple[int, int], gpu: bool = True) -> None:
    """Refuse (with the estimate and what is available) when the render cannot fit on the host or (gpu=True; False
    when `check_gpu_plan` checks the GPU) the GPU."""
    host = host_available()
    if host is not None and est.host > host:
        raise ValueError(f"size: {size[0]}x{size[1]} needs about {est.host / GiB:.1f} GiB of host memory "
                         f"({est.describe()}) but {host / GiB:.1f} GiB is available; use a smaller --size/--short-side "
                         f"or --batch-size, or --force to try anyway")
    if est.on_gpu and gpu:
        free, _ = torch.cuda.mem_get_info(device)
        if est.device > free:
            raise ValueError(f"size: {size[0]}x{size[1]} needs about {est.device / GiB:.1f} GiB on {device} "
                             f"({est.describe()}) but {free / GiB:.1f} GiB is free; use a smaller --size/--short-side "
                             f"or --batch-size, or --force to try anyway")


def check_gpu_plan(settings, size: tuple[int, int], batch_size: int, model: str, controlnet: bool, dtype_bytes: int,
                   free_bytes: int) -> int:
    """The GPU side of the memory check, from fresco.memory's trace of one keyframe batch (fresco plan's numbers):
    raises, naming the batch size that would fit, when `batch_size` keyframes at `size` cannot fit in `free_bytes`
    at any VAE chunk; else returns the largest VAE chunk <= settings.vae_chunk that fits. model: "sd15" or
    "tiny"."""
    from ..plan import check_plan
    dtype = torch.float32 if dtype_bytes == 4 else torch.float16
    return check_plan(size, batch_size, free_bytes, settings=settings, backend=settings.backend or "fused",
                      tiny=model == "tiny", controlnet=controlnet, dtype=dtype)


def check_render(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], device: torch.device,
                 default_model: bool) -> tuple[bool, RenderConfig]:
    """The checks before anything is written or loaded: the output is not the input, the model can be had
    (when the default stylizer will load one), the memory fits (unless cfg.force; on CUDA with the default model,
    by fresco.memory's trace, which also lowers vae_chunk to the largest that fits). Returns whether the model
    must be loaded from the local cache only, and cfg (with that vae_chunk)."""
    root = Path(cfg.save_path)
    check_not_input(info.path, root, cfg.output)
    out = root / cfg.output
    if Path(cfg.output).suffix.lower() in VIDEO_SUFFIXES and out.is_dir():
        raise ValueError(f"output: '{out}' is a folder; choose another --output")
    local_only = False
    if default_model:
        # the user's single file, LoRAs, embeddings, IP-Adapter: one line naming a bad file
        addons.check_files(cfg.model, cfg.model_config, addons.user_addons(cfg), cfg.ip_image)
        if not is_single_file(cfg.model):
            local_only = check_model_available(cfg.model, "unet/config.json", "sd_path")
        if cfg.use_controlnet and cfg.model not in TINY_NAMES:  # the tiny model brings its own ControlNet
            key = "controlnets" if cfg.controlnets else "controlnet_type"
            ids = [c.model for c in parse_controlnets(cfg.controlnets)] if cfg.controlnets else \
                [CONTROLNET_IDS[cfg.controlnet_type]]
            for cn in ids:
                local_only |= check_model_available(cn, "config.json", key)
    if not cfg.force:
        on_gpu = device.type == "cuda"
        dtype_bytes = 4 if cfg.dtype == "float32" or (cfg.dtype == "auto" and not on_gpu) else 2
        model = None if not default_model else "tiny" if cfg.model in TINY_NAMES else "sd15"
        est = estimate_memory(size, cfg.batch_size, model, dtype_bytes, on_gpu, cfg.use_controlnet)
        planned = on_gpu and model is not None
        check_memory(est, device, size, gpu=not planned)
        if planned:
            chunk = check_gpu_plan(cfg.settings, size, cfg.batch_size, model, cfg.use_controlnet, dtype_bytes,
                                   torch.cuda.mem_get_info(device)[0])
            if chunk < min(cfg.vae_chunk, cfg.batch_size):
                print(f"fresco: note: vae_chunk {cfg.vae_chunk} does not fit the GPU's free memory; using {chunk}",
                      file=sys.stderr, flush=True)
                cfg = cfg.replace(vae_chunk=chunk)
    return local_only, cfg
