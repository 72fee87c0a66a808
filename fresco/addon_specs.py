"""The specs of the models users bring, as the config reads them (pure Python, no torch: fresco.config validates
them without loading a stage): LoRA 'FILE[:WEIGHT]', embedding 'FILE[:TOKEN]', ControlNet lists
'hed:0.7,depth:0.5', single-file checkpoint names. fresco.models.addons loads what they name."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

# single-file checkpoint suffixes (`--model FILE`)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# diffusers repositories whose cached config describes SD1.5's architecture (`model_config` default), in order
SD15_CONFIG_REPOS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5")
# preprocessors that need no weights of their own beyond the annotators already used (HED, MiDaS)
PREPROCESSORS = ("canny", "hed", "depth", "softedge", "scribble")
# the ControlNet a preprocessor name selects when no id is given: v1.0 for the published three, v1.1 for the rest
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/sd-controlnet-canny",
    "hed": "lllyasviel/sd-controlnet-hed",
    "depth": "lllyasviel/sd-controlnet-depth",
    "softedge": "lllyasviel/control_v11p_sd15_softedge",
    "scribble": "lllyasviel/control_v11p_sd15_scribble",
}
# words in a ControlNet id/folder name -> its preprocessor (v1.0 `sd-controlnet-X`, v1.1 `control_v11*_sd15_X`)
_NAME_PREPROCESSOR = (("softedge", "softedge"), ("scribble", "scribble"), ("canny", "canny"), ("hed", "hed"),
                      ("depth", "depth"))


@dataclass(frozen=True)
class LoraSpec:
    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class EmbeddingSpec:
    path: str
    token: str


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet: `model` (hub id or folder), its `preprocessor` (PREPROCESSORS) and conditioning `scale` (None:
    the settings' cond_scale)."""
    model: str
    preprocessor: str
    scale: Optional[float] = None


# ------------------------------------------------------------------ parsing the user's specs
def _split_tail(spec: str) -> Tuple[str, Optional[str]]:
    """'PATH:TAIL' -> (PATH, TAIL) unless the whole spec is an existing path (paths may hold ':')."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    head, tail = spec.rsplit(":", 1)
    return head, tail


LORA_WEIGHT_MAX = 10.0  # as the ControlNet and IP-Adapter scales; LoRAs are made for weights around 1


def parse_lora(spec: str, key: str = "lora") -> LoraSpec:
    """'FILE' or 'FILE:WEIGHT' (weight in [-10, 10], default 1)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{key}: expected 'FILE' or 'FILE:WEIGHT', got {spec!r}")
    path, tail = _split_tail(spec)
    weight = 1.0
    if tail is not None:
        try:
            weight = float(tail)
        except ValueError:
            raise ValueError(f"{key}: expected 'FILE' or 'FILE:WEIGHT' with a number as WEIGHT, got {spec!r}") \
                from None
        if not abs(weight) <= LORA_WEIGHT_MAX:  # (NaN fails too) a huge weight turns every frame black
            raise ValueError(f"{key}: WEIGHT must be in [-{LORA_WEIGHT_MAX:g}, {LORA_WEIGHT_MAX:g}], got {spec!r}")
    return LoraSpec(path, weight)


def parse_embedding(spec: str, key: str = "embedding") -> EmbeddingSpec:
    """'FILE' (token: the file name without suffix, as A1111 does) or 'FILE:TOKEN'."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"{key}: expected 'FILE' or 'FILE:TOKEN', got {spec!r}")
    path, token = _split_tail(spec)
    token = token if token is not None else Path(path).stem
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{key}: TOKEN must be one word without spaces, got {spec!r}")
    return EmbeddingSpec(path, token)


def _preprocessor_of(name: str) -> Optional[str]:
    base = Path(name.rstrip("/")).name.lower()
    for word, pre in _NAME_PREPROCESSOR:
        if word in base:
            return pre
    return None


def parse_controlnets(spec, key: str = "controlnets") -> list:
    """'hed:0.7,depth:0.5' (or a list of such items) -> [ControlSpec]. An item is [PREPROCESSOR=]NAME[:SCALE]:
    NAME a preprocessor (its default ControlNet, DEFAULT_CONTROLNETS) or a ControlNet hub id / folder (v1.0
    `lllyasviel/sd-controlnet-*`, v1.1 `lllyasviel/control_v11p_sd15_*`); the preprocessor is read from the name
    unless given; SCALE defaults to the settings' cond_scale."""
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out = []
    for raw in items:
        item = str(raw).strip()
        if not item:
            raise ValueError(f"{key}: an empty item in {spec!r}; expected items like 'hed:0.7' or "
                             f"'softedge=lllyasviel/control_v11p_sd15_softedge:0.5'")
        pre = None
        if "=" in item:
            pre, item = (s.strip() for s in item.split("=", 1))
        name, tail = _split_tail(item)
        scale = None
        if tail is not None:
            try:
                scale = float(tail)
            except ValueError:
                raise ValueError(f"{key}: SCALE must be a number in {raw!r}") from None
            if not 0.0 <= scale <= 10.0:
                raise ValueError(f"{key}: SCALE must be in [0, 10], got {raw!r}")
        if name in PREPROCESSORS and pre is None:
            out.append(ControlSpec(DEFAULT_CONTROLNETS[name], name, scale))
            continue
        if name in PREPROCESSORS:  # 'softedge=hed': a preprocessor applied to another type's default model
            name = DEFAULT_CONTROLNETS[name]
        if not (os.path.isdir(name) or (name.count("/") == 1 and not name.startswith((".", "/")))):
            raise ValueError(f"{key}: {name!r} is neither one of {PREPROCESSORS}, an existing folder, nor a hub id "
                             f"('owner/name')")
        pre = pre or _preprocessor_of(name)
        if pre not in PREPROCESSORS:
            raise ValueError(f"{key}: cannot tell the preprocessor of {name!r}; write PREPROCESSOR={name} with one "
                             f"of {PREPROCESSORS}")
        out.append(ControlSpec(name, pre, scale))
    if not out:
        raise ValueError(f"{key}: no ControlNet in {spec!r}")
    return out


def is_single_file(model: str) -> bool:
    return isinstance(model, str) and model.lower().endswith(SINGLE_FILE_SUFFIXES)
