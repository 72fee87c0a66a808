"""FrescoSettings: the one validated set of FRESCO knobs (schedule, guidance, constraints, optimisation, backend).

It is built once and handed whole to the one-batch pipeline, its attention controller and its decoder hooks; the
renderer's `RenderConfig` holds one. Each field's metadata (see `knob`) carries its help text, its CLI flag and its
YAML key, and `fresco.config` / `fresco.cli` derive the YAML keys and the `fresco render` flags from these fields, so
adding a knob means adding its field here and using it, nothing else. The algorithm these knobs steer is described
in docs/algorithm.md."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from fresco_kernels import BACKENDS
from fresco_kernels.gram_loss import REDUCTIONS

# the published schedule, as fractions of a 20-step run: optimisation while the step index < 15, background
# smoothing of x0 at steps 16 and 17, SDEdit strength 0.75 (5 warm-up steps skipped)
PUBLISHED_STEPS = 20
PUBLISHED_END_OPT_STEP = 15
PUBLISHED_BG_STEPS = (16, 17)
PUBLISHED_STRENGTH = 0.75


def knob(default: Any, help: str, *, flag: Optional[str] = None, key: Optional[str] = None,
         type: Optional[type] = None, choices: Optional[Sequence] = None, cli: bool = True) -> Any:
    """A FrescoSettings field whose metadata says how users set it.

    help: one line for `fresco render --help` and the docs; flag: the CLI flag (default `--<name-with-dashes>`;
    booleans also get `--no-...`); key: the YAML key (default the field name); type: the value type when the
    default is None or a sequence (then each item's type); choices: the accepted values; cli: False keeps the
    knob out of the CLI (still a YAML key and a keyword of FrescoPipeline.__call__)."""
    if isinstance(default, (list, tuple)):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, key=key, type=type,
                                                            choices=tuple(choices) if choices else None, cli=cli))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class FrescoSettings:
    """FRESCO's knobs for one keyframe batch; validated on construction (a bad value raises an error naming the
    field). Step indices are absolute (0 = the first of `num_inference_steps`); None means "the published value
    scaled to num_inference_steps" (see `schedule`)."""
    # --- schedule ---
    num_inference_steps: int = knob(20, "DDPM steps of the schedule", flag="--steps")
    num_warmup_steps: Optional[int] = knob(None, "steps skipped by SDEdit (default from strength; negative: pure "
                                           "noise, as published)", type=int, flag="--warmup-steps")
    strength: Optional[float] = knob(None, "SDEdit strength in (0, 1] (default 0.75); or give num_warmup_steps",
                                     type=float)
    end_opt_step: Optional[int] = knob(None, "feature optimisation runs at steps < this (default 0.75 * steps)",
                                       type=int)
    bg_smoothing_steps: Optional[Tuple[int, ...]] = knob(None, "steps whose x0 is background-smoothed (default "
                                                         "the published 16, 17 scaled)", type=int)
    guidance_scale: float = knob(7.5, "classifier-free guidance scale")
    cond_scale: float = knob(1.0, "ControlNet conditioning scale")
    seed: int = knob(0, "random seed of the noise and the VAE posterior samples")
    repeat_noise: bool = knob(True, "one noise sample for every frame (as published)")
    use_freeu: bool = knob(False, "the published FreeU on the UNet (fresco.pipeline.freeu)", flag="--freeu")
    freeu_b1: float = knob(1.2, "FreeU backbone factor of the widest decoder inputs (1280 channels in SD1.5)")
    freeu_b2: float = knob(1.5, "FreeU backbone factor of the half-width decoder inputs (640 in SD1.5)")
    freeu_s1: float = knob(1.0, "FreeU skip factor (lowest frequencies) with b1")
    freeu_s2: float = knob(1.0, "FreeU skip factor (lowest frequencies) with b2")
    canny_low: int = knob(50, "Canny low threshold of the canny ControlNet's condition maps")
    canny_high: int = knob(100, "Canny high threshold")
    # --- constraints ---
    cross_frame_attention: bool = knob(True, "shared K/V: frame 0 plus occluded tokens")
    spatial_attention: bool = knob(True, "spatial-guided attention from the reference pass")
    spatial_attention_steps: int = knob(1, "run steps with spatial-guided attention")
    temporal_attention: bool = knob(True, "attention along flow trajectories")
    temporal_attention_until: int = knob(350, "temporal attention while the timestep t >= this")
    feature_optimization: bool = knob(True, "Adam optimisation of decoder features")
    temporal_loss: bool = knob(True, "flow-warp loss in the optimisation")
    spatial_loss: bool = knob(True, "Gram (spatial correlation) loss in the optimisation")
    background_smoothing: bool = knob(True, "smooth the background (needs a background map: --saliency in "
                                            "renders)")
    # --- optimisation ---
    opt_iters: int = knob(20, "Adam iterations per optimised step")
    opt_lr: float = knob(0.2, "Adam learning rate")
    spatial_weight: float = knob(100.0, "weight of the Gram loss")
    loss_reduction: str = knob("l1", "reduction of both losses", choices=REDUCTIONS)
    adain_eps: float = knob(1.0, "epsilon of the AdaIN after the optimisation")
    opt_layers: Tuple[int, ...] = knob((0, 1, 2, 3), "decoder blocks (unet.up_blocks indices) optimised", type=int)
    # --- execution ---
    backend: Optional[str] = knob(None, "fresco_kernels ops ('fused') or their PyTorch references ('reference'); "
                                  "default: the global switch (fresco_kernels.use_backend / FRESCO_BACKEND)",
                                  type=str, choices=BACKENDS)
    vae_chunk: int = knob(1, "frames per VAE encode/decode call")
    compile: bool = knob(False, "torch.compile the UNet's blocks and the ControlNet with FRESCO's processors in "
                                "place (inductor; the first batch at a size compiles, later ones reuse it)")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self._validate()

    def _validate(self) -> None:
        def need(cond: bool, name: str, msg: str, exc=ValueError) -> None:
            if not cond:
                raise exc(f"{name}: {msg}, got {getattr(self, name)!r}")

        for f in fields(self):
            v = getattr(self, f.name)
            kind = f.metadata["type"] or type(f.default)
            if v is None and f.default is None:
                continue
            if isinstance(f.default, tuple) or (f.default is None and f.name in ("bg_smoothing_steps",)):
                need(isinstance(v, tuple) and all(_is_int(i) for i in v), f.name, "a list of integers", TypeError)
            elif kind is bool:
                need(isinstance(v, (bool, np.bool_)), f.name, "expected a boolean", TypeError)
            elif kind is int:
                need(_is_int(v), f.name, f"expected an int, got {type(v).__name__}", TypeError)
            elif kind is float:
                need(_is_number(v), f.name, "expected a number", TypeError)
            choices = f.metadata["choices"]
            if choices is not None:
                need(v in choices, f.name, f"one of {choices}")
        need(self.num_inference_steps >= 1, "num_inference_steps", "must be >= 1")
        need(self.vae_chunk >= 1, "vae_chunk", "must be >= 1")
        need(self.opt_iters >= 0, "opt_iters", "must be >= 0")
        need(self.spatial_attention_steps >= 0, "spatial_attention_steps", "must be >= 0")
        if self.strength is not None and self.num_warmup_steps is not None:
            raise ValueError("strength and num_warmup_steps: pass one of them")
        need(self.strength is None or 0 < self.strength <= 1, "strength", "must be in (0, 1]")
        need(self.num_warmup_steps is None or self.num_warmup_steps < self.num_inference_steps,
             "num_warmup_steps", f"must be < num_inference_steps={self.num_inference_steps} (negative: pure noise, "
                                 f"as published)")
        need(1 <= self.canny_low <= 255, "canny_low", "must be in [1, 255]")
        need(1 <= self.canny_high <= 255, "canny_high", "must be in [1, 255]")
        need(self.end_opt_step is None or self.end_opt_step >= 0, "end_opt_step",
             "must be >= 0 (steps before it are optimised)")
        need(all(0 <= i < 4 for i in self.opt_layers), "opt_layers", "indices of the 4 decoder blocks (0..3)")

    def replace(self, **changes) -> "FrescoSettings":
        """A copy with `changes` applied (validated); an unknown name is a TypeError naming it."""
        names = {f.name for f in fields(self)}
        bad = [k for k in changes if k not in names]
        if bad:
            raise TypeError(f"{bad[0]}: not a FRESCO setting; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def pure_noise(self) -> bool:
        """The published pure-noise mode (num_warmup_steps < 0): every step runs, from the seed's noise alone."""
        return self.num_warmup_steps is not None and self.num_warmup_steps < 0

    def freeu(self) -> Dict[str, float]:
        """The FreeU factors {b1, b2, s1, s2}."""
        return dict(b1=self.freeu_b1, b2=self.freeu_b2, s1=self.freeu_s1, s2=self.freeu_s2)

    @property
    def warmup_steps(self) -> int:
        """The steps SDEdit skips: num_warmup_steps (0 in pure-noise mode), else from strength (default 0.75) as
        diffusers' img2img does."""
        if self.num_warmup_steps is not None:
            return max(int(self.num_warmup_steps), 0)
        strength = PUBLISHED_STRENGTH if self.strength is None else self.strength
        n = self.num_inference_steps
        return n - min(int(n * strength), n)

    def schedule(self) -> Dict:
        """The schedule actually used: num_inference_steps, num_warmup_steps, end_opt_step, bg_smoothing_steps."""
        return scaled_schedule(self.num_inference_steps, self.warmup_steps, self.end_opt_step,
                               self.bg_smoothing_steps)

    def to_dict(self) -> Dict[str, Any]:
        """Field name -> value (tuples as lists), e.g. for a render's fingerprint or a YAML dump."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def scaled_schedule(num_inference_steps: int, num_warmup_steps: int, end_opt_step: Optional[int],
                    bg_steps: Optional[Sequence[int]]) -> Dict:
    """The published 20-step boundaries scaled to `num_inference_steps` (explicit values win)."""
    scale = num_inference_steps / PUBLISHED_STEPS
    if end_opt_step is None:
        end_opt_step = int(round(PUBLISHED_END_OPT_STEP * scale))
    if bg_steps is None:
        bg_steps = sorted({min(num_inference_steps - 1, int(round(s * scale))) for s in PUBLISHED_BG_STEPS})
    return dict(num_inference_steps=num_inference_steps, num_warmup_steps=num_warmup_steps,
                end_opt_step=end_opt_step, bg_smoothing_steps=list(bg_steps))


def settings_fields(cls: Optional[type] = None) -> list:
    """The knob fields of `cls` (default: the current `FrescoSettings`, looked up at call time so that a
    subclass installed in its place is seen by the CLI and YAML loader too)."""
    return list(fields(cls or globals()["FrescoSettings"]))


def yaml_key(f: dataclasses.Field) -> str:
    """The YAML key of a settings field."""
    return f.metadata.get("key") or f.name


def cli_flag(f: dataclasses.Field) -> str:
    """The CLI flag of a settings field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
