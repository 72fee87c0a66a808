"""FrescoSettings: the one validated set of FRESCO knobs (schedule, guidance, constraints, optimisation, backend).

It is built once and handed whole to the one-batch pipeline, its attention controller and its decoder hooks; the
renderer's `RenderConfig` holds one. Each field's metadata (`fresco.knobs.knob`) carries its help text, CLI flag,
YAML key, accepted range and web UI group, and the YAML keys, the `fresco render` flags, the web UI's widgets and
docs/options.md are derived from these fields, so adding a knob means adding its field here and using it, nothing
else. The algorithm these knobs steer is described
in docs/algorithm.md."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional, Sequence, Tuple

from fresco_kernels import BACKENDS
from fresco_kernels.gram_loss import REDUCTIONS

from .constants import MAX_STEPS, MAX_THREADS
from .knobs import Range, check_kind, check_value, is_kind, knob, shown

# the published schedule, as fractions of a 20-step run: optimisation while the step index < 15, background
# smoothing of x0 at steps 16 and 17, SDEdit strength 0.75 (5 warm-up steps skipped)
PUBLISHED_STEPS = 20
PUBLISHED_END_OPT_STEP = 15
PUBLISHED_BG_STEPS = (16, 17)
PUBLISHED_STRENGTH = 0.75
CONSTRAINTS = "FRESCO constraints"  # the web UI's group of the constraint switches


@dataclass(frozen=True)
class FrescoSettings:
    """FRESCO's knobs for one keyframe batch; validated on construction (a bad value raises an error naming the
    field). Step indices are absolute (0 = the first of `num_inference_steps`); None means "the published value
    scaled to num_inference_steps" (see `schedule`)."""
    # --- schedule ---
    num_inference_steps: int = knob(20, "DDPM steps of the schedule", flag="--steps", range=(1, MAX_STEPS),
                                    group="Schedule")
    num_warmup_steps: Optional[int] = knob(None, "steps skipped by SDEdit (default from strength; negative: pure "
                                           "noise, as published)", type=int, flag="--warmup-steps", group="Schedule")
    strength: Optional[float] = knob(None, "SDEdit strength in (0, 1] (default 0.75); or give num_warmup_steps",
                                     type=float, range=Range(0, 1, lo_open=True), group="Schedule")
    end_opt_step: Optional[int] = knob(None, "feature optimisation runs at steps < this (default 0.75 * steps)",
                                       type=int, range=(0, None), group="Schedule")
    bg_smoothing_steps: Optional[Tuple[int, ...]] = knob(None, "steps whose x0 is background-smoothed (default "
                                                         "the published 16, 17 scaled)", type=int, group="Schedule")
    guidance_scale: float = knob(7.5, "classifier-free guidance scale", range=(0, 100), group="Prompt")
    cond_scale: float = knob(1.0, "ControlNet conditioning scale", range=(0, 10), group="Model")
    seed: int = knob(0, "random seed of the noise and the VAE posterior samples", range=(0, 2**32 - 1), group="Run")
    repeat_noise: bool = knob(True, "one noise sample for every frame (as published)", group="Schedule")
    use_freeu: bool = knob(False, "the published FreeU on the UNet (fresco.pipeline.freeu)", flag="--freeu",
                           group="FreeU")
    freeu_b1: float = knob(1.2, "FreeU backbone factor of the widest decoder inputs (1280 channels in SD1.5)",
                           range=(0, 10))
    freeu_b2: float = knob(1.5, "FreeU backbone factor of the half-width decoder inputs (640 in SD1.5)",
                           range=(0, 10))
    freeu_s1: float = knob(1.0, "FreeU skip factor (lowest frequencies) with b1", range=(0, 10))
    freeu_s2: float = knob(1.0, "FreeU skip factor (lowest frequencies) with b2", range=(0, 10))
    canny_low: int = knob(50, "Canny low threshold of the canny ControlNet's condition maps", range=(1, 255))
    canny_high: int = knob(100, "Canny high threshold", range=(1, 255))
    # --- constraints ---
    cross_frame_attention: bool = knob(True, "shared K/V: frame 0 plus occluded tokens", group=CONSTRAINTS)
    spatial_attention: bool = knob(True, "spatial-guided attention from the reference pass", group=CONSTRAINTS)
    spatial_attention_steps: int = knob(1, "run steps with spatial-guided attention", range=(0, None),
                                        group=CONSTRAINTS)
    temporal_attention: bool = knob(True, "attention along flow trajectories", group=CONSTRAINTS)
    temporal_attention_until: int = knob(350, "temporal attention while the timestep t >= this", group=CONSTRAINTS)
    feature_optimization: bool = knob(True, "Adam optimisation of decoder features", group=CONSTRAINTS)
    temporal_loss: bool = knob(True, "flow-warp loss in the optimisation", group=CONSTRAINTS)
    spatial_loss: bool = knob(True, "Gram (spatial correlation) loss in the optimisation", group=CONSTRAINTS)
    background_smoothing: bool = knob(True, "smooth the background (needs a background map: --saliency in "
                                            "renders)", group=CONSTRAINTS)
    # --- optimisation ---
    opt_iters: int = knob(20, "Adam iterations per optimised step", range=(0, 1000), group="Optimisation")
    opt_lr: float = knob(0.2, "Adam learning rate", range=Range(0, 10, lo_open=True), group="Optimisation")
    spatial_weight: float = knob(100.0, "weight of the Gram loss", range=(0, 1e6), group="Optimisation")
    loss_reduction: str = knob("l1", "reduction of both losses", choices=REDUCTIONS, group="Optimisation")
    adain_eps: float = knob(1.0, "epsilon of the AdaIN after the optimisation (1.0 reproduces the published "
                                 "results; 1e-5 is the textbook value)", range=(0, 1e3), group="Optimisation")
    opt_layers: Tuple[int, ...] = knob((0, 1, 2, 3), "decoder blocks (unet.up_blocks indices) optimised", type=int,
                                       group="Optimisation")
    # --- execution ---
    backend: Optional[str] = knob(None, "fresco_kernels ops ('fused') or their PyTorch references ('reference'); "
                                  "default: the global switch (fresco_kernels.use_backend / FRESCO_BACKEND)",
                                  type=str, choices=BACKENDS, group="Run")
    vae_chunk: int = knob(1, "frames per VAE encode/decode call", range=(1, None), group="Run")
    threads: Optional[int] = knob(None, "intra-op CPU threads (torch, the C++ ops, OpenCV); the same render gives "
                                  "the same bytes at the same count (default: torch's, the core count; a resumed "
                                  "render keeps the count it started with)", type=int, range=(1, MAX_THREADS),
                                  group="Run", fingerprint=False)
    compile: bool = knob(False, "torch.compile the UNet's blocks and the ControlNet with FRESCO's processors in "
                                "place (inductor; the first batch at a size compiles, later ones reuse it)",
                         group="Run")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self._validate()

    def _validate(self) -> None:
        def need(cond: bool, name: str, msg: str, exc=ValueError) -> None:
            if not cond:
                raise exc(f"{name}: {msg}, got {shown(getattr(self, name))}")

        for f in fields(self):
            v = getattr(self, f.name)
            kind = f.metadata["type"] or type(f.default)
            if v is None and f.default is None:
                continue
            if isinstance(f.default, tuple) or (f.default is None and f.name in ("bg_smoothing_steps",)):
                need(isinstance(v, tuple) and all(is_kind(i, int) for i in v), f.name, "a list of integers", TypeError)
            elif kind in (bool, int, float):
                check_kind(f.name, v, [kind], exc=TypeError)
            check_value(f.name, f, v)  # range, finiteness, choices (the field's metadata)
        if self.strength is not None and self.num_warmup_steps is not None:
            raise ValueError("strength and num_warmup_steps: pass one of them")
        need(self.num_warmup_steps is None or self.num_warmup_steps < self.num_inference_steps,
             "num_warmup_steps", f"must be < num_inference_steps={self.num_inference_steps} (negative: pure noise, "
                                 f"as published)")
        if self.num_warmup_steps is None:  # from strength: int(steps x strength) steps run, and must be >= 1
            strength = PUBLISHED_STRENGTH if self.strength is None else self.strength
            need(self.warmup_steps < self.num_inference_steps,
                 "strength" if self.strength is not None else "num_inference_steps",
                 f"leaves no denoising step: num_inference_steps {self.num_inference_steps} x strength {strength:g} "
                 f"rounds down to 0 (need a product >= 1)")
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
