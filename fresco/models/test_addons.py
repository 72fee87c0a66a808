"""Random-weight stand-ins of the files users bring (fresco.models.addons), written by `fresco make-test-models DIR`
under DIR/user/ for tests and the README's examples: a single-file SD1.5 checkpoint with the original (LDM) key names,
a kohya LoRA, a diffusers (peft) LoRA, a textual-inversion embedding, and an IP-Adapter with its CLIP image encoder;
plus the ControlNet 1.1 repositories the new preprocessors select by default (in the Hugging Face cache layout). All
are built for the tiny stand-in model (fresco.models.tiny_components) and are noise."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

from .sd import stand_in_seed as _seed
from .sd import tiny_components

# file names under DIR/user
USER_FILES = {"checkpoint": "tiny-sd15.safetensors", "kohya_lora": "kohya-lora.safetensors",
              "diffusers_lora": "diffusers-lora.safetensors", "embedding": "tiny-style.safetensors",
              "ip_adapter": "ip-adapter/ip-adapter_sd15.safetensors"}
LORA_RANK = 4
# the SD1.5 UNet's blocks per level (the stand-ins share SD1.5's structure)
_LAYERS = 2
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: Dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet_key(k: str) -> str:
    """A diffusers UNet2DConditionModel key -> the original SD (LDM) key under model.diffusion_model."""
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    k2 = _rename(k, top)
    if k2 != k:
        return k2
    p = k.split(".")
    per = _LAYERS + 1
    if p[0] == "down_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
        if kind == "downsamplers":
            return f"input_blocks.{per * (i + 1)}.0.op." + rest.split(".", 1)[1]
        idx = per * i + j + 1
        if kind == "resnets":
            return f"input_blocks.{idx}.0." + _rename(rest, _RESNET)
        return f"input_blocks.{idx}.1." + rest
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
        return "middle_block.1." + rest if kind == "attentions" else f"middle_block.{2 * j}." + _rename(rest, _RESNET)
    if p[0] == "up_blocks":
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), ".".join(p[4:])
        if kind == "upsamplers":
            return f"output_blocks.{per * i + 2}.{1 if i == 0 else 2}." + rest
        idx = per * i + j
        if kind == "resnets":
            return f"output_blocks.{idx}.0." + _rename(rest, _RESNET)
        return f"output_blocks.{idx}.1." + rest
    raise KeyError(f"no original SD name for UNet key {k!r}")


def _vae_key(k: str, n_up: int) -> str:
    """A diffusers AutoencoderKL key -> the original SD key under first_stage_model."""
    p = k.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return k
    side, part = p[0], p[1]
    if part in ("conv_in", "conv_out"):
        return k
    if part == "conv_norm_out":
        return f"{side}.norm_out." + ".".join(p[2:])
    if part == "mid_block":
        kind, j, rest = p[2], int(p[3]), ".".join(p[4:])
        if kind == "attentions":
            return f"{side}.mid.attn_1." + _rename(rest, _VAE_ATTN)
        return f"{side}.mid.block_{j + 1}." + _rename(rest, {"conv_shortcut": "nin_shortcut"})
    i, kind, j, rest = int(p[2]), p[3], int(p[4]), ".".join(p[5:])
    level, name = (i, "down") if part == "down_blocks" else (n_up - 1 - i, "up")
    if kind in ("downsamplers", "upsamplers"):
        return f"{side}.{name}.{level}.{'downsample' if name == 'down' else 'upsample'}." + rest
    return f"{side}.{name}.{level}.block.{j}." + _rename(rest, {"conv_shortcut": "nin_shortcut"})


def original_sd_state_dict(parts) -> Dict[str, torch.Tensor]:
    """The UNet, VAE and CLIP text encoder of `parts` under the original SD checkpoint's key names (the layout
    model-sharing sites ship; diffusers' from_single_file reads it back)."""
    out = {}
    for k, v in parts.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(k)] = v
    n_up = len(parts.vae.config.up_block_types)
    for k, v in parts.vae.state_dict().items():
        name = _vae_key(k, n_up)
        if ".mid.attn_1." in name and name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            v = v[:, :, None, None]  # the original stores the VAE attention projections as 1x1 convolutions
        out["first_stage_model." + name] = v
    for k, v in parts.text_encoder.state_dict().items():  # transformers >= 5.6 drops the text_model level
        out["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    return {k: v.contiguous().clone() for k, v in out.items()}


def _attn_modules(model: torch.nn.Module, names=("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj",
                                                  "out_proj")):
    """(name, Linear) of the attention projections of `model` (what LoRA trainers target)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.endswith(tuple("." + x for x in names))]


def lora_factors(parts, seed: int, scale: float = 0.5) -> Dict[str, tuple]:
    """{('unet'|'text_encoder', module name): (down [r, in], up [out, r])} random LoRA factors for every attention
    projection of the stand-in model; `scale` sets their size so that weight 1 visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for comp in ("unet", "text_encoder"):
        for name, m in _attn_modules(getattr(parts, comp)):
            down = torch.randn(LORA_RANK, m.in_features, generator=g) * scale / m.in_features ** 0.5
            up = torch.randn(m.out_features, LORA_RANK, generator=g) * scale
            out[(comp, name)] = (down, up)
    return out


def write_kohya_lora(path: Union[str, Path], parts, seed: int = 1) -> Path:
    """A LoRA in kohya's naming (lora_unet_* / lora_te_*, lora_down/lora_up/alpha)."""
    from safetensors.torch import save_file
    sd = {}
    for (comp, name), (down, up) in lora_factors(parts, seed).items():
        key = ("lora_unet_" if comp == "unet" else "lora_te_") + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_diffusers_lora(path: Union[str, Path], parts, seed: int = 2) -> Path:
    """A LoRA in diffusers' (peft) naming: unet.<module>.lora_A/lora_B.weight, text_encoder.<module>...."""
    from safetensors.torch import save_file
    sd = {}
    for (comp, name), (down, up) in lora_factors(parts, seed).items():
        sd[f"{comp}.{name}.lora_A.weight"], sd[f"{comp}.{name}.lora_B.weight"] = down, up
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_embedding(path: Union[str, Path], width: int, vectors: int = 2, seed: int = 4) -> Path:
    """A textual-inversion embedding ({'emb_params': [vectors, width]}, the A1111 safetensors layout)."""
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, width, generator=g)}, str(path))
    return path


def write_ip_adapter(path: Union[str, Path], parts, seed: int = 5, tokens: int = 4) -> Path:
    """An IP-Adapter (the h94 layout: image_proj.* and ip_adapter.<n>.to_k_ip/to_v_ip for every cross-attention
    layer, numbered as the UNet's processors are) with a tiny CLIP image encoder in image_encoder/ beside it."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    g = torch.Generator().manual_seed(seed)
    path = Path(path)
    enc_dir = path.parent / "image_encoder"
    torch.manual_seed(seed)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4, image_size=32, patch_size=8,
                                                         projection_dim=32))
    enc.save_pretrained(enc_dir)
    unet = parts.unet
    cross = unet.config.cross_attention_dim
    proj_dim = enc.config.projection_dim
    sd = {"image_proj.proj.weight": torch.randn(tokens * cross, proj_dim, generator=g) * 0.2,
          "image_proj.proj.bias": torch.zeros(tokens * cross),
          "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    cross_layers = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    for k, name in enumerate(cross_layers):  # numbered 1, 3, 5, ... as the h94 files are
        hidden = unet.get_submodule(name[: -len(".processor")]).to_q.out_features
        for w in ("to_k_ip", "to_v_ip"):
            sd[f"ip_adapter.{2 * k + 1}.{w}.weight"] = torch.randn(hidden, cross, generator=g) * 0.5 / cross ** 0.5
    save_file(sd, str(path))
    return path


def write_user_files(root: Union[str, Path], sd_repo: str = "runwayml/stable-diffusion-v1-5") -> Dict[str, Path]:
    """Every user-file stand-in under root/user, for the stand-in model `sd_repo` (written by write_sd_model under
    root): the single-file checkpoint is that model's weights under the original names."""
    user = Path(root) / "user"
    user.mkdir(parents=True, exist_ok=True)
    parts = tiny_components(seed=_seed(sd_repo), controlnet=False)
    from safetensors.torch import save_file
    ckpt = user / USER_FILES["checkpoint"]
    save_file(original_sd_state_dict(parts), str(ckpt))
    width = parts.text_encoder.get_input_embeddings().weight.shape[-1]
    return {"checkpoint": ckpt,
            "kohya_lora": write_kohya_lora(user / USER_FILES["kohya_lora"], parts),
            "diffusers_lora": write_diffusers_lora(user / USER_FILES["diffusers_lora"], parts),
            "embedding": write_embedding(user / USER_FILES["embedding"], width),
            "ip_adapter": write_ip_adapter(user / USER_FILES["ip_adapter"], parts)}
