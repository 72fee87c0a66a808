"""The models users bring on top of an SD1.5 base: single-file checkpoints (.safetensors / .ckpt, the original SD key
names), LoRA files (kohya and diffusers formats), textual-inversion embeddings, an IP-Adapter with a style image,
and several ControlNets at once. Everything loads through diffusers' own loaders (`from_single_file` with a local
config folder, `load_lora_weights` on peft, `load_textual_inversion`, `load_ip_adapter`, `MultiControlNetModel`);
this module parses the user's specs, checks the files before any model loads (one line naming the file), and hands
the loaders our components through a StableDiffusionPipeline that shares them."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..constants import TINY_NAMES, TINY_TEXT_WIDTH
from ..addon_specs import (SD15_CONFIG_REPOS, SINGLE_FILE_SUFFIXES, ControlSpec, EmbeddingSpec, LoraSpec,
                           is_single_file, parse_embedding, parse_lora)
from .checkpoint import load_tensors

@dataclass
class Addons:
    """What goes on top of the base model: LoRAs (fused into the weights when `fuse_lora`), embeddings, and an
    IP-Adapter file (with its image encoder in the `image_encoder` folder beside it, the h94/IP-Adapter layout) at
    `ip_scale`."""
    loras: Sequence[LoraSpec] = ()
    fuse_lora: bool = False
    embeddings: Sequence[EmbeddingSpec] = ()
    ip_adapter: Optional[str] = None
    ip_scale: float = 1.0
    # the StableDiffusionPipeline that shares the components (kept for prompt conversion and image embedding)
    loader: object = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return bool(self.loras or self.embeddings or self.ip_adapter)


# ------------------------------------------------------------------ file checks (before any model loads)
def check_safetensors(path: str, key: str) -> None:
    """A one-line error naming `path` when it is missing, not a safetensors file, or truncated (its header promises
    more bytes than the file has). Reads only the header."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{key}: no such file '{path}'")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{key}: '{path}' is not a safetensors file (only {size} bytes)")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8 or n > 100_000_000:
            raise ValueError(f"{key}: '{path}' is truncated or not a safetensors file (header of {n} bytes, file of "
                             f"{size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{key}: '{path}' is truncated or not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{key}: '{path}' is not a safetensors file (header is not a mapping)")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{key}: '{path}' is truncated: its header needs {8 + n + end} bytes, the file has {size}")


def check_weights_file(path: str, key: str, suffixes: Sequence[str] = (".safetensors", ".ckpt", ".pt", ".bin",
                                                                        ".pth")) -> None:
    """The file exists, has a known suffix, and (safetensors) is complete."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: no such file '{path}'")
    if not path.lower().endswith(tuple(suffixes)):
        raise ValueError(f"{key}: '{path}' should be one of {', '.join(suffixes)}")
    if path.lower().endswith(".safetensors"):
        check_safetensors(path, key)


def _read_state_dict(path: str) -> dict:
    """A weights file's tensors (safetensors, or a pickle restricted to tensors: torch.load weights_only)."""
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return load_tensors(path, "weights file")


# keys only SDXL's UNet / second text encoder have, in kohya and diffusers LoRA naming
_SDXL_MARKERS = ("lora_te2_", "text_encoder_2.", "lora_unet_input_blocks_", "lora_unet_output_blocks_",
                 "lora_unet_middle_block_", "add_embedding")


def check_lora_file(spec: LoraSpec, key: str = "lora") -> None:
    """Before any model loads: the file is complete and has no key of a component SD1.5 does not have (SDXL's
    second text encoder or its UNet naming); names the file and the first such key."""
    check_weights_file(spec.path, key)
    sd = _read_state_dict(spec.path)
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{key}: '{spec.path}' holds no LoRA weights")
    for k in sd:
        if any(m in k for m in _SDXL_MARKERS):
            raise ValueError(f"{key}: '{spec.path}' does not fit an SD1.5 model (an SDXL LoRA?): key {k!r}")


def check_embedding_file(spec: EmbeddingSpec, width: Optional[int], key: str = "embedding") -> None:
    """Before any model loads: the file is complete, holds one embedding, and (when `width` is known) its vectors
    are `width` wide (SD1.5: 768)."""
    check_weights_file(spec.path, key)
    vectors = embedding_vectors(spec.path, key)
    if width is not None and vectors.shape[-1] != width:
        raise ValueError(f"{key}: '{spec.path}' holds {vectors.shape[-1]}-wide vectors; this model's text encoder "
                         f"takes {width}-wide ones (an embedding for another model family?)")


def embedding_vectors(path: str, key: str = "embedding") -> torch.Tensor:
    """The [n, D] vectors of an embedding file in the formats diffusers reads (one tensor under any name, or A1111's
    string_to_param)."""
    sd = _read_state_dict(path)
    if isinstance(sd, torch.Tensor):
        t = sd
    elif isinstance(sd, dict) and "string_to_param" in sd and isinstance(sd["string_to_param"], dict):
        t = next(iter(sd["string_to_param"].values()))
    elif isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), torch.Tensor):
        t = next(iter(sd.values()))
    else:
        raise ValueError(f"{key}: '{path}' is not a textual-inversion embedding (expected one tensor, or A1111's "
                         f"string_to_param)")
    return t if t.dim() == 2 else t.reshape(-1, t.shape[-1])


def text_width(model: str, model_config: Optional[str] = None) -> Optional[int]:
    """The text encoder's hidden size from its config.json (a folder, the model's config folder for a single file,
    or the Hugging Face cache), or None when it cannot be read without loading."""
    if model in TINY_NAMES:
        return TINY_TEXT_WIDTH
    folder = None
    if is_single_file(model):
        try:
            folder = single_file_config(model_config)
        except (FileNotFoundError, ValueError):
            return None
    elif os.path.isdir(model):
        folder = model
    else:
        folder = _cached_snapshot(model)
    cfg = Path(folder) / "text_encoder" / "config.json" if folder else None
    if cfg is None or not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("hidden_size")


# ------------------------------------------------------------------ single-file checkpoints
def _cached_snapshot(repo: str) -> Optional[str]:
    """The local snapshot folder of hub `repo` when its model_index.json is in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo, "model_index.json")
    except ValueError:   # not a hub id at all (a path, a name with '/' twice): the caller names its setting
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def single_file_config(model_config: Optional[str]) -> str:
    """The local diffusers folder whose configs describe a single-file checkpoint's architecture: `model_config` (a
    folder, or a hub id in the local cache), else the first of SD15_CONFIG_REPOS in the cache. Never the network."""
    if model_config:
        if os.path.isdir(model_config):
            if not (Path(model_config) / "unet" / "config.json").is_file():
                raise ValueError(f"model_config: '{model_config}' is not a diffusers model folder (no "
                                 f"unet/config.json)")
            return model_config
        snap = _cached_snapshot(model_config)
        if snap is None:
            raise FileNotFoundError(f"model_config: {model_config!r} is neither a local folder nor in the local "
                                    f"Hugging Face cache")
        return snap
    for repo in SD15_CONFIG_REPOS:
        snap = _cached_snapshot(repo)
        if snap is not None:
            return snap
    raise FileNotFoundError("model_config: a single-file checkpoint needs the SD1.5 diffusers configs; pass "
                            "--model-config FOLDER (a diffusers SD1.5 folder) or download them once with "
                            "`huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "
                            "'*.json' '*.txt'`")


def load_single_file(path: str, model_config: Optional[str], dtype: torch.dtype):
    """unet, vae, text_encoder, tokenizer, scheduler of a single-file SD1.5 checkpoint, through diffusers'
    StableDiffusionPipeline.from_single_file with a local config folder (offline)."""
    from diffusers import StableDiffusionPipeline
    check_weights_file(path, "sd_path", SINGLE_FILE_SUFFIXES)
    config = single_file_config(model_config)
    from diffusers.utils import logging as diffusers_logging
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its notes on the configs' legacy keys are not the user's concern
    try:
        pipe = StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=True,
                                                        torch_dtype=dtype, safety_checker=None,
                                                        requires_safety_checker=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"sd_path: could not load the single-file checkpoint '{path}' with the configs of "
                           f"'{config}': {first}") from e
    finally:
        diffusers_logging.set_verbosity(level)
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler


# ------------------------------------------------------------------ LoRA, embeddings, IP-Adapter
def _loader(parts):
    """A StableDiffusionPipeline over our components (shared, not copied), for diffusers' loader mixins."""
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=parts.unet, scheduler=parts.scheduler, safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def _module_fit(model: torch.nn.Module, name: str, down: torch.Tensor, up: Optional[torch.Tensor]) -> bool:
    """Whether LoRA factors (down [r, in, ...], up [out, r, ...]) fit the Linear/Conv2d `name` of `model`."""
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return False
    w = getattr(m, "weight", None)
    if w is None or w.dim() < 2:
        return False
    return down.shape[1] == w.shape[1] and (up is None or up.shape[0] == w.shape[0])


def _first_misfit(parts, state_dict: dict) -> Optional[str]:
    """The first key of a diffusers-converted LoRA state dict (from lora_state_dict) whose module is missing in, or
    has other widths than, the model; None when every key fits."""
    models = {"unet": parts.unet, "text_encoder": parts.text_encoder}
    for k, v in state_dict.items():
        prefix, _, rest = k.partition(".")
        if prefix not in models or models[prefix] is None:
            return k
        for down_tag, up_tag in (("lora_A", "lora_B"), ("lora.down", "lora.up"), ("lora_linear_layer.down",
                                                                                  "lora_linear_layer.up")):
            if f".{down_tag}." in rest:
                module = rest.split(f".{down_tag}.")[0]
                up = state_dict.get(k.replace(down_tag, up_tag))
                if not _module_fit(models[prefix], module, v, up):
                    return k
                break
    return None


def apply_addons(parts, addons: Addons) -> Addons:
    """Load `addons` into `parts` (unet / text_encoder / tokenizer changed in place) with diffusers' loaders; returns
    `addons` with its `loader` set (used for prompts with multi-vector embeddings and for IP-Adapter images)."""
    if not addons:
        return addons
    pipe = _loader(parts)
    if addons.loras:
        names = []
        for i, spec in enumerate(addons.loras):
            sd, _ = pipe.lora_state_dict(spec.path)
            bad = _first_misfit(parts, sd)
            if bad is not None:
                raise ValueError(f"lora: '{spec.path}' does not fit this model: key {bad!r}")
            name = f"lora{i}"
            try:
                pipe.load_lora_weights(spec.path, adapter_name=name)
            except (ValueError, RuntimeError, KeyError) as e:
                raise ValueError(f"lora: '{spec.path}' does not fit this model: {str(e).splitlines()[0]}") from e
            names.append(name)
        pipe.set_adapters(names, adapter_weights=[s.weight for s in addons.loras])
        if addons.fuse_lora:
            pipe.fuse_lora(adapter_names=names)
            pipe.unload_lora_weights()
    if addons.embeddings:
        width = parts.text_encoder.get_input_embeddings().weight.shape[-1]
        for spec in addons.embeddings:
            check_embedding_file(spec, width)
            try:
                pipe.load_textual_inversion(_read_state_dict(spec.path), token=spec.token)
            except ValueError as e:
                raise ValueError(f"embedding: '{spec.path}': {str(e).splitlines()[0]}") from e
    if addons.ip_adapter:
        load_ip_adapter(pipe, addons.ip_adapter, addons.ip_scale)
    addons.loader = pipe
    return addons


def user_addons(cfg) -> Addons:
    """The LoRAs, embeddings and IP-Adapter a render config (fresco.config.RenderConfig) names, parsed."""
    return Addons(loras=[parse_lora(x) for x in cfg.loras or ()], fuse_lora=cfg.fuse_lora,
                  embeddings=[parse_embedding(x) for x in cfg.embeddings or ()], ip_adapter=cfg.ip_adapter,
                  ip_scale=float(cfg.ip_scale))


def check_files(model: str, model_config: Optional[str], addons: Addons, ip_image: Optional[str]) -> None:
    """Every user file a render names, checked before any model loads (one line naming the file when one is
    missing, truncated, or does not fit SD1.5): the single-file checkpoint and its config folder, the LoRAs, the
    embeddings (their width against the text encoder's config when it can be read), the IP-Adapter and its image."""
    if is_single_file(model):
        check_weights_file(model, "sd_path", SINGLE_FILE_SUFFIXES)
        single_file_config(model_config)
    for spec in addons.loras:
        check_lora_file(spec)
    width = text_width(model, model_config) if addons.embeddings else None
    for spec in addons.embeddings:
        check_embedding_file(spec, width)
    if addons.ip_adapter:
        check_ip_adapter(addons.ip_adapter)
        if ip_image is None or not Path(ip_image).is_file():
            raise FileNotFoundError(f"ip_image: no such style image {ip_image!r}")
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(ip_image) as im:
                im.verify()
        except Image.DecompressionBombError:
            raise ValueError(f"ip_image: '{ip_image}' decodes to more pixels than a style image may have "
                             f"({Image.MAX_IMAGE_PIXELS} at most)") from None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"ip_image: '{ip_image}' is not a readable image ({e})") from None


IP_IMAGE_SIDE = 1024  # the image encoder sees 224x224; a larger style image is shrunk as it is read


def load_style_image(path: str):
    """The IP-Adapter's style image as RGB, its long side at most IP_IMAGE_SIDE: a 12000x12000 photo took 2.5 GB
    on its way to a 224x224 input (JPEG decodes at a reduced scale directly, other formats are shrunk after)."""
    from PIL import Image
    with Image.open(path) as im:
        im.draft("RGB", (IP_IMAGE_SIDE, IP_IMAGE_SIDE))
        im = im.convert("RGB")
    im.thumbnail((IP_IMAGE_SIDE, IP_IMAGE_SIDE), Image.Resampling.LANCZOS)
    return im


def image_encoder_folder(ip_adapter: str) -> Path:
    return Path(ip_adapter).parent / "image_encoder"


def check_ip_adapter(path: str, key: str = "ip_adapter") -> None:
    check_weights_file(path, key, (".safetensors", ".bin"))
    enc = image_encoder_folder(path)
    if not (enc / "config.json").is_file():
        raise FileNotFoundError(f"{key}: the IP-Adapter needs its CLIP image encoder in '{enc}' (config.json and "
                                f"weights, as h94/IP-Adapter ships models/image_encoder beside the adapter files)")


def load_ip_adapter(pipe, path: str, scale: float) -> None:
    """IP-Adapter `path` into `pipe`'s UNet (diffusers' load_ip_adapter: image projection + cross-attention
    processors on attn2), with the CLIP image encoder and its preprocessing from the folder beside it."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    check_ip_adapter(path)
    enc_dir = image_encoder_folder(path)
    dtype = pipe.unet.dtype
    pipe.image_encoder = CLIPVisionModelWithProjection.from_pretrained(enc_dir, torch_dtype=dtype,
                                                                       local_files_only=True).to(pipe.unet.device)
    pipe.image_encoder.eval().requires_grad_(False)
    size = pipe.image_encoder.config.image_size
    pipe.feature_extractor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size,
                                                                                          "width": size})
    p = Path(path)
    try:
        pipe.load_ip_adapter(str(p.parent), subfolder="", weight_name=p.name, image_encoder_folder=None,
                             local_files_only=True)
    except (ValueError, RuntimeError, KeyError, OSError) as e:
        raise ValueError(f"ip_adapter: '{path}' does not fit this model: {str(e).splitlines()[0]}") from e
    pipe.set_ip_adapter_scale(scale)


def load_controlnets(specs: Sequence[ControlSpec], dtype: torch.dtype, local_files_only: bool):
    """One ControlNetModel per spec (a MultiControlNetModel when there are several)."""
    from diffusers import ControlNetModel
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    nets = []
    for s in specs:
        try:
            nets.append(ControlNetModel.from_pretrained(s.model, torch_dtype=dtype,
                                                        local_files_only=local_files_only))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"controlnets: could not load {s.model!r} (local_files_only={local_files_only}): "
                               f"{str(e).splitlines()[0]}") from e
    return nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
