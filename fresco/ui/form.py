"""The settings form of the web UI, derived from the render settings dataclass: one `FieldSpec` per setting (its
widget kind, choices, group), and the conversions between the form's values, `RenderConfig` and the published YAML.
No Gradio here, so the mapping is unit-tested without a browser; a setting added to the dataclass appears in the
form (in the "More" group unless `GROUPS` places it) without UI edits."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from .. import config as cfgmod
from ..config import RenderConfig
from ..pipeline.prompts import format_extra_prompts

# Which group each setting is shown in, in order; settings not listed go to "More". Keys with their own widgets
# (the input, output folder and keyframe intervals) and the published keys that have no effect here are not in
# the settings panel; a loaded YAML's values for them are kept and saved back.
GROUPS: dict[str, tuple[str, ...]] = {
    "Prompt": ("prompt", "negative_prompt", "guidance_scale"),
    "Model": ("sd_path", "use_controlnet", "controlnet_type", "cond_scale", "dtype"),
    "FRESCO constraints": ("cross_frame_attention", "spatial_attention", "spatial_attention_steps",
                           "temporal_attention", "temporal_attention_until", "feature_optimization",
                           "temporal_loss", "spatial_loss", "background_smoothing"),
    "Schedule": ("num_inference_steps", "num_warmup_steps", "strength", "end_opt_step", "bg_smoothing_steps",
                 "repeat_noise", "batch_size"),
    "Optimisation": ("opt_iters", "opt_lr", "spatial_weight", "loss_reduction", "adain_eps", "opt_layers"),
    "FreeU": ("use_freeu",),
    "Run": ("seed", "backend", "device", "flow", "vae_chunk", "threads"),
    "Frames": ("size", "short_side", "fps"),
    "Output": ("output", "crf", "resume", "overwrite"),
}
OWN_WIDGETS = ("file_path", "save_path", "mininterv", "maxinterv")
NOT_SETTINGS = ("extra",)
# choices of RenderConfig's own keys (the FRESCO knobs carry theirs in their field metadata)
CHOICES: dict[str, tuple[str, ...]] = {
    "controlnet_type": cfgmod.CONTROL_TYPES,
    "dtype": cfgmod.DTYPES,
    "flow": cfgmod.FLOW_ESTIMATORS,
}
LABELS = {"sd_path": "model (diffusers id, local folder or tiny-random)", "cond_scale": "ControlNet scale",
          "use_controlnet": "ControlNet", "controlnet_type": "ControlNet type", "use_freeu": "FreeU",
          "num_inference_steps": "steps", "num_warmup_steps": "SDEdit warm-up steps",
          "end_opt_step": "optimise until step", "opt_iters": "Adam iterations per step",
          "batch_size": "keyframes per batch", "size": "processing size WxH (empty: from short side)",
          "fps": "fps (image folders only; empty: 30)", "crf": "H.264 quality (crf)"}


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


def _specs(cls: type, where: dict[str, str], skip: set[str]) -> list[FieldSpec]:
    """FieldSpecs of a dataclass's fields, recursing into a dataclass-typed field (RenderConfig's FRESCO knobs)."""
    hints = typing.get_type_hints(cls)
    out: list[FieldSpec] = []
    for f in fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += _specs(hints[f.name], where, skip)
            continue
        meta = f.metadata or {}
        if meta.get("cli") is False:  # a knob the renderer cannot use (no flag either); kept through YAML
            continue
        kind, optional = _kind(hints[f.name], meta.get("type"))
        choices = tuple(meta.get("choices") or CHOICES.get(f.name, ()))
        if choices:
            kind = "choice"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(FieldSpec(f.name, meta.get("key") or f.name, LABELS.get(f.name, f.name.replace("_", " ")),
                             kind, default, where.get(f.name, "More"), choices, optional or default is None,
                             meta.get("help", "")))
    return out


def settings_fields(cls: type = RenderConfig) -> list[FieldSpec]:
    """The form's fields in group order: every setting except OWN_WIDGETS and the published keys that have no
    effect (`cls.UNUSED`); the FRESCO knobs of a held settings dataclass are included with their help and
    choices, except those without a render flag (metadata cli=False), which the renderer does not use."""
    where = {name: g for g, names in GROUPS.items() for name in names}
    skip = set(OWN_WIDGETS) | set(NOT_SETTINGS) | set(getattr(cls, "UNUSED", {}))
    listed = [name for names in GROUPS.values() for name in names]
    order = list(GROUPS) + ["More"]
    return sorted(_specs(cls, where, skip),
                  key=lambda s: (order.index(s.group), listed.index(s.name) if s.name in where else 0))


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
        if v != int(v):
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
        out[s.name] = "" if v is None and s.kind in ("text", "ints") else v
    return out


def hidden_values(cfg: RenderConfig) -> dict[str, Any]:
    """The keys of `cfg` with no widget in the settings panel that differ from the defaults (kept across a
    load/save of the YAML)."""
    shown = {s.key for s in settings_fields()} | set(OWN_WIDGETS)
    default = RenderConfig().to_dict()
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
