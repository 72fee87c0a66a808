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

# Which group each setting is shown in, in order; settings not listed go to "More". Keys with their own widgets
# (the input, output folder and keyframe intervals) and the published keys that have no effect here are not in
# the settings panel; a loaded YAML's values for them are kept and saved back.
GROUPS: dict[str, tuple[str, ...]] = {
    "Prompt": ("prompt", "negative_prompt", "guidance_scale"),
    "Model": ("sd_path", "use_controlnet", "controlnet_type", "cond_scale", "dtype"),
    "FRESCO constraints": (),
    "Schedule and optimisation": ("num_inference_steps", "num_warmup_steps", "end_opt_step", "opt_iters",
                                  "batch_size"),
    "FreeU": ("use_freeu",),
    "Run": ("seed", "backend", "device", "flow"),
    "Frames": ("size", "short_side", "fps"),
    "Output": ("output", "crf", "resume", "overwrite"),
}
OWN_WIDGETS = ("file_path", "save_path", "mininterv", "maxinterv")
CHOICES: dict[str, tuple[str, ...]] = {
    "controlnet_type": cfgmod.CONTROLNET_TYPES,
    "dtype": cfgmod.DTYPES,
    "flow": cfgmod.FLOWS,
    "backend": ("fused", "reference"),
}
LABELS = {"sd_path": "model (diffusers id, local folder or tiny-random)", "cond_scale": "ControlNet scale",
          "use_controlnet": "ControlNet", "controlnet_type": "ControlNet type", "use_freeu": "FreeU",
          "num_inference_steps": "steps", "num_warmup_steps": "SDEdit warm-up steps",
          "end_opt_step": "optimise until step", "opt_iters": "Adam iterations per step",
          "batch_size": "keyframes per batch", "size": "processing size WxH (empty: from short side)",
          "fps": "fps (image folders only; empty: 30)", "crf": "H.264 quality (crf)"}


@dataclass(frozen=True)
class FieldSpec:
    """One form widget: `name` is the settings key; kind is bool, choice, int, float, text; `optional` means an
    empty widget stands for None."""
    name: str
    label: str
    kind: str
    default: Any
    group: str
    choices: tuple[str, ...] = ()
    optional: bool = False


def _kind(tp: Any) -> tuple[str, bool]:
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    for t, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "text")):
        if base is t:
            return kind, optional
    return "text", True


def settings_fields(cls: type = RenderConfig) -> list[FieldSpec]:
    """The form's fields in group order: every dataclass field except OWN_WIDGETS, the published keys that have no
    effect (`cls.UNUSED`) and non-scalar ones."""
    hints = typing.get_type_hints(cls)
    unused = set(getattr(cls, "UNUSED", {}))
    where = {name: g for g, names in GROUPS.items() for name in names}
    out: list[FieldSpec] = []
    for f in fields(cls):
        if f.name in OWN_WIDGETS or f.name in unused or f.default is dataclasses.MISSING:
            continue
        kind, optional = _kind(hints[f.name])
        if f.name in CHOICES:
            kind = "choice"
        out.append(FieldSpec(f.name, LABELS.get(f.name, f.name.replace("_", " ")), kind, f.default,
                             where.get(f.name, "More"), CHOICES.get(f.name, ()), optional))
    listed = [name for names in GROUPS.values() for name in names]
    order = list(GROUPS) + ["More"]
    return sorted(out, key=lambda s: (order.index(s.group), listed.index(s.name) if s.name in where else 0))


def _value(spec: FieldSpec, v: Any) -> Any:
    """A widget's value as the settings value: '' / None -> None for optional fields, whole floats -> int."""
    if v is None or (isinstance(v, str) and v.strip() == "" and spec.kind != "text"):
        return None if spec.optional else spec.default
    if isinstance(v, str) and v.strip() == "" and spec.optional:
        return None
    if spec.kind in ("int", "float") and isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ValueError(f"{spec.name}: expected a number, got {v!r}") from None
    if spec.kind == "int" and isinstance(v, float):
        if v != int(v):
            raise ValueError(f"{spec.name}: must be an integer, got {v!r}")
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
        data[name] = _value(specs[name], v) if name in specs else v
    cfg = cfgmod.from_mapping(data, "settings")
    return cfg.validate() if validate else cfg


def form_values(cfg: RenderConfig) -> dict[str, Any]:
    """The widgets' values for `cfg` (None shown as an empty box)."""
    return {s.name: ("" if getattr(cfg, s.name) is None and s.kind == "text" else getattr(cfg, s.name))
            for s in settings_fields()}


def hidden_values(cfg: RenderConfig) -> dict[str, Any]:
    """The keys of `cfg` with no widget in the settings panel that differ from the defaults (kept across a
    load/save of the YAML)."""
    shown = {s.name for s in settings_fields()} | set(OWN_WIDGETS)
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
