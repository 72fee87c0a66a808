"""PatchParams: the knobs of the `propagation: patch` method (fresco.video.patch_propagation), one settings group
that a render holds (`RenderConfig.patch`) and that the CLI (`--patch-...`), the YAML (`patch_...` keys) and the web
UI ("Propagation") reach through the field metadata (fresco.knobs). None of them enters a render's fingerprint: the
propagation runs after the keyframes, so a render that changes them resumes from the stylised keys.

Why each default (benchmarks/propagation_quality.py, keys every 10 and 30 frames; on the 61-frame 128² procedural
clips, the rows in benchmarks/RESULTS.md, "Patch propagation", unless a bullet names the real clips and its section;
the row that chose a value is named with it):
- `em_iters` 3, `pm_iters` 1 differ from the op's defaults (2, 2) because the op's defaults are for a field that
  starts at random, and here every field starts at the chained optical flow (`init_nnf`), so the search only refines
  an answer that is already close: the op's (2, 2, 8) scored within 0.04 dB of (3, 1, 4) at 2.4x the time per frame
  (RESULTS.md, "em/pm/radius"); the third round gives a little more sharpness at interval 10 (0.938 against 0.929
  for em 2, the row "em 2, pm 1, radius 4"). `search_radius` is 8 since the real-clip sweep below.
- the guide weights `w_edge` 32 (with `vote_edge_weight` 1.0 and `warp_margin` 0.4): the row "edge guide ×32, vote
  edge weight 1.0, margin 0.4 (default, c672884)"; ×8 / ×12 / ×20 gave less sharpness at interval 10.
- `vote_pixel_sigma` 20 and the 3x3 `fuse_window`: the row "σ = 20, keys chosen by the rebuilt source's 3x3 error";
  σ = 30 / 50 were the rows above it.
- `warp_candidate` on, bicubic: the row "the same without the warp candidate" (worst frame −2.1 dB without it).
- `fuse_soften` 3: on the real clips (256 px, both styles, intervals 10 and 30; RESULTS.md, "Real footage", the
  rows "patch, fuse_soften 1 / 3 / 5") the softened choice doubled patch synthesis's mean margin over the flow blend
  (+0.32 to +0.65 dB) at sharpness 0.929 (from 0.978); on the procedural clips it had given +0.14 dB at sharpness
  0.918 / 0.906 (from 0.938 / 0.929, the row "default + fuse_soften=3"), still inside 0.9-1.1. 5 adds 0.04 dB for
  less sharpness. `poisson` off: the row "default + poisson=True" traded sharpness for nothing.
- `temporal_guide` "previous" (Ebsynth's temporal guide): on the real clips (256 px, 20 cases, DIS `fine`; RESULTS.md,
  "Stop 32") `auto` gained +0.04 dB on average over "key" (+0.07 at interval 30, never below), at the same sharpness
  and 1% less warp error.
- `w_colour` 24, `w_position` 0, `style_weight` 0, `search_radius` 8 and `w_temporal` 4: the real-clip sweep of
  RESULTS.md, "Stop 33" (256 px, 20 cases, one knob at a time, then together). The first patch propagation's values
  (6, 2, 1, 4, 2; b1e4600) had come from the procedural clips and no row had tuned them on real footage. Matching
  mostly on the frame's colours and edges near the flow's guess, without the EM coherence term or the position
  guide, gave `auto` +0.67 dB over the flow blend against +0.58 (sharpness 0.828 against 0.813, worst case −0.09
  against −0.17) but 9% more warp error at `w_temporal` 2. `w_temporal` 4 keeps the old ratio of temporal to colour
  weight nearer and the mean warp error within 4% of before, for +0.64 dB; 0 gives +0.73 dB at 28% more warp error.
- `patch_size` 5, `levels` 4 and `uniformity` 0 are the first patch propagation's values, and `vote_sharpness` 0.5
  that of the error-weighted vote (d2a5932). On the real clips (old knobs) patch size 3 / 7 gave +0.005 / −0.03 dB
  in `auto`."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .knobs import check_kind, check_value, knob, yaml_key

GROUP = "Propagation"
MAX_WEIGHT = 128  # fresco_kernels.patch_synthesis.MAX_WEIGHT: integer guide weights up to this
ODD_WINDOWS = tuple(range(1, 16, 2))  # box windows centred on the pixel


def _p(default: Any, help: str, key: str, **kw) -> Any:
    """A PatchParams knob: YAML key `key` (patch_...), the flag of that key, web UI group "Propagation", no effect on
    the keyframes (not in the fingerprint)."""
    return knob(default, help, key=key, flag="--" + key.replace("_", "-"), group=GROUP, fingerprint=False, **kw)


@dataclass(frozen=True)
class PatchParams:
    """Knobs of the patch propagation (integer guide weights of the op's squared patch distance); validated on
    construction (a bad value raises an error naming its YAML key)."""
    patch_size: int = _p(5, "patch side of the patch synthesis (3, 5, 7 or 9)", choices=(3, 5, 7, 9),
                         key="patch_size")
    levels: int = _p(4, "pyramid levels at most", range=(1, 12), key="patch_levels")
    em_iters: int = _p(3, "voting rounds per level", range=(1, 64), key="patch_em_iters")
    pm_iters: int = _p(1, "PatchMatch passes per voting round", range=(1, 64), key="patch_pm_iters")
    search_radius: int = _p(8, "first random-search radius of a pass (halved down to 1)", range=(0, 1 << 14),
                            key="patch_search_radius")
    w_colour: int = _p(24, "guide weight per RGB channel of the source frames", range=(0, MAX_WEIGHT),
                       key="patch_w_colour")
    w_edge: int = _p(32, "guide weight of the frames' edge strength (keeps the style's lines on the frame's edges)",
                     range=(0, MAX_WEIGHT), key="patch_w_edge")
    w_position: int = _p(0, "guide weight per coordinate channel, carried along the chained flow",
                         range=(0, MAX_WEIGHT), key="patch_w_position")
    w_temporal: int = _p(4, "guide weight per channel of the temporal guide (`patch_temporal_guide`)",
                         range=(0, MAX_WEIGHT), key="patch_w_temporal")
    temporal_guide: str = _p("previous", "the temporal guide: 'previous' (each direction's output for the frame one "
                                         "step nearer its key, carried one step along the flow, as Ebsynth) or "
                                         "'key' (the key's stylised frame carried along the chained flow)",
                             choices=("previous", "key"), key="patch_temporal_guide")
    style_weight: int = _p(0, "EM coherence weight of the synthesised style", range=(0, MAX_WEIGHT),
                           key="patch_style_weight")
    uniformity: int = _p(0, "penalty per other target patch already using a source patch (0: off)",
                         range=(0, 2048), key="patch_uniformity")
    vote_sharpness: float = _p(0.5, "error-weighted vote: weight exp(-err / (s * mean err)) per patch; 0: plain "
                                    "vote", range=(0, 100), key="patch_vote_sharpness")
    vote_pixel_sigma: float = _p(20.0, "and exp(-|key source at the voted pixel - frame|^2 / sigma) per vote; 0: "
                                       "off", range=(0, 1e6), key="patch_vote_pixel_sigma")
    vote_edge_weight: float = _p(1.0, "that pixel check (and the rebuild error) also on the edge guide, this weight",
                                 range=(0, 1e3), key="patch_vote_edge_weight")
    warp_candidate: bool = _p(True, "per pixel, the key warped along the chained flow where its colour error is "
                                    "lower", key="patch_warp_candidate")
    warp_bicubic: bool = _p(True, "that warp bicubic (sharper) rather than bilinear", key="patch_warp_bicubic")
    warp_margin: float = _p(0.4, "take the warp where its patch colour error <= margin x the synthesis's",
                            range=(0, 10), key="patch_warp_margin")
    fuse_window: int = _p(3, "the two keys are chosen per pixel by the colour error of their rebuilt source, "
                             "box-averaged over this window (1: per pixel)", choices=ODD_WINDOWS,
                         key="patch_fuse_window")
    fuse_soften: int = _p(3, "that choice softened over this window, then the histogram-preserving blend (1: hard)",
                          choices=ODD_WINDOWS,
                          key="patch_fuse_soften")
    poisson: bool = _p(False, "gradient-domain (Poisson) fusion of the two directions", key="patch_poisson")
    seed: int = _p(0, "seed of the PatchMatch random search", range=(0, 2**32 - 1), key="patch_seed")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            check_kind(yaml_key(f), v, [type(f.default)], exc=TypeError)
            if type(v) is not type(f.default):  # a numpy scalar, or an int for a float: the op takes Python's
                object.__setattr__(self, f.name, type(f.default)(v))
            check_value(yaml_key(f), f, v)

    def to_dict(self) -> dict[str, Any]:
        """YAML key -> value."""
        return {yaml_key(f): getattr(self, f.name) for f in fields(self)}
