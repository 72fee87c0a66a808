"""The settings form of the web UI, derived from the render settings dataclass: one `FieldSpec` per setting (its
widget kind, choices, group, all from the field's knob metadata, fresco.knobs), and the conversions between the
form's values, `RenderConfig` and the published YAML. No Gradio here, so the mapping is unit-tested without a
browser; a setting added to the dataclass appears in the form (in its metadata's group, else "More") without UI
edits."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from .. import config as cfgmod
from ..config import RenderConfig
from ..patch_params import PatchParams
from ..prompts import format_extra_prompts

# The groups of the settings panel in page order (a field's group is its knob metadata `group`; settings without
# one go to "More"). Keys with their own widgets (the input, output folder and keyframe intervals) and the published
# keys that have no effect here are not in the settings panel; a loaded YAML's values for them are kept and saved
# back.
GROUP_ORDER = ("Prompt", "Model", "FRESCO constraints", "Schedule", "Optimisation", "FreeU", "Run", "Frames",
               "Output", "Propagation", "More")
OWN_WIDGETS = ("file_path", "save_path", "mininterv", "maxinterv")
NOT_SETTINGS = ("extra",)
LABELS = {"sd_path": "model (diffusers id, local folder, .safetensors/.ckpt file or tiny-random)",
          "cond_scale": "ControlNet scale",
          "use_controlnet": "ControlNet", "controlnet_type": "ControlNet type", "use_freeu": "FreeU",
          "num_inference_steps": "steps", "num_warmup_steps": "SDEdit warm-up steps",
          "end_opt_step": "optimise until step", "opt_iters": "Adam iterations per step",
          "batch_size": "keyframes per batch", "size": "processing size WxH (empty: from short side)",
          "fps": "fps (image folders only; empty: 30)", "crf": "H.264 quality (crf)",
          "controlnets": "ControlNets 'hed:0.7,depth:0.5' (replaces the type above)",
          "loras": "LoRA files 'FILE:WEIGHT; FILE:WEIGHT'", "embeddings": "embeddings 'FILE:TOKEN; ...'",
          "ip_adapter": "IP-Adapter file", "ip_image": "style image (IP-Adapter)",
          "model_config": "configs folder of a single-file model"}


@dataclass(frozen=True)
class FieldSpec:
    """One form widget: `name` is the settings attribute, `key` its YAML key; kind is bool, choice, int, float,
    ints (a comma-separated list) or text; `optional` means an empty widget stands for None; `help` is shown
    under the widget."""
    name: str
    key: str
    label: str
    kind: str
    default: Any
    group: str
    choices: tuple[str, ...] = ()
    optional: bool = False
    help: str = ""


def _kind(tp: Any, meta_type: Any = None) -> tuple[str, bool]:
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    if typing.get_origin(base) in (tuple, list):
        return "ints", optional
    base = meta_type or base
    for t, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "text")):
        if base is t:
            return kind, optional
    return "text", True


def _specs(cls: type, skip: set[str], by_key: bool = False) -> list[FieldSpec]:
    """FieldSpecs of a dataclass's fields, recursing into a dataclass-typed field (RenderConfig's settings groups);
    by_key: name the specs by their YAML key (the keyword RenderConfig takes for PatchParams's knobs)."""
    hints = typing.get_type_hints(cls)
    out: list[FieldSpec] = []
    for f in fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _specs(hints[f.name], skip, by_key=hints[f.name] is PatchParams)
            continue
        meta = f.metadata or {}
        if meta.get("cli") is False:  # a knob the renderer cannot use (no flag either); kept through YAML
            continue
        kind, optional = _kind(hints[f.name], meta.get("type"))
        choices = tuple(meta.get("choices") or ())
        if choices:
            kind = "choice"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        key = meta.get("key") or f.name
        name = key if by_key else f.name
        group = meta.get("group") or "More"
        out.append(FieldSpec(name, key, LABELS.get(name, name.replace("_", " ")), kind, default,
                             group if group in GROUP_ORDER else "More", choices, optional or default is None,
                             meta.get("help", "")))
    return out


def settings_fields(cls: Optional[type] = None) -> list[FieldSpec]:
    """The form's fields in group order (within a group, declaration order): every setting except OWN_WIDGETS and
    the published keys that have no effect (`cls.UNUSED`); the knobs of the held settings groups are included with
    their help and choices, except those without a render flag (metadata cli=False), which the renderer does not
    use."""
    cls = cls or cfgmod.RenderConfig  # looked up at call time, like the CLI and the YAML loader
    skip = set(OWN_WIDGETS) | set(NOT_SETTINGS) | set(getattr(cls, "UNUSED", {}))
    return sorted(_specs(cls, skip), key=lambda s: GROUP_ORDER.index(s.group))


def _value(spec: FieldSpec, v: Any) -> Any:
    """A widget's value as the settings value: '' / None -> None for optional fields, whole floats -> int,
    '0, 1, 2' -> [0, 1, 2]."""
    if isinstance(v, str) and v.strip() == "" and (spec.optional or spec.kind != "text"):
        return None if spec.optional else spec.default
    if v is None:
        return None if spec.optional else spec.default
    if spec.kind == "ints" and isinstance(v, str):
        try:
            return [int(t) for t in v.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"{spec.key}: expected integers separated by commas, got {v!r}") from None
    if spec.kind in ("int", "float") and isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ValueError(f"{spec.key}: expected a number, got {v!r}") from None
    if spec.kind == "int" and isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{spec.key}: must be an integer, got {v!r}")
        return int(v)
    if spec.kind == "float" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def build_config(values: dict[str, Any], keep: Optional[dict[str, Any]] = None, validate: bool = True
                 ) -> RenderConfig:
    """RenderConfig from the form (`values` by settings name, widgets' raw values) over `keep` (a loaded YAML's
    keys without widgets); validated unless `validate` is False, so a bad value raises the CLI's one-line message
    naming the key."""
    specs = {s.name: s for s in settings_fields()}
    data = dict(keep or {})
    for name, v in values.items():
        if name in specs:
            data[specs[name].key] = _value(specs[name], v)
        else:
            data[name] = v
    cfg = cfgmod.from_mapping(data, "settings")
    return cfg.validate() if validate else cfg


def form_values(cfg: RenderConfig) -> dict[str, Any]:
    """The widgets' values for `cfg` by settings name (None as an empty box, lists as '0, 1, 2')."""
    out = {}
    for s in settings_fields():
        v = getattr(cfg, s.name)
        if s.kind == "ints" and v is not None:
            v = ", ".join(str(i) for i in v)
        elif s.name == "extra_prompts":
            v = format_extra_prompts(v)
        elif s.name in ("loras", "embeddings") and isinstance(v, list):
            v = "; ".join(v)
        out[s.name] = "" if v is None and s.kind in ("text", "ints") else v
    return out


def hidden_values(cfg: RenderConfig) -> dict[str, Any]:
    """The keys of `cfg` with no widget in the settings panel that differ from the defaults (kept across a
    load/save of the YAML)."""
    shown = {s.key for s in settings_fields()} | set(OWN_WIDGETS)
    default = cfgmod.RenderConfig().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in shown and v != default[k]}


def load_settings(path: str | Path) -> RenderConfig:
    """The settings of a published-style YAML file (aliases and published keys accepted; unknown keys are errors)."""
    return cfgmod.from_mapping(cfgmod.load_yaml(path), str(path))


def save_settings(cfg: RenderConfig, path: str | Path) -> Path:
    """Write `cfg` as YAML with the published key names (file_path, save_path, sd_path, mininterv, ...); keys
    left at None are omitted so the file loads back to the same settings."""
    import yaml
    path = Path(path)
    data = {k: v for k, v in cfg.to_dict().items() if v is not None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
