"""Render settings: every key of the published YAML configs plus ours, loaded from YAML and overridden by CLI flags;
unknown keys and bad values are errors that name the key. The FRESCO knobs are one `FrescoSettings` (fresco.settings)
held by the config: its fields' YAML keys are derived from that class, not listed here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from .video.outdir import check_output_name, check_output_root

from . import settings as settings_mod
from .models.flow import FLOW_ESTIMATORS
from .video.propagate import PROPAGATION_METHODS
from .models.sd import CONTROL_TYPES, DTYPES as TORCH_DTYPES, PUBLISHED_VAE
from .pipeline.prompts import parse_extra_prompts, published_pair
from .settings import FrescoSettings

DTYPES = ("auto",) + tuple(TORCH_DTYPES)


@dataclass(init=False)
class RenderConfig:
    """One render. Published keys keep their names (file_path, save_path, sd_path, mininterv, ...). The FRESCO knobs
    (published num_inference_steps, num_warmup_steps, end_opt_step, seed, cond_scale, use_freeu and ours) live in
    `settings`; they may be passed as keywords (`RenderConfig(prompt=..., seed=3)`) and read as attributes
    (`cfg.seed`), both routed to `cfg.settings`."""
    # --- published keys ---
    file_path: Optional[str] = None
    save_path: Optional[str] = None
    prompt: Optional[str] = None
    sd_path: str = "runwayml/stable-diffusion-v1-5"
    mininterv: int = 10
    maxinterv: int = 30
    use_controlnet: bool = True
    controlnet_type: str = "canny"
    batch_size: int = 8
    gmflow_path: Optional[str] = None  # GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth): flow 'gmflow'
    sod_path: Optional[str] = None  # EGNet checkpoint for the background mask
    use_salinecy: bool = False  # (sic, the published spelling) saliency -> background smoothing
    # published keys of tools this package replaces: accepted so the shipped configs load, reported as unused
    run_ebsynth: bool = False
    max_process: int = 4
    # --- the published script's and web UI's settings (defaults: the published values) ---
    # None: the published pair for sd_path (fresco.pipeline.prompts: the "RAW photo" pair for realistic models)
    added_prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    # {frame index: text appended to that keyframe's prompt} (the published extra_prompts)
    # (or the CLI's 'FRAME:TEXT;FRAME:TEXT'; validate() turns it into the mapping)
    extra_prompts: Optional[Union[dict, str]] = field(default_factory=dict)
    # a separate VAE (id or folder); the published one is used when available locally; "own": the model's own
    vae: str = PUBLISHED_VAE
    # a folder with the annotator weights (lllyasviel/Annotators files); None: the Hugging Face cache
    annotator_path: Optional[str] = None
    # only the first max_frames frames of the input (web UI: "Number of frames"); None: all
    max_frames: Optional[int] = None
    # --- ours ---
    size: Optional[str] = None
    short_side: int = 512
    fps: Optional[float] = None
    flow: Optional[str] = None  # dis | raft | gmflow; default: gmflow when gmflow_path is set (as published), else dis
    raft_path: Optional[str] = None  # torchvision RAFT-large weights (default: the torch hub cache)
    propagation: str = "patch"  # non-keyframes: patch (guided patch synthesis) or flow (flow-warp blend)
    device: str = "auto"
    dtype: str = "auto"
    output: str = "video.mp4"
    crf: int = 18
    resume: bool = True
    overwrite: bool = False
    strict: bool = False
    force: bool = False
    extra: dict = field(default_factory=dict, repr=False)
    settings: FrescoSettings = field(default_factory=FrescoSettings)

    def __init__(self, settings: Optional[FrescoSettings] = None, **keys: Any):
        own = {f.name: f for f in fields(self) if f.name != "settings"}
        knobs = {f.name for f in settings_mod.settings_fields()}
        bad = [k for k in keys if k not in own and k not in knobs]
        if bad:
            raise TypeError(f"RenderConfig: unknown key {bad[0]!r}")
        for name, f in own.items():
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(self, name, keys[name] if name in keys else default)
        base = settings if settings is not None else settings_mod.FrescoSettings()
        self.settings = base.replace(**{k: v for k, v in keys.items() if k in knobs})

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not attributes: the FRESCO knobs, read through to the settings
        if name != "settings" and "settings" in self.__dict__ and name in {f.name for f in fields(self.settings)}:
            return getattr(self.settings, name)
        raise AttributeError(f"'RenderConfig' object has no attribute {name!r}")

    def replace(self, **changes: Any) -> "RenderConfig":
        """A copy with `changes` (own keys or FRESCO knobs) applied."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "settings"}
        return RenderConfig(settings=self.settings, **{**own, **changes})

    # keys replaced by our own machinery, with what happens instead
    UNUSED = {
        "run_ebsynth": "non-keyframes are always propagated, by the `propagation` key: patch (the default, Ebsynth's "
                       "guided patch synthesis as an op) or flow (flow-warp blend)",
        "max_process": "propagation runs in-process on the render device",
    }

    @property
    def model(self) -> str:
        return self.sd_path

    @property
    def flow_name(self) -> str:
        """The flow estimator used: `flow`, or by default 'gmflow' when gmflow_path is set (the published
        configs), else 'dis'."""
        return self.flow or ("gmflow" if self.gmflow_path else "dis")

    def prompt_pair(self) -> tuple[str, str]:
        """(added prompt, negative prompt): the keys when set, else the published pair for sd_path."""
        added, negative = published_pair(self.sd_path)
        return (added if self.added_prompt is None else self.added_prompt,
                negative if self.negative_prompt is None else self.negative_prompt)

    def frame_size(self) -> Optional[tuple[int, int]]:
        """The explicit (W, H) from `size` ("WxH"), or None for the automatic size."""
        if self.size is None:
            return None
        try:
            w, h = (int(v) for v in str(self.size).lower().split("x"))
        except ValueError:
            raise ValueError(f"size: expected 'WxH' like '512x512', got {self.size!r}") from None
        if w < 64 or h < 64 or w % 64 or h % 64:
            raise ValueError(f"size: both sides must be multiples of 64 and >= 64 (the UNet downsamples the 1/8 "
                             f"latent 3 times), got {w}x{h}")
        if max(w, h) > 16384:
            raise ValueError(f"size: each side at most 16384 (the H.264 encoder's limit), got {w}x{h}")
        return w, h

    def validate(self) -> "RenderConfig":
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{key}: {msg}, got {getattr(self, key)!r}")

        for key in _own_keys():  # the FRESCO knobs are checked by FrescoSettings itself
            check_type(key, getattr(self, key))

        need(bool(self.file_path), "file_path", "the input video (or folder of images) is required")
        need(bool(self.save_path), "save_path", "the output folder is required")
        need(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", "a non-empty prompt is required")
        need(self.mininterv >= 1, "mininterv", "must be >= 1")
        need(self.maxinterv >= 1, "maxinterv", "must be >= 1")
        if self.mininterv > self.maxinterv:
            raise ValueError(f"mininterv/maxinterv: s_min ({self.mininterv}) must be <= s_max ({self.maxinterv})")
        need(self.batch_size >= 3, "batch_size", "must be >= 3 (2 anchors + 1 new keyframe)")
        need(self.short_side >= 64, "short_side", "must be >= 64")
        need(self.controlnet_type in CONTROL_TYPES, "controlnet_type", f"one of {CONTROL_TYPES}")
        need(self.flow is None or self.flow in FLOW_ESTIMATORS, "flow", f"one of {FLOW_ESTIMATORS}")
        need(self.flow_name != "gmflow" or bool(self.gmflow_path), "gmflow_path",
             "flow 'gmflow' needs the GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth)")
        need(not self.use_salinecy or bool(self.sod_path), "sod_path",
             "use_salinecy needs the EGNet checkpoint (or turn saliency off: --no-saliency)")
        for key, used in (("gmflow_path", self.flow_name == "gmflow"), ("raft_path", self.flow_name == "raft"),
                          ("sod_path", self.use_salinecy)):
            need(not used or getattr(self, key) is None or Path(getattr(self, key)).is_file(), key,
                 f"no such checkpoint file (a relative path is read from the working directory, {Path.cwd()})")
        need(self.propagation in PROPAGATION_METHODS, "propagation", f"one of {PROPAGATION_METHODS}")
        need(self.dtype in DTYPES, "dtype", f"one of {DTYPES}")
        need(self.fps is None or float(self.fps) > 0, "fps", "must be > 0")
        check_output_name(self.output)
        if self.save_path:
            check_output_root(self.save_path)
        need(self.output.lower().endswith((".mp4", ".mov", ".mkv")) or "." not in Path(self.output).name,
             "output", "a video name (.mp4/.mov/.mkv) or a folder name for PNG frames")
        need(self.max_frames is None or (isinstance(self.max_frames, int) and not isinstance(self.max_frames, bool)
                                         and self.max_frames >= 2), "max_frames", "an integer >= 2 (or unset)")
        for key in ("added_prompt", "negative_prompt", "annotator_path"):
            need(getattr(self, key) is None or isinstance(getattr(self, key), str), key, "must be a string")
        need(isinstance(self.vae, str) and self.vae != "", "vae", "a VAE id or folder, or 'own'")
        self.extra_prompts = parse_extra_prompts(self.extra_prompts)
        self.frame_size()
        return self

    def unused_notes(self) -> list[str]:
        """One line per published key that is set but has no effect here, saying what happens instead."""
        default = RenderConfig()
        notes = [f"{k}={getattr(self, k)!r} has no effect: {why}" for k, why in self.UNUSED.items()
                 if getattr(self, k) != getattr(default, k)]
        for key, used, why in (("gmflow_path", self.flow_name == "gmflow", f"flow is {self.flow_name!r}"),
                               ("raft_path", self.flow_name == "raft", f"flow is {self.flow_name!r}"),
                               ("sod_path", self.use_salinecy, "use_salinecy is off")):
            if getattr(self, key) is not None and not used:
                notes.append(f"{key}={getattr(self, key)!r} has no effect: {why}")
        return notes

    def to_dict(self) -> dict:
        """Every key and its value, the FRESCO knobs flattened in (as in the YAML)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "settings")}
        return {**own, **self.settings.to_dict()}


def _settings_keys() -> dict[str, str]:
    """YAML key -> FrescoSettings field name."""
    return {settings_mod.yaml_key(f): f.name for f in settings_mod.settings_fields()}


def _own_keys() -> list[str]:
    return [f.name for f in fields(RenderConfig) if f.name not in ("extra", "settings")]


def known_keys() -> list[str]:
    return _own_keys() + list(_settings_keys())


_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _accepted(key: str) -> tuple[tuple[type, ...], bool]:
    """(the accepted types of RenderConfig's own `key`, whether null is accepted), from its annotations."""
    hint = get_type_hints(RenderConfig)[key]
    args = get_args(hint) if get_origin(hint) is Union else (hint,)
    return tuple(a for a in args if a is not type(None)), type(None) in args


def check_type(key: str, value: Any) -> None:
    """One-line error naming `key` and what it accepts when `value` has the wrong type (an int is a number; a
    bool is neither an int nor a number)."""
    types, nullable = _accepted(key)
    if value is None:
        ok = nullable
    elif isinstance(value, bool):
        ok = bool in types
    else:
        ok = isinstance(value, types) or (float in types and isinstance(value, int))
    if not ok:
        what = " or ".join(_NAMES.get(t, t.__name__) for t in types) + (" or null" if nullable else "")
        raise ValueError(f"{key}: expected {what}, got {value!r}")


# our names for published keys (the YAML may use either)
ALIASES = {"model": "sd_path", "input": "file_path", "output_dir": "save_path", "s_min": "mininterv",
           "s_max": "maxinterv"}


def _coerce(key: str, value: Any) -> Any:
    knob = {f.name: f for f in settings_mod.settings_fields()}.get(key)
    is_bool = (knob.metadata["type"] or type(knob.default)) is bool if knob is not None else \
        isinstance(getattr(RenderConfig(), key), bool)
    if is_bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    return value


def from_mapping(data: dict, source: str = "config") -> RenderConfig:
    """RenderConfig from a dict of published or our keys; an unknown key raises an error listing the known ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    known = set(known_keys())
    to_field = _settings_keys()
    values = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise ValueError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known | set(ALIASES)))}")
        name = to_field.get(name, name)
        values[name] = _coerce(name, value)
        if name not in to_field.values():
            check_type(name, values[name])
    return RenderConfig(**values)


def load_yaml(path: str | Path) -> dict:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: '{path}' does not exist")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"config: '{path}'{where}: not valid YAML: {problem}") from None
    return {} if data is None else data


def merge(base: RenderConfig, overrides: dict) -> RenderConfig:
    """base with every non-None override applied (CLI flags over the YAML)."""
    own = {f.name for f in fields(RenderConfig)} - {"extra", "settings"}
    knobs = {f.name for f in settings_mod.settings_fields()}
    bad = [k for k in overrides if k not in own and k not in knobs]
    if bad:
        raise ValueError(f"overrides: unknown keys {bad}")
    return base.replace(**{k: _coerce(k, v) for k, v in overrides.items() if v is not None})
