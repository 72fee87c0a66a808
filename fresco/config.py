"""Render settings: every key of the published YAML configs plus ours, loaded from YAML and overridden by CLI flags;
unknown keys and bad values are errors that name the key. Each of RenderConfig's own keys is one `knob()` field
(fresco.knobs: flag, help, type, choices, range, UI group, fingerprint), and the render holds two settings groups
declared the same way: the FRESCO knobs (`FrescoSettings`, fresco.settings) and the patch propagation's
(`PatchParams`, fresco.patch_params). The YAML keys, the `fresco render` flags, the web UI's widgets, the fingerprint's
key set and docs/options.md are derived from those fields, not listed anywhere else."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

from . import addon_specs, patch_params
from . import settings as settings_mod
from .constants import (CONTROL_TYPES, DEFAULT_PROPAGATION, DTYPES, FLOW_ESTIMATORS, MAX_BATCH, MAX_FRAMES,
                        MAX_SIDE, PROPAGATION_METHODS, PUBLISHED_VAE, VIDEO_SUFFIXES, check_output_name,
                        check_output_root)
from .knobs import Range, check_kind, check_value, is_knob, knob, shown, value_type, yaml_key
from .patch_params import PatchParams
from .prompts import parse_extra_prompts, published_pair
from .settings import FrescoSettings


@dataclass(init=False)
class RenderConfig:
    """One render. Published keys keep their names (file_path, save_path, sd_path, mininterv, ...). The FRESCO knobs
    (published num_inference_steps, num_warmup_steps, end_opt_step, seed, cond_scale, use_freeu and ours) live in
    `settings`, the patch propagation's in `patch`; they may be passed as keywords (`RenderConfig(prompt=..., seed=3,
    patch_em_iters=2)`: FRESCO knobs by name, patch knobs by YAML key) and read as attributes (`cfg.seed`,
    `cfg.patch_em_iters`), both routed to the group."""
    # --- published keys ---
    file_path: Optional[str] = knob(None, "input video file or folder of images", cli=False,  # the CLI's VIDEO
                                    key_aliases=("input",))
    save_path: Optional[str] = knob(None, "output folder (default out/<video name>)", flag="--out",
                                    flag_aliases=("-o",), key_aliases=("output_dir",), fingerprint=False)
    prompt: Optional[str] = knob(None, "the prompt", group="Prompt")
    sd_path: str = knob("runwayml/stable-diffusion-v1-5", "diffusers SD1.5 id or local path, or 'tiny-random' "
                        "(offline)", flag="--model", key_aliases=("model",), group="Model")
    mininterv: int = knob(10, "min keyframe gap s_min", flag="--s-min", flag_aliases=("--mininterv",),
                          key_aliases=("s_min",), range=(1, None))
    maxinterv: int = knob(30, "max keyframe gap s_max", flag="--s-max", flag_aliases=("--maxinterv",),
                          key_aliases=("s_max",), range=(1, None))
    use_controlnet: bool = knob(True, "condition on a ControlNet", no_flag="--no-controlnet", group="Model")
    controlnet_type: str = knob("canny", "the ControlNet's condition; the CLI flag also takes several ControlNets "
                                         "with their scales, 'hed:0.7,depth:0.5' (see controlnets)",
                                flag="--controlnet", choices=CONTROL_TYPES, group="Model", cli_any=True)
    batch_size: int = knob(8, "keyframes per batch N (2 anchors + new keyframes)", range=(3, MAX_BATCH),
                           group="Schedule")
    gmflow_path: Optional[str] = knob(None, "GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth): flow 'gmflow'")
    sod_path: Optional[str] = knob(None, "EGNet checkpoint for the background mask (--saliency)")
    use_salinecy: bool = knob(False, "background smoothing from EGNet saliency (YAML: use_salinecy, the published "
                                     "spelling; needs --sod-path)", flag="--saliency")
    # published keys of tools this package replaces: accepted so the shipped configs load, reported as unused
    run_ebsynth: bool = knob(False, "the published Ebsynth switch (no effect: see `propagation`)", cli=False,
                             fingerprint=False)
    max_process: int = knob(4, "the published Ebsynth process count (no effect)", cli=False, fingerprint=False)
    # --- the published script's and web UI's settings (defaults: the published values) ---
    added_prompt: Optional[str] = knob(None, "appended to the prompt (default: the published one for the model)")
    negative_prompt: Optional[str] = knob(None, "the negative prompt (default: the published one for the model)",
                                          group="Prompt")
    extra_prompts: Optional[Union[dict, str]] = knob({}, "per-keyframe additions to the prompt: a mapping frame -> "
                                                         "text (CLI: 'FRAME:TEXT;FRAME:TEXT')")
    vae: str = knob(PUBLISHED_VAE, "VAE id or folder (default the published one when available locally, else the "
                                   "model's own); 'own': the model's own")
    annotator_path: Optional[str] = knob(None, "folder with the lllyasviel/Annotators weights for HED/depth "
                                               "(default: the Hugging Face cache)")
    max_frames: Optional[int] = knob(None, "only the first N frames of the input", range=(2, MAX_FRAMES))
    # --- models users bring (fresco.models.addons; the files are checked before the model loads) ---
    model_config: Optional[str] = knob(None, "diffusers SD1.5 folder (or cached id) with the configs of a "
                                             "single-file --model (default: SD1.5's from the Hugging Face cache)",
                                       group="Model")
    loras: Optional[Union[list, str]] = knob([], "a LoRA 'FILE[:WEIGHT]' (kohya or diffusers .safetensors, weight "
                                                 "in [-10, 10], default 1); repeatable (YAML: a list, or items "
                                                 "separated by ';')",
                                             flag="--lora", type=str, repeat=True, group="Model")
    fuse_lora: bool = knob(False, "merge the LoRAs into the weights once (faster steps; same output within "
                                  "rounding)", group="Model")
    embeddings: Optional[Union[list, str]] = knob([], "a textual-inversion embedding 'FILE[:TOKEN]', used where "
                                                      "TOKEN (default: the file name) appears in the prompt or "
                                                      "negative prompt; repeatable", flag="--embedding", type=str,
                                                  repeat=True, group="Model")
    ip_adapter: Optional[str] = knob(None, "an IP-Adapter SD1.5 file (its image_encoder/ beside it)", group="Model")
    ip_image: Optional[str] = knob(None, "the IP-Adapter's style image", group="Model")
    ip_scale: float = knob(1.0, "the IP-Adapter's strength", range=(0, 10), group="Model")
    controlnets: Optional[Union[str, list]] = knob(None, "several ControlNets 'hed:0.7,depth:0.5', each item a "
                                                         "control type or a ControlNet id/folder (v1.0 or v1.1) with "
                                                         "its scale; replaces controlnet_type/cond_scale when set "
                                                         "(CLI: --controlnet LIST)", type=str, cli=True,
                                                   flag="--controlnets", group="Model")
    # --- ours ---
    size: Optional[str] = knob(None, "processing size WxH (multiples of 64); default: from --short-side",
                               group="Frames")
    short_side: int = knob(512, "short side before rounding to 64", range=(64, MAX_SIDE), group="Frames")
    fps: Optional[float] = knob(None, "frame rate for a folder of images (default 30)", range=Range(0, 1000, True),
                                group="Frames")
    flow: Optional[str] = knob(None, "optical flow of the batches and the propagation (default: gmflow when "
                                     "--gmflow-path is given, else dis: OpenCV DIS)", choices=FLOW_ESTIMATORS,
                               group="Run")
    raft_path: Optional[str] = knob(None, "torchvision RAFT-large weights (default: the torch hub cache)")
    propagation: str = knob(DEFAULT_PROPAGATION, "non-keyframes: auto (patch and nlmeans mixed per pixel, more "
                                                 "weight on the one that rebuilds the frame's source better), patch "
                                                 "(guided patch synthesis from both keys, Ebsynth-style), nlmeans "
                                                 "(per pixel the mean of the keys' pixels near the flow's guess whose "
                                                 "source matches the frame) or flow (flow-warp blend of the two keys)",
                            choices=PROPAGATION_METHODS, group=patch_params.GROUP, fingerprint=False)
    deflicker: float = knob(0.0, "non-keyframes: mix each with its neighbours carried along the flow, weighted by how "
                                 "well the flow holds there (0: off; 1: a neighbour where the flow holds weighs as "
                                 "much as the frame itself): steadier, a little blurrier", range=(0, 8),
                            group=patch_params.GROUP, fingerprint=False)
    device: str = knob("auto", "auto, cpu, cuda, cuda:1, ...", group="Run", fingerprint=False)
    dtype: str = knob("auto", "weights' dtype (auto: float16 on CUDA, else float32)", choices=DTYPES, group="Model")
    output: str = knob("video.mp4", "output name inside the folder: a .mp4/.mov/.mkv or a folder name for PNG "
                                    "frames", group="Output", fingerprint=False)
    crf: int = knob(18, "H.264 quality (0: lossless, 51: worst)", range=(0, 51), group="Output", fingerprint=False)
    resume: bool = knob(True, "resume from the finished batches in the output folder (--no-resume: start over)",
                        group="Output", fingerprint=False)
    overwrite: bool = knob(False, "replace a render of other settings in the output folder, and files at the paths "
                                  "the render writes that it did not write itself (the folder's other files are "
                                  "kept)", group="Output", fingerprint=False)
    strict: bool = knob(False, "refuse a damaged input (fewer frames decode than its header promises) instead of "
                               "warning", fingerprint=False)
    force: bool = knob(False, "render even when the memory estimate exceeds the free host/GPU memory",
                       fingerprint=False)
    score: bool = knob(False, "score the finished render against the input (fresco score: warp error, flicker, "
                              "CLIP when cached) into score.json and score.png in the output folder", group="Output",
                       fingerprint=False)
    extra: dict = field(default_factory=dict, repr=False)
    settings: FrescoSettings = field(default_factory=FrescoSettings)
    patch: PatchParams = field(default_factory=PatchParams)

    def __init__(self, settings: Optional[FrescoSettings] = None, patch: Optional[PatchParams] = None,
                 **keys: Any):
        own = {f.name: f for f in fields(self) if f.name not in GROUPS}
        grouped = group_fields()
        bad = [k for k in keys if k not in own and k not in grouped]
        if bad:
            raise TypeError(f"RenderConfig: unknown key {bad[0]!r}")
        for name, f in own.items():
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            setattr(self, name, keys[name] if name in keys else default)
        base = settings if settings is not None else settings_mod.FrescoSettings()
        self.settings = base.replace(**{grouped[k][1].name: v for k, v in keys.items()
                                        if k in grouped and grouped[k][0] == "settings"})
        changes = {grouped[k][1].name: v for k, v in keys.items() if k in grouped and grouped[k][0] == "patch"}
        self.patch = dataclasses.replace(patch if patch is not None else PatchParams(), **changes)

    def __getattr__(self, name: str) -> Any:
        # only called for names that are not attributes: the knobs of the groups, read through to the group
        if name not in GROUPS and all(g in self.__dict__ for g in GROUPS):
            group, f = group_fields().get(name, (None, None))
            if group is not None:
                return getattr(getattr(self, group), f.name)
        raise AttributeError(f"'RenderConfig' object has no attribute {name!r}")

    def replace(self, **changes: Any) -> "RenderConfig":
        """A copy with `changes` (own keys or the groups' knobs) applied."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in GROUPS}
        return RenderConfig(settings=self.settings, patch=self.patch, **{**own, **changes})

    # keys replaced by our own machinery, with what happens instead
    UNUSED = {
        "run_ebsynth": "non-keyframes are always propagated, by the `propagation` key: auto (the default, per pixel "
                       "patch or flow), patch (Ebsynth's guided patch synthesis as an op) or flow (flow-warp blend)",
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
            raise ValueError(f"size: expected 'WxH' like '512x512', got {shown(self.size)}") from None
        if w < 64 or h < 64 or w % 64 or h % 64:
            raise ValueError(f"size: both sides must be multiples of 64 and >= 64 (the UNet downsamples the 1/8 "
                             f"latent 3 times), got {w}x{h}")
        if max(w, h) > MAX_SIDE:
            raise ValueError(f"size: each side at most {MAX_SIDE} (the H.264 encoder's limit), got {w}x{h}")
        return w, h

    def validate(self) -> "RenderConfig":
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{key}: {msg}, got {shown(getattr(self, key))}")

        for f in own_fields():  # the groups' knobs are checked by their own classes
            check_type(f.name, getattr(self, f.name))
        need(self.max_frames is None or (isinstance(self.max_frames, int) and not isinstance(self.max_frames, bool)
                                         and self.max_frames >= 2), "max_frames", "an integer >= 2 (or unset)")
        for f in own_fields():
            check_value(f.name, f, getattr(self, f.name))  # range, finiteness, choices (the field's metadata)

        need(bool(self.file_path), "file_path", "the input video (or folder of images) is required")
        need(bool(self.save_path), "save_path", "the output folder is required")
        need(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", "a non-empty prompt is required")
        if self.mininterv > self.maxinterv:
            raise ValueError(f"mininterv/maxinterv: s_min ({self.mininterv}) must be <= s_max ({self.maxinterv})")
        need(self.flow_name != "gmflow" or bool(self.gmflow_path), "gmflow_path",
             "flow 'gmflow' needs the GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth)")
        need(not self.use_salinecy or bool(self.sod_path), "sod_path",
             "use_salinecy needs the EGNet checkpoint (or turn saliency off: --no-saliency)")
        for key, used in (("gmflow_path", self.flow_name == "gmflow"), ("raft_path", self.flow_name == "raft"),
                          ("sod_path", self.use_salinecy)):
            need(not used or getattr(self, key) is None or Path(getattr(self, key)).is_file(), key,
                 f"no such checkpoint file (a relative path is read from the working directory, {Path.cwd()})")
        check_output_name(self.output)
        if self.save_path:
            check_output_root(self.save_path)
        need(self.output.lower().endswith(VIDEO_SUFFIXES) or "." not in Path(self.output).name,
             "output", "a video name (.mp4/.mov/.mkv) or a folder name for PNG frames")
        for key in ("added_prompt", "negative_prompt", "annotator_path"):
            need(getattr(self, key) is None or isinstance(getattr(self, key), str), key, "must be a string")
        need(isinstance(self.vae, str) and self.vae != "", "vae", "a VAE id or folder, or 'own'")
        self.check_addons()
        self.extra_prompts = parse_extra_prompts(self.extra_prompts)
        self.frame_size()
        return self

    def check_addons(self) -> None:
        """The syntax of the user-model keys (the files are checked before the model loads: fresco.video.render)."""
        for key, parse in (("loras", addon_specs.parse_lora), ("embeddings", addon_specs.parse_embedding)):
            items = getattr(self, key)
            if items is None or isinstance(items, str):
                items = [i.strip() for i in (items or "").replace("\n", ";").split(";") if i.strip()]
                setattr(self, key, items)
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{key}: expected a list of strings, got {shown(items)}")
            for item in items:
                parse(item, key)
        if self.controlnets is not None:
            addon_specs.parse_controlnets(self.controlnets)
        if (self.ip_adapter is not None) != (self.ip_image is not None):
            raise ValueError("ip_adapter/ip_image: an IP-Adapter needs a style image and the reverse; got "
                             f"ip_adapter={self.ip_adapter!r}, ip_image={self.ip_image!r}")
        if self.model_config is not None and not addon_specs.is_single_file(self.sd_path):
            raise ValueError(f"model_config: only for a single-file sd_path (.safetensors/.ckpt), got sd_path "
                             f"{self.sd_path!r}")

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
        """Every key and its value, the groups' knobs flattened in (as in the YAML)."""
        own = {f.name: getattr(self, f.name) for f in own_fields()}
        return {**own, **self.settings.to_dict(), **self.patch.to_dict()}


# RenderConfig's settings groups (attributes holding a dataclass of knobs)
GROUPS = ("settings", "patch")


def knob_classes() -> tuple[tuple[type, str], ...]:
    """The classes whose knob fields make a render's settings, with their section titles; looked up at call time,
    so that a subclass installed in a class's place (a test's new knob) is seen by every front end."""
    return ((RenderConfig, "render"), (settings_mod.FrescoSettings, "FRESCO settings"),
            (PatchParams, "patch propagation"))


def group_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Keyword -> (group attribute, field) of the knobs RenderConfig holds in its groups: the FrescoSettings fields
    by name (the current class, looked up at call time), the PatchParams fields by their YAML key (patch_...)."""
    out = {f.name: ("settings", f) for f in settings_mod.settings_fields()}
    out.update({yaml_key(f): ("patch", f) for f in fields(PatchParams)})
    return out


def own_fields(cls: type = None) -> list[dataclasses.Field]:
    """RenderConfig's own knob fields (not the groups, not `extra`)."""
    return [f for f in fields(cls or RenderConfig) if is_knob(f)]


def all_knobs() -> list[tuple[str, str, dataclasses.Field, Any]]:
    """(keyword, group title, field, type hint) of every render knob, in the order of the CLI's --help, the web UI
    and docs/options.md: RenderConfig's own, then FrescoSettings's (the current class), then PatchParams's. The
    keyword is what RenderConfig(**...) and `merge` take: the field name, a PatchParams knob's YAML key."""
    out = []
    for cls, title in knob_classes():
        hints = get_type_hints(cls)
        out += [(yaml_key(f) if cls is PatchParams else f.name, title, f, hints[f.name])
                for f in fields(cls) if is_knob(f)]
    return out


def _settings_keys() -> dict[str, str]:
    """YAML key -> FrescoSettings field name."""
    return {yaml_key(f): f.name for f in settings_mod.settings_fields()}


def known_keys() -> list[str]:
    return [f.name for f in own_fields()] + list(_settings_keys()) + [yaml_key(f) for f in fields(PatchParams)]


def fingerprint_keys() -> list[str]:
    """The keys whose values decide the keyframes (metadata fingerprint=True): a render of other values of these
    does not resume an output folder."""
    fs = own_fields() + settings_mod.settings_fields() + list(fields(PatchParams))
    return [yaml_key(f) for f in fs if f.metadata.get("fingerprint", True)]


def _accepted(key: str) -> tuple[tuple[type, ...], bool]:
    """(the accepted types of RenderConfig's own `key`, whether null is accepted), from its annotations."""
    hint = get_type_hints(RenderConfig)[key]
    args = get_args(hint) if get_origin(hint) is Union else (hint,)
    return tuple(a for a in args if a is not type(None)), type(None) in args


def check_type(key: str, value: Any) -> None:
    """One-line error naming `key` and what it accepts when `value` has the wrong type (an int is a number; a
    bool is neither an int nor a number)."""
    types, nullable = _accepted(key)
    check_kind(key, value, types, nullable)


def aliases() -> dict[str, str]:
    """Other YAML keys accepted for RenderConfig's own keys (metadata key_aliases: our names for published keys,
    e.g. model -> sd_path): alias -> key."""
    return {a: f.name for f in own_fields() for a in f.metadata["key_aliases"]}


def _coerce(key: str, value: Any) -> Any:
    grouped = group_fields()
    f = grouped[key][1] if key in grouped else next(f for f in own_fields() if f.name == key)
    is_bool = value_type(f, get_type_hints(RenderConfig).get(key) if key not in grouped else None) is bool
    if is_bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {shown(value)}")
    return value


def from_mapping(data: dict, source: str = "config") -> RenderConfig:
    """RenderConfig from a dict of published or our keys; an unknown key raises an error listing the known ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    known = set(known_keys())
    to_field = _settings_keys()
    alias = aliases()
    grouped = group_fields()
    values = {}
    for key, value in data.items():
        name = alias.get(key, key)
        if name not in known:
            raise ValueError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known | set(alias)))}")
        name = to_field.get(name, name)
        values[name] = _coerce(name, value)
        if name not in grouped:  # the groups check their own knobs
            check_type(name, values[name])
    return RenderConfig(**values)


EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$")


def _strict_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently, so a
    second `prompt:` further down would override the first without a word, while an unknown key is an error)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    # YAML 1.2 floats: PyYAML follows YAML 1.1, where a float needs a dot, so `lr: 1e-2` was the string '1e-2' and
    # then refused as "expected a number"; an exponent without a dot is a float here, as in YAML 1.2 and Python
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))
    return StrictLoader


def load_yaml(path: str | Path) -> dict:
    import yaml
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config: '{path}' is a folder, not a YAML file")
    if path.exists() and not path.is_file():
        raise ValueError(f"config: '{path}' is not a regular file (a device, a pipe or a socket), not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config: '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
        except UnicodeDecodeError:
            raise ValueError(f"config: '{path}' is not UTF-8 text (a YAML file is expected)") from None
        except RecursionError:
            raise ValueError(f"config: '{path}' nests its values too deeply to be a config") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"config: '{path}'{where}: not valid YAML: {problem}") from None
    return {} if data is None else data


def merge(base: RenderConfig, overrides: dict) -> RenderConfig:
    """base with every non-None override applied (CLI flags over the YAML)."""
    own = {f.name for f in own_fields()}
    bad = [k for k in overrides if k not in own and k not in group_fields()]
    if bad:
        raise ValueError(f"overrides: unknown keys {bad}")
    return base.replace(**{k: _coerce(k, v) for k, v in overrides.items() if v is not None})
