"""Loading the diffusers components FRESCO needs (SD1.5-family UNet, VAE, CLIP text encoder + tokenizer, DDPM
scheduler, optional ControlNet), and a tiny random-weight model with SD1.5's block structure built from configs in
code, so that everything runs offline on CPU (tests, demo). Nothing here downloads unless a hub id is given."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from ..constants import (CONTROL_TYPES, CONTROLNET_IDS, OWN_VAE, PUBLISHED_VAE, TINY, TINY_NAMES, TINY_TEXT_WIDTH,
                         TORCH_DTYPE_NAMES)
from .addons import apply_addons

# SD1.5's scheduler: 1000 training steps, scaled-linear betas, leading spacing with steps_offset 1 (t = 951 ... 1
# at 20 steps); used for the tiny in-code model only: a loaded model's DDPM scheduler is built from its own
# scheduler config, as the published code does (DDPMScheduler.from_config(pipe.scheduler.config))
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, steps_offset=1, timestep_spacing="leading",
                      prediction_type="epsilon")


@dataclass
class Components:
    unet: "torch.nn.Module"
    vae: "torch.nn.Module"
    text_encoder: Optional["torch.nn.Module"]
    tokenizer: Optional[object]
    scheduler: object
    controlnet: Optional["torch.nn.Module"] = None
    # LoRAs, embeddings, IP-Adapter loaded on top (fresco.models.addons.Addons; its `loader` serves prompts/images)
    addons: Optional[object] = None


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DTYPES = {name: getattr(torch, name) for name in TORCH_DTYPE_NAMES}


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere, unless a dtype (or its name) is given."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: one of {sorted(DTYPES)} or 'auto', got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: one of {sorted(DTYPES)} or 'auto', got {dtype!r}")
    return DTYPES[dtype]


def make_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(**SD15_SCHEDULER)


def unet_config(tiny: bool = True) -> dict:
    """SD1.5's UNet block structure: 4 down blocks (3 with cross-attention), 4 up blocks (the last 3 with 3
    transformer blocks each, so FRESCO's self-attention layers sit in up_blocks.2/3), 8 heads, decoder inputs at 4
    resolutions. tiny=False gives SD1.5's full widths (random weights, for the GPU benchmark)."""
    cfg = dict(in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if tiny:
        cfg.update(sample_size=8, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, norm_num_groups=8)
    else:
        cfg.update(sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768)
    return cfg


def vae_config(tiny: bool = True) -> dict:
    """SD's KL autoencoder: 4 blocks (3 downsamplings, latents at 1/8), 4 latent channels, scaling 0.18215."""
    cfg = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    if tiny:
        cfg.update(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64)
    else:
        cfg.update(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512)
    return cfg


def stand_in_seed(repo: str) -> int:
    """The seed of a random-weight stand-in for `repo` (fresco make-test-models): the same weights on every run."""
    return int(hashlib.sha1(repo.encode()).hexdigest()[:8], 16)


def text_config(tiny: bool = True, vocab_size: int = 49408):
    from transformers import CLIPTextConfig
    if tiny:
        # the byte-level tokenizer's last two ids are <|startoftext|> and <|endoftext|>
        return CLIPTextConfig(vocab_size=vocab_size, hidden_size=TINY_TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                              bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                          hidden_act="quick_gelu")


def tiny_tokenizer():
    """A CLIP tokenizer built in code: byte-level vocabulary (every byte, alone and word-final) and no merges, so any
    prompt tokenises (one token per byte) without a vocabulary file."""
    from transformers import CLIPTokenizer
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to code points from 256 on
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _placed(parts: Components, device, dtype: torch.dtype) -> Components:
    """Every module on `device` in `dtype` (cast only when it differs), in eval mode without gradients."""
    for m in (parts.unet, parts.vae, parts.text_encoder, parts.controlnet):
        if m is not None:
            if next(m.parameters()).dtype != dtype:
                m.to(dtype=dtype)
            m.to(device=device).eval().requires_grad_(False)
    return parts


def tiny_components(seed: int = 0, controlnet: bool = True, sd15_widths: bool = False,
                    dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu",
                    text_encoder: bool = True) -> Components:
    """Random-weight components with SD1.5's structure, built from configs (no files, no network).

    sd15_widths=False: tiny channels (UNet 32/32/64/64, 8 heads; VAE 8/16/16/16; 2-layer 32-wide CLIP) for CPU
    tests; True: SD1.5's full widths (UNet 320/640/1280/1280, VAE 128..512, 12-layer CLIP-L) for GPU benchmarks.
    The tokenizer is the byte-level `tiny_tokenizer` either way. text_encoder=False: no tokenizer/text encoder
    (prompts then go in as embeddings) and no transformers import. Weights depend only on `seed`."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    tiny = not sd15_widths
    tokenizer = tiny_tokenizer() if text_encoder else None
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(**unet_config(tiny))
        vae = AutoencoderKL(**vae_config(tiny))
        text_model = None
        if text_encoder:
            from transformers import CLIPTextModel
            text_model = CLIPTextModel(text_config(tiny, vocab_size=len(tokenizer)))
        cn = None
        if controlnet:
            cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32) if tiny
                                           else (16, 32, 96, 256))
            # ControlNet's zero convolutions start at zero: give them small random weights so the control path
            # actually changes the output in tests
            with torch.no_grad():
                for name, p in cn.named_parameters():
                    if "zero_conv" in name or "controlnet_down_blocks" in name or "controlnet_mid_block" in name \
                            or "conv_out" in name:
                        p.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(gen_state)
    return _placed(Components(unet, vae, text_model, tokenizer, make_scheduler(), cn), device, dtype)


def load_components(model: str, controlnet: Union[None, str, "torch.nn.Module"] = None,
                    controlnet_type: Optional[str] = "canny", device: Union[str, torch.device] = "cpu",
                    dtype: torch.dtype = torch.float32, local_files_only: bool = False,
                    vae: Optional[str] = None, log: Callable[[str], None] = print, model_config: Optional[str] = None,
                    controlnets: Optional[Sequence] = None, addons=None) -> Components:
    """Components of a diffusers SD1.5-family model (hub id or local folder with unet/vae/text_encoder/tokenizer/
    scheduler, or a single-file .safetensors/.ckpt checkpoint read with the configs of the local folder
    `model_config`, default SD1.5's from the Hugging Face cache: fresco.models.addons.single_file_config); the
    scheduler is a DDPM scheduler built from the model's own scheduler config.

    controlnets: [fresco.addon_specs.ControlSpec] (one ControlNet each, a MultiControlNetModel when several; replaces
    controlnet/controlnet_type). addons: fresco.models.addons.Addons (LoRA, embeddings, IP-Adapter) loaded on top.

    controlnet: a ControlNetModel, an id/path, or None for the v1.0 ControlNet of `controlnet_type` (no ControlNet
    when controlnet_type is None too). vae: a separate VAE id/path, or None / one of OWN_VAE for the model's own.
    The published choice PUBLISHED_VAE is used only when it is available locally (Hugging Face cache or the hub
    when online); otherwise one note goes to `log` and the model's own VAE is used. local_files_only=True never
    touches the network (HF_HUB_OFFLINE=1 does the same)."""
    if controlnet_type is not None and controlnet_type not in CONTROL_TYPES:
        raise ValueError(f"controlnet_type: one of {CONTROL_TYPES} or None, got {controlnet_type!r}")
    from . import addons as addons_mod
    if model in TINY_NAMES:
        parts = tiny_components(controlnet=controlnet_type is not None or controlnet is not None or bool(controlnets),
                                dtype=dtype, device=device)
        if controlnet is not None and not isinstance(controlnet, str):
            parts.controlnet = controlnet
        if controlnets and len(controlnets) > 1:  # the tiny model's ControlNet, then one per further seed
            from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
            parts.controlnet = MultiControlNetModel([parts.controlnet] + [
                tiny_components(seed=k, text_encoder=False).controlnet for k in range(1, len(controlnets))])
        return _with_addons(_placed(parts, device, dtype), addons)
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    single = addons_mod.is_single_file(model)
    if not (single or os.path.isdir(model) or "/" in model):
        raise ValueError(f"model: a diffusers model id ('owner/name'), a local folder, or one of {TINY_NAMES}; got "
                         f"{model!r}")
    from diffusers import DDPMScheduler

    kw = dict(torch_dtype=dtype, local_files_only=local_files_only)
    vae_m = None
    if vae is not None and vae not in OWN_VAE:
        try:
            vae_m = AutoencoderKL.from_pretrained(vae, **kw)
        except (OSError, ValueError) as e:
            if vae != PUBLISHED_VAE:
                raise RuntimeError(f"vae: could not load {vae!r} (local_files_only={local_files_only}): {e}") from e
            log(f"fresco: note: the published VAE {PUBLISHED_VAE} is not available locally; using the model's own "
                f"VAE (download it, or set vae: own to silence this)")
    try:
        if single:
            unet, own_vae, text_encoder, tokenizer, sched = addons_mod.load_single_file(model, model_config, dtype)
            vae_m = vae_m if vae_m is not None else own_vae
            scheduler = DDPMScheduler.from_config(sched.config)
        else:
            unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw)
            if vae_m is None:
                vae_m = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
            text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw)
            tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", local_files_only=local_files_only)
            scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler", local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"model: could not load the SD1.5 components of {model!r} "
                           f"(local_files_only={local_files_only}): {e}") from e
    cn = None
    if controlnets:
        cn = addons_mod.load_controlnets(controlnets, dtype, local_files_only)
    elif isinstance(controlnet, torch.nn.Module):
        cn = controlnet
    elif controlnet is not None or controlnet_type is not None:
        cn_id = controlnet if controlnet is not None else CONTROLNET_IDS[controlnet_type]
        try:
            cn = ControlNetModel.from_pretrained(cn_id, **kw)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"controlnet: could not load {cn_id!r} (local_files_only={local_files_only}): {e}") \
                from e
    parts = _placed(Components(unet, vae_m, text_encoder, tokenizer, scheduler, cn), device, dtype)
    return _with_addons(parts, addons)


def _with_addons(parts: Components, addons) -> Components:
    """parts with `addons` (fresco.models.addons.Addons) loaded into them, when there are any."""
    if addons:
        parts.addons = apply_addons(parts, addons)
        for m in (parts.unet, parts.text_encoder):  # the adapters' new parameters too
            m.eval().requires_grad_(False)
    return parts
