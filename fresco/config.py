"""Render settings: every key of the published YAML configs plus ours, loaded from YAML and overridden by CLI flags;
unknown keys and bad values are errors that name the key."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .freeu import PUBLISHED_FREEU
from .models import PUBLISHED_VAE
from .prompts import parse_extra_prompts, published_pair

CONTROLNET_TYPES = ("canny", "hed", "depth")
FLOWS = ("dis",)
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class RenderConfig:
    """One render. Published keys keep their names (file_path, save_path, sd_path, mininterv, ...)."""
    # --- published keys ---
    file_path: Optional[str] = None
    save_path: Optional[str] = None
    prompt: Optional[str] = None
    sd_path: str = "runwayml/stable-diffusion-v1-5"
    seed: int = 0
    mininterv: int = 10
    maxinterv: int = 30
    use_controlnet: bool = True
    controlnet_type: str = "canny"
    cond_scale: float = 1.0
    use_freeu: bool = False
    batch_size: int = 8
    num_inference_steps: int = 20
    num_warmup_steps: int = 5
    end_opt_step: int = 15
    # published keys of tools this package replaces: accepted so the shipped configs load, reported as unused
    run_ebsynth: bool = False
    max_process: int = 4
    gmflow_path: Optional[str] = None
    sod_path: Optional[str] = None
    use_salinecy: bool = False
    # --- the published script's and web UI's settings, as keys (defaults: the published values) ---
    # None: the published pair for sd_path (fresco.prompts: the "RAW photo" pair for realistic models)
    added_prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    # {frame index: text appended to that keyframe's prompt} (the published extra_prompts)
    extra_prompts: dict = field(default_factory=dict)
    # a separate VAE (id or folder); the published one is used when available locally; "own": the model's own
    vae: str = PUBLISHED_VAE
    # a folder with the annotator weights (lllyasviel/Annotators files); None: the Hugging Face cache
    annotator_path: Optional[str] = None
    canny_low: int = 50
    canny_high: int = 100
    freeu_b1: float = PUBLISHED_FREEU["b1"]
    freeu_b2: float = PUBLISHED_FREEU["b2"]
    freeu_s1: float = PUBLISHED_FREEU["s1"]
    freeu_s2: float = PUBLISHED_FREEU["s2"]
    # the FRESCO constraints (web UI: "Select the FRESCO constraints") and background smoothing
    cross_frame_attention: bool = True
    spatial_attention: bool = True
    temporal_attention: bool = True
    spatial_optimization: bool = True
    temporal_optimization: bool = True
    background_smoothing: bool = True
    # only the first max_frames frames of the input (web UI: "Number of frames"); None: all
    max_frames: Optional[int] = None
    # --- ours ---
    guidance_scale: float = 7.5
    size: Optional[str] = None
    short_side: int = 512
    fps: Optional[float] = None
    flow: str = "dis"
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "fused"
    opt_iters: int = 20
    output: str = "video.mp4"
    crf: int = 18
    resume: bool = True
    overwrite: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    # keys replaced by our own machinery, with what happens instead
    UNUSED = {
        "run_ebsynth": "non-keyframes are always propagated with flow warps (fresco.propagate), no Ebsynth",
        "max_process": "propagation runs in-process on the render device",
        "gmflow_path": "flow comes from the `flow` estimator (default OpenCV DIS)",
        "sod_path": "no saliency network: background smoothing needs a background map",
        "use_salinecy": "no saliency network: background smoothing needs a background map",
    }

    @property
    def model(self) -> str:
        return self.sd_path

    def prompt_pair(self) -> tuple[str, str]:
        """(added prompt, negative prompt): the keys when set, else the published pair for sd_path."""
        added, negative = published_pair(self.sd_path)
        return (added if self.added_prompt is None else self.added_prompt,
                negative if self.negative_prompt is None else self.negative_prompt)

    def freeu(self) -> dict:
        return dict(b1=self.freeu_b1, b2=self.freeu_b2, s1=self.freeu_s1, s2=self.freeu_s2)

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
        return w, h

    def validate(self) -> "RenderConfig":
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"{key}: {msg}, got {getattr(self, key)!r}")

        need(bool(self.file_path), "file_path", "the input video (or folder of images) is required")
        need(bool(self.save_path), "save_path", "the output folder is required")
        need(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt", "a non-empty prompt is required")
        for key in ("seed", "mininterv", "maxinterv", "batch_size", "num_inference_steps", "num_warmup_steps",
                    "end_opt_step", "short_side", "opt_iters", "crf", "max_process", "canny_low", "canny_high"):
            need(isinstance(getattr(self, key), int) and not isinstance(getattr(self, key), bool), key,
                 "must be an integer")
        need(self.mininterv >= 1, "mininterv", "must be >= 1")
        need(self.maxinterv >= 1, "maxinterv", "must be >= 1")
        if self.mininterv > self.maxinterv:
            raise ValueError(f"mininterv/maxinterv: s_min ({self.mininterv}) must be <= s_max ({self.maxinterv})")
        need(self.batch_size >= 3, "batch_size", "must be >= 3 (2 anchors + 1 new keyframe)")
        need(self.num_inference_steps >= 1, "num_inference_steps", "must be >= 1")
        need(self.num_warmup_steps < self.num_inference_steps, "num_warmup_steps",
             f"must be < num_inference_steps={self.num_inference_steps} (negative: pure noise, as published)")
        need(1 <= self.canny_low <= 255, "canny_low", "must be in [1, 255]")
        need(1 <= self.canny_high <= 255, "canny_high", "must be in [1, 255]")
        for key in ("freeu_b1", "freeu_b2", "freeu_s1", "freeu_s2", "cond_scale", "guidance_scale"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), key, "must be a number")
        for key in ("use_controlnet", "use_freeu", "cross_frame_attention", "spatial_attention",
                    "temporal_attention", "spatial_optimization", "temporal_optimization", "background_smoothing"):
            need(isinstance(getattr(self, key), bool), key, "must be true or false")
        need(self.max_frames is None or (isinstance(self.max_frames, int) and not isinstance(self.max_frames, bool)
                                         and self.max_frames >= 2), "max_frames", "an integer >= 2 (or unset)")
        for key in ("added_prompt", "negative_prompt", "annotator_path"):
            need(getattr(self, key) is None or isinstance(getattr(self, key), str), key, "must be a string")
        need(isinstance(self.vae, str) and self.vae != "", "vae", "a VAE id or folder, or 'own'")
        self.extra_prompts = parse_extra_prompts(self.extra_prompts)
        need(self.end_opt_step >= 0, "end_opt_step", "must be >= 0 (steps before it are optimised)")
        need(self.short_side >= 64, "short_side", "must be >= 64")
        need(self.opt_iters >= 0, "opt_iters", "must be >= 0")
        need(self.controlnet_type in CONTROLNET_TYPES, "controlnet_type", f"one of {CONTROLNET_TYPES}")
        need(self.flow in FLOWS, "flow", f"one of {FLOWS}")
        need(self.dtype in DTYPES, "dtype", f"one of {DTYPES}")
        need(self.backend in ("fused", "reference"), "backend", "one of ('fused', 'reference')")
        need(self.fps is None or float(self.fps) > 0, "fps", "must be > 0")
        need(self.output.lower().endswith((".mp4", ".mov", ".mkv")) or "." not in Path(self.output).name,
             "output", "a video name (.mp4/.mov/.mkv) or a folder name for PNG frames")
        self.frame_size()
        return self

    def unused_notes(self) -> list[str]:
        """One line per published key that is set but has no effect here, saying what happens instead."""
        default = RenderConfig()
        return [f"{k}={getattr(self, k)!r} has no effect: {why}" for k, why in self.UNUSED.items()
                if getattr(self, k) != getattr(default, k)]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}


def known_keys() -> list[str]:
    return [f.name for f in fields(RenderConfig) if f.name != "extra"]


# our names for published keys (the YAML may use either)
ALIASES = {"model": "sd_path", "input": "file_path", "output_dir": "save_path", "s_min": "mininterv",
           "s_max": "maxinterv"}


def _coerce(key: str, value: Any) -> Any:
    default = getattr(RenderConfig(), key)
    if isinstance(default, bool) and isinstance(value, str):
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
    values = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name not in known:
            raise ValueError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known | set(ALIASES)))}")
        values[name] = _coerce(name, value)
    return RenderConfig(**values)


def load_yaml(path: str | Path) -> dict:
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: '{path}' does not exist")
    with open(path) as f:
        data = yaml.safe_load(f)
    return {} if data is None else data


def merge(base: RenderConfig, overrides: dict) -> RenderConfig:
    """base with every non-None override applied (CLI flags over the YAML)."""
    known = set(known_keys())
    bad = [k for k in overrides if k not in known]
    if bad:
        raise ValueError(f"overrides: unknown keys {bad}")
    return dataclasses.replace(base, **{k: _coerce(k, v) for k, v in overrides.items() if v is not None})
