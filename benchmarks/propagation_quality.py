"""Propagation-quality benchmark (issue 13), no diffusion weights: procedural clips with known hard motion, a
deterministic per-frame "style" S (bilateral smoothing + colour quantisation + dark Canny edges); the propagation
methods see only the keyframes' S(frame) and are scored on every in-between frame against S(frame).

    python -m benchmarks.propagation_quality [--size 128] [--intervals 10 30]
                                             [--methods nearest flow patch nlmeans auto]
                                             [--seed 0] [--style flat|pencil] [--timing 512] [--out DIR]
    python -m benchmarks.propagation_quality --real .cache/real-clips [--frames 31] [--windows 2] ...
                                             [--flow dis|deepflow|tvl1] [--deflicker S] [--dense N]

--real DIR: real footage (`make real-clips`: Debian opencv-doc's Megamind, vtest, tree, box and cup), `--windows`
windows of `--frames` frames spread over each clip, resized so the long side is --size; the procedural clips follow
as a second table unless --clips is given empty (`--clips`).

Reports per clip, interval and method: mean PSNR (dB), sharpness (gradient energy / the target's), temporal
stability (fresco.score's warp error of the whole clip along the input's DIS flow, as a multiple of the input's
own floor; the per-frame target's in the row "target"), the worst frame's PSNR margin against the flow blend, and
seconds per in-between frame.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from fresco.constants import PROPAGATION_METHODS

CLIPS = ("crossing", "pan_thin", "zoom_occlude")
CLIP_FRAMES = 61  # keys 0, 30, 60 at interval 30; 0, 10, ..., 60 at interval 10


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """[h, w, 3] float 0..1 coloured multi-octave value noise with hard-edged blobs (regions for quantisation)."""
    out = np.zeros((h, w, 3), np.float32)
    amp = 1.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        small = rng.random((cells, cells, 3)).astype(np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= 0.55
    out = (out - out.min()) / (out.max() - out.min() + 1e-6)
    for _ in range(12):  # flat-coloured shapes: sharp edges, corners
        colour = rng.random(3) * 255
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(h // 24 + 2, h // 6 + 3))
        img = (out * 255).astype(np.uint8).copy()
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), s, colour.tolist(), -1)
        else:
            cv2.rectangle(img, (cx - s, cy - s // 2), (cx + s, cy + s // 2), colour.tolist(), -1)
        out = img.astype(np.float32) / 255
    return out


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w, 3] 0..1 fine stripes + checks (high-frequency texture that bilinear resampling blurs)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(4, 9))
    angle = float(rng.uniform(0, math.pi))
    v = 0.5 + 0.5 * np.sign(np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period))
    c1, c2 = rng.random(3), rng.random(3)
    return (v[..., None] * c1 + (1 - v[..., None]) * c2).astype(np.float32)


@dataclass
class Layer:
    texture: np.ndarray       # [h, w, 3] 0..1
    mask: np.ndarray          # [h, w] 0..1 alpha
    path: Callable[[int], tuple]  # frame -> (x, y, scale) of the layer's top-left corner in frame coordinates


def _paste(frame: np.ndarray, layer: Layer, i: int) -> None:
    x, y, s = layer.path(i)
    h, w = layer.mask.shape
    m = np.array([[s, 0, x], [0, s, y]], np.float32)
    size = (frame.shape[1], frame.shape[0])
    tex = cv2.warpAffine(layer.texture, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(layer.mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    frame[:] = alpha * tex + (1 - alpha) * frame


def make_clip(name: str, size: int, n: int = CLIP_FRAMES, seed: int = 0) -> List[np.ndarray]:
    """A procedural clip [n] of [size, size, 3] uint8 RGB. All motion is known and sub-pixel:
    crossing: textured discs and a striped box cross the frame fast (4-6 px/frame at 128², occlusion and
      disocclusion, a 30-frame gap sees each object travel ~1.2 frame widths);
    pan_thin: the camera pans and tilts over a large background while thin poles (2 px at 128²) and a
      striped disc move the other way;
    zoom_occlude: the background zooms in slowly while a large occluder sweeps across and an object rotates in place
      (scale change, large disoccluded areas)."""
    rng = np.random.default_rng({"crossing": 1, "pan_thin": 2, "zoom_occlude": 3}[name] * 1000 + seed)
    k = size / 128.0
    big = 3 * size
    bg = _noise(rng, big, big)
    layers: List[Layer] = []

    def disc(r: int, tex: np.ndarray) -> tuple:
        m = np.zeros((2 * r, 2 * r), np.float32)
        cv2.circle(m, (r, r), r - 1, 1.0, -1, lineType=cv2.LINE_AA)
        return tex[:2 * r, :2 * r], m

    if name == "crossing":
        cam = lambda i: (-size * 0.2 - 0.6 * k * i, -size * 0.3, 1.0)
        for j, (vx, vy, y0) in enumerate([(5.3, 0.4, 0.15), (-4.1, 0.9, 0.45), (3.2, -1.5, 0.7)]):
            r = int(size * (0.14 + 0.04 * j))
            tex, m = disc(r, _noise(rng, 2 * r, 2 * r) if j != 1 else _stripes(rng, 2 * r, 2 * r))
            x0 = -2 * r if vx > 0 else size
            layers.append(Layer(tex, m, lambda i, vx=vx, vy=vy, x0=x0, y0=y0: (
                x0 + vx * k * i * 0.75, y0 * size + vy * k * i, 1.0)))
        box = np.ones((int(size * 0.2), int(size * 0.5)), np.float32)
        layers.append(Layer(_stripes(rng, *box.shape), box, lambda i: (size * 0.9 - 3.7 * k * i, size * 0.55, 1.0)))
    elif name == "pan_thin":
        cam = lambda i: (-size * 0.5 - 2.2 * k * i, -size * 0.5 - 0.9 * k * i, 1.0)
        for j in range(4):
            wpole = max(2, int(round(2 * k)))
            pole = np.ones((int(size * 0.8), wpole), np.float32)
            tex = np.tile(rng.random(3).astype(np.float32), pole.shape + (1,)) * 0.3
            x0 = size * (0.15 + 0.22 * j)
            layers.append(Layer(tex, pole, lambda i, x0=x0, j=j: (x0 + (1.6 + 0.3 * j) * k * i * 0.5, size * 0.1, 1.0)))
        r = int(size * 0.18)
        tex, m = disc(r, _stripes(rng, 2 * r, 2 * r))
        layers.append(Layer(tex, m, lambda i: (size * 0.8 - 2.5 * k * i, size * 0.35 + 0.8 * k * i, 1.0)))
    elif name == "zoom_occlude":
        cam = lambda i: (-size * (0.8 + 0.004 * i), -size * (0.8 + 0.004 * i), 1.0 + 0.006 * i)
        occ = np.ones((int(size * 1.1), int(size * 0.35)), np.float32)
        layers.append(Layer(_noise(rng, *occ.shape), occ, lambda i: (-size * 0.4 + 4.5 * k * i * 0.7, -size * 0.05, 1.0)))
        r = int(size * 0.2)
        tex, m = disc(r, _noise(rng, 2 * r, 2 * r))
        layers.insert(0, Layer(tex, m, lambda i: (size * 0.55 - 0.5 * k * i, size * 0.5 - 0.3 * k * i, 1.0)))
    else:
        raise ValueError(f"clip must be one of {CLIPS}, got {name!r}")

    frames = []
    for i in range(n):
        x, y, s = cam(i)
        m = np.array([[s, 0, x], [0, s, y]], np.float32)
        frame = cv2.warpAffine(bg, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        for layer in layers:
            _paste(frame, layer, i)
        frames.append(np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8))
    return frames


def stylize(frame: np.ndarray) -> np.ndarray:
    """The benchmark's deterministic style S: bilateral smoothing, colour quantisation to 6 levels per channel and
    dark Canny edges. [H, W, 3] uint8 -> [H, W, 3] uint8."""
    smooth = cv2.bilateralFilter(frame, 7, 60, 5)
    quant = (np.round(smooth.astype(np.float32) / 51.0) * 51.0).astype(np.uint8)
    edges = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 60, 140) > 0
    out = quant.copy()
    out[edges] = (quant[edges] * 0.15).astype(np.uint8)
    return out


def stylize_pencil(frame: np.ndarray) -> np.ndarray:
    """The textured style: OpenCV's pencilSketch colour output (pencil strokes that follow the content's edges and
    shading, over the frame's smoothed colours). [H, W, 3] uint8 RGB -> [H, W, 3] uint8 RGB."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    _, colour = cv2.pencilSketch(bgr, sigma_s=40, sigma_r=0.08, shade_factor=0.06)
    return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)


STYLES = {"flat": stylize, "pencil": stylize_pencil}
REAL_CLIPS = ("Megamind.avi", "vtest.avi", "tree.avi", "box.mp4", "cup.mp4")


def real_windows(folder: str, size: int, frames: int, windows: int, names: Sequence[str] = REAL_CLIPS
                 ) -> List[tuple]:
    """[(name, [frames] of [H, W, 3] uint8 RGB)]: `windows` windows of `frames` consecutive frames per clip of
    REAL_CLIPS found in `folder`, spread evenly over the clip, resized so the long side is `size` (even sides)."""
    import pathlib
    out = []
    for name in names:
        path = pathlib.Path(folder) / name
        if not path.is_file():
            continue
        cap = cv2.VideoCapture(str(path))
        allf = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            allf.append(bgr)
        cap.release()
        if len(allf) < frames:
            print(f"note: {name} decodes {len(allf)} frames, fewer than --frames {frames}: skipped", file=sys.stderr,
                  flush=True)
            continue
        h, w = allf[0].shape[:2]
        k = size / max(h, w)
        dsize = (max(2, int(round(w * k / 2)) * 2), max(2, int(round(h * k / 2)) * 2))
        starts = np.linspace(0, len(allf) - frames, windows + 2)[1:-1] if windows > 1 else [(len(allf) - frames) / 2]
        for s0 in starts:
            s0 = int(s0)
            clip = [cv2.cvtColor(cv2.resize(f, dsize, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
                    for f in allf[s0:s0 + frames]]
            out.append((f"{path.stem}@{s0}", clip))
    if not out:
        raise SystemExit(f"--real: no clip of {REAL_CLIPS} with >= {frames} frames in {folder} (make real-clips)")
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def grad_energy(x: np.ndarray) -> float:
    f = x.astype(np.float64)
    return float(np.mean(np.diff(f, axis=0) ** 2) + np.mean(np.diff(f, axis=1) ** 2))


def run_method(method: str, frames: Sequence[np.ndarray], keys: Sequence[int], styled: Dict[int, np.ndarray],
               flow=None, **opts) -> List[np.ndarray]:
    """The whole stylised clip by `method` ("nearest" or a propagation method, "flow" | "patch" | "auto" |
    "nlmeans", or one of those with "+d<S>": with the propagation's `deflicker` S, e.g. "auto+d1") from the keys'
    styled frames only; flow: the estimator (None: OpenCV DIS at the propagation's preset, as a render runs it)."""
    method, _, strength = method.partition("+d")
    if strength:
        opts["deflicker"] = float(strength)
    if method == "nearest":
        ks = np.array(keys)
        return [styled[int(ks[np.argmin(np.abs(ks - i))])] for i in range(len(frames))]
    from fresco.models.flow import PROPAGATION_DIS_PRESET, DISFlow
    from fresco.video.propagate import propagate
    return list(propagate(iter(frames), keys, lambda k: styled[k], flow or DISFlow(PROPAGATION_DIS_PRESET),
                          method=method, **opts))


FLOWS = ("dis", "deepflow", "tvl1")


class ContribFlow:
    """OpenCV-contrib's DeepFlow ("deepflow") or dual TV-L1 ("tvl1", OpenCV's default parameters) behind the
    `FlowEstimator` interface, for `--flow`: how the propagation does along another classical flow. Each pair's
    flow is kept, so every method of a clip reads the same flows and each is computed once.
    Benchmark only: it needs `cv2.optflow` (opencv-contrib-python), which fresco does not depend on."""

    def __init__(self, kind: str):
        if kind not in FLOWS[1:]:
            raise ValueError(f"flow: one of {list(FLOWS[1:])}, got {kind!r}")
        if not hasattr(cv2, "optflow"):
            raise RuntimeError(f"--flow {kind}: needs OpenCV's contrib modules (cv2.optflow); e.g. pip install "
                               "--target DIR opencv-contrib-python-headless, then PYTHONPATH=DIR")
        self._f = (cv2.optflow.createOptFlow_DeepFlow() if kind == "deepflow"
                   else cv2.optflow.DualTVL1OpticalFlow_create())
        self._memo: Dict[bytes, torch.Tensor] = {}

    @staticmethod
    def _gray(x: torch.Tensor) -> np.ndarray:
        return cv2.cvtColor(x.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy(),
                            cv2.COLOR_RGB2GRAY)

    def _one(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        import hashlib
        a, b = self._gray(src), self._gray(dst)
        key = hashlib.sha1(a.tobytes() + b"|" + b.tobytes()).digest() + bytes(str(a.shape), "ascii")
        if key not in self._memo:
            self._memo[key] = torch.from_numpy(self._f.calc(a, b, None)).permute(2, 0, 1).float()
        return self._memo[key]

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._one(a, b) for a, b in zip(src, dst)]).to(src.device)


def make_flow(kind: str):
    """The estimator of `--flow` kind: None for "dis" (the propagation's own DIS preset), else a `ContribFlow`."""
    if kind not in FLOWS:
        raise ValueError(f"flow: one of {list(FLOWS)}, got {kind!r}")
    return None if kind == "dis" else ContribFlow(kind)


def evaluate(clip: str, size: int, interval: int, methods: Sequence[str], n: int = CLIP_FRAMES, seed: int = 0,
             patch_params=None, style: str = "flat", frames: Optional[List[np.ndarray]] = None,
             outputs: Optional[dict] = None, flow=None) -> List[dict]:
    """Rows (one per method) of one clip of n frames with keys every `interval` frames (the last frame included);
    seed: of the clip's textures (0: the clips the defaults were tuned on; others: held-out clips, same motions);
    patch_params: the patch method's `PatchParams` (None: the defaults); style: a STYLES name; frames: the clip
    itself (a real one) instead of the procedural `clip`; outputs: a dict that receives each method's output clip
    (for `reach`); flow: the estimator every method follows (None: the propagation's DIS; `make_flow`)."""
    if frames is None:
        frames = make_clip(clip, size, n, seed=seed)
    target = [STYLES[style](f) for f in frames]
    keys = key_frames(len(frames), interval)
    styled = {k: target[k] for k in keys}
    between = [i for i in range(len(frames)) if i not in set(keys)]
    rows, per_frame = [], {}
    base = {"clip": clip, "size": size, "interval": interval, "style": style}
    pairs = input_pairs(frames)   # the input's flows, once per clip, for both stability figures of every method
    floor = clip_warp_error(frames, pairs)
    rows.append({**base, "method": "target", "psnr": 99.0, "sharpness": 1.0, "s_per_frame": 0.0,
                 "temporal_vs_target": temporal_vs_target(target, target, pairs),
                 **warp_stability(target, pairs, floor)})
    for m in methods:
        t0 = time.perf_counter()
        log: list = []
        # (propagate takes both for every method and uses them where they apply; "nearest" ignores them)
        out = run_method(m, frames, keys, styled, flow, patch_params=patch_params, auto_log=log)
        secs = (time.perf_counter() - t0) / len(between)
        if outputs is not None:
            outputs[m] = out
        p = [psnr(out[i], target[i]) for i in between]
        sharp = np.mean([grad_energy(out[i]) for i in between]) / np.mean([grad_energy(target[i]) for i in between])
        per_frame[m] = p
        rows.append({**base, "method": m, "psnr": float(np.mean(p)), "sharpness": float(sharp), "s_per_frame": secs,
                     "temporal_vs_target": temporal_vs_target(out, target, pairs),
                     **warp_stability(out, pairs, floor)})
        if log:
            rows[-1]["auto_patch_share"] = float(np.mean([share for _, share, _, _ in log]))
            rows[-1]["auto_log"] = log
    if "flow" in per_frame:
        for r in rows[1:]:
            r["worst_vs_flow_db"] = float(np.min(np.array(per_frame[r["method"]]) - np.array(per_frame["flow"])))
    return rows


def key_frames(n: int, interval: int) -> List[int]:
    """The keyframes of an n-frame clip with a key every `interval` frames, the last frame included."""
    keys = list(range(0, n, interval))
    return keys + [n - 1] if keys[-1] != n - 1 else keys


def reach(clip: str, frames: Sequence[np.ndarray], size: int, style: str, dense: int, sparse: Dict[int, dict],
          methods: Sequence[str], patch_params=None, flow=None) -> List[dict]:
    """How far denser true keys would take each method: every method run again with a key every `dense` frames, and
    scored on the frames that are in-between at `dense` and at each sparse interval, as a margin over the flow blend
    at that sparse interval on the same frames. sparse: {interval: that interval's output clips by method (from
    `evaluate`'s `outputs`; "flow" needed); flow: as in `evaluate`. A method's margin at `dense` bounds what a
    better propagation from the sparse keys could reach along the same flow (benchmarks/RESULTS.md, "Stop 34")."""
    target = [STYLES[style](f) for f in frames]
    keys = key_frames(len(frames), dense)
    styled = {k: target[k] for k in keys}
    dense_out = {m: run_method(m, frames, keys, styled, flow, patch_params=patch_params) for m in methods}
    rows = []
    for interval, outs in sparse.items():
        common = sorted(set(range(len(frames))) - set(keys) - set(key_frames(len(frames), interval)))
        if not common:
            continue
        flow = np.mean([psnr(outs["flow"][i], target[i]) for i in common])
        ge = np.mean([grad_energy(target[i]) for i in common])
        for m in methods:
            rows.append({"clip": clip, "size": size, "style": style, "interval": interval, "dense": dense,
                         "method": m, "frames": len(common),
                         "margin_db": float(np.mean([psnr(dense_out[m][i], target[i]) for i in common]) - flow),
                         "sparse_margin_db": float(np.mean([psnr(outs[m][i], target[i]) for i in common]) - flow)
                         if m in outs else float("nan"),
                         "sharpness": float(np.mean([grad_energy(dense_out[m][i]) for i in common]) / ge)})
    return rows


def reach_markdown(rows: List[dict]) -> str:
    lines = ["| clip | style | size | interval | method | margin over the flow blend: at the interval / with a key "
             "every N frames (N) | sharpness with a key every N frames |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['style']} | {r['size']} | {r['interval']} | {r['method']} | "
                     f"{r['sparse_margin_db']:+.2f} / {r['margin_db']:+.2f} ({r['dense']}) | {r['sharpness']:.3f} |")
    return "\n".join(lines)


def clip_warp_error(clip: Sequence[np.ndarray], pairs: list) -> float:
    """fresco.score's mean warp error (Pixel-MSE, RGB 0..1) of `clip` along the input's flows `pairs`
    (`input_pairs`): of the input itself, its floor; of an output, as `fresco score` reports it."""
    from fresco.score import _mean, _to_tensor, pair_warp_error
    return _mean([pair_warp_error(_to_tensor(clip[i], "cpu"), _to_tensor(clip[i + 1], "cpu"), bwd, valid)
                  for i, (bwd, valid) in enumerate(pairs)])


def warp_stability(out: Sequence[np.ndarray], pairs: list, floor: float) -> dict:
    """The output's mean warp error along the input's flows and that as a multiple of the input's own, `floor`
    (1.0: as stable as the input)."""
    err = clip_warp_error(out, pairs)
    return {"warp_error": err, "warp_x_floor": err / floor}


def input_pairs(frames: Sequence[np.ndarray]) -> list:
    """[(backward flow, carried pixels)] of each consecutive pair of the input (fresco.score's DIS flow and mask), for
    `temporal_vs_target`."""
    from fresco.models.flow import get_flow_estimator
    from fresco.score import _to_tensor, carried_pixels
    est = get_flow_estimator("dis", "cpu")
    return [carried_pixels(est, _to_tensor(a, "cpu"), _to_tensor(b, "cpu")) for a, b in zip(frames, frames[1:])]


def temporal_vs_target(out: Sequence[np.ndarray], target: Sequence[np.ndarray], pairs: list) -> float:
    """The output's frame-to-frame change along the input's flow, compared with the target's own change there: the
    mean squared difference of the two changes (RGB 0..1, carried pixels) as a multiple of the target's warp error.
    0: the output changes exactly as the target does; 1: as far off as an output that never changes along the flow;
    above 1: flicker that the target does not have. The warp error alone (`warp_stability`) also counts the
    target's own changes against a method that reproduces them."""
    from fresco.score import _to_tensor, change_along_flow
    num, den = [], []
    for i, (bwd, valid) in enumerate(pairs):
        d_t = change_along_flow(_to_tensor(target[i], "cpu"), _to_tensor(target[i + 1], "cpu"), bwd)
        d_o = change_along_flow(_to_tensor(out[i], "cpu"), _to_tensor(out[i + 1], "cpu"), bwd)
        if int(valid.sum()):
            num.append(float(((d_o - d_t) ** 2).mean(dim=1)[valid].double().mean()))
            den.append(float((d_t ** 2).mean(dim=1)[valid].double().mean()))
    return float(np.mean(num) / np.mean(den)) if den and np.mean(den) > 0 else float("nan")


def time_patch(size: int, repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per in-between frame at size² (both directions, all scales, fusion included; flows excluded),
    the best of `repeats` after one warm-up (on CUDA: Triton compile)."""
    from fresco.video.patch_propagation import PatchParams, _key_guides, fuse, synthesize
    frames = make_clip("crossing", size, n=11)
    t = [torch.from_numpy(f).permute(2, 0, 1).float().to(device) for f in frames]
    st = [torch.from_numpy(stylize(f)).permute(2, 0, 1).float().to(device) for f in (frames[0], frames[10])]
    p = PatchParams()
    zero = torch.zeros(1, 2, size, size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ga, gb = _key_guides(t[0][None], st[0][None]), _key_guides(t[10][None], st[1][None])
    best = math.inf
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        a, ea = synthesize(t[5][None], zero, t[0][None], st[0][None], ga, p)
        b, eb = synthesize(t[5][None], zero, t[10][None], st[1][None], gb, p)
        fuse(a, ea, b, eb, 0.5, p.poisson, p.fuse_soften)
        sync()
        if i:
            best = min(best, time.perf_counter() - t0)
    return {"size": size, "device": device, "s_per_frame_patch_op_and_fusion": best,
            "threads": torch.get_num_threads()}


def _timing_gap(size: int, gap: int) -> tuple:
    """(frames, keys, styled keys) of the timing rows: the crossing clip at size², keys 0 and gap + 1."""
    frames = make_clip("crossing", size, n=gap + 2)
    return frames, [0, gap + 1], {0: stylize(frames[0]), gap + 1: stylize(frames[-1])}


def cpu_time_methods(size: int, methods: Sequence[str] = ("flow", "patch", "auto"), gap: int = 3) -> dict:
    """CPU seconds (this process, all threads: robust to a shared machine's load, unlike wall time) per in-between
    frame of each method through fresco.video.propagate, flows included, on the crossing clip at size² with keys
    0 and gap + 1."""
    frames, keys, styled = _timing_gap(size, gap)
    out = {"size": size, "threads": torch.get_num_threads()}
    for m in methods:
        t0 = time.process_time()
        run_method(m, frames, keys, styled)
        out[f"cpu_s_per_frame_{m}"] = (time.process_time() - t0) / gap
    return out


class CachedFlow:
    """A flow estimator that computes each (src, dst) pair once (DIS at the propagation's preset, on the CPU) and
    then returns it from memory on the tensors' device: timing a method with it after one warm-up run measures the
    method, not the flow. `spent`: wall seconds spent computing flows so far."""

    def __init__(self):
        from fresco.models.flow import PROPAGATION_DIS_PRESET, DISFlow
        self._dis, self._seen, self.spent = DISFlow(PROPAGATION_DIS_PRESET), {}, 0.0

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        key = (src.cpu().numpy().tobytes(), dst.cpu().numpy().tobytes())
        if key not in self._seen:
            t0 = time.perf_counter()
            self._seen[key] = self._dis(src.cpu(), dst.cpu())
            self.spent += time.perf_counter() - t0
        return self._seen[key].to(src.device)


def time_methods(size: int, methods: Sequence[str] = ("flow", "patch", "auto"), gap: int = 9, device: str = "cpu",
                 repeats: int = 2) -> dict:
    """Wall seconds per in-between frame of each method through fresco.video.propagate on `device` (the Triton
    kernels on CUDA), flows excluded (`CachedFlow`), the best of `repeats` after one warm-up run (which also compiles
    the kernels): the crossing clip at size² with keys 0 and gap + 1. `flow_s_per_frame_<method>`: the CPU DIS
    flows that method needs, per in-between frame (computed once, in the warm-up run, not in the method's figure)."""
    frames, keys, styled = _timing_gap(size, gap)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {"size": size, "device": device, "threads": torch.get_num_threads()}
    for m in methods:
        best, flow = math.inf, CachedFlow()
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            run_method(m, frames, keys, styled, flow=flow, device=device)
            sync()
            if i:
                best = min(best, time.perf_counter() - t0)
        out[f"s_per_frame_{m}"] = best / gap
        out[f"flow_s_per_frame_{m}"] = flow.spent / gap
    return out


def markdown(rows: List[dict]) -> str:
    lines = ["| clip | style | size | interval | method | PSNR dB | sharpness | warp error x input "
             "| change vs target's x target's warp | worst frame vs flow dB | s/frame |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['clip']} | {r.get('style', 'flat')} | {r['size']} | {r['interval']} | {r['method']} | "
                     f"{r['psnr']:.2f} | {r['sharpness']:.3f} | {r['warp_x_floor']:.2f} | "
                     f"{r.get('temporal_vs_target', float('nan')):.3f} | "
                     f"{r.get('worst_vs_flow_db', float('nan')):+.2f} "
                     f"| {r['s_per_frame']:.3f} |"
                     + (f" {100 * r['auto_patch_share']:.0f}% of pixels weighted toward patch"
                        if "auto_patch_share" in r else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--intervals", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--clips", nargs="*", default=list(CLIPS), choices=CLIPS,
                    help="procedural clips (none: only the real ones)")
    ap.add_argument("--methods", nargs="+", default=["nearest", "flow", "patch", "nlmeans", "auto"],
                    choices=["nearest", *PROPAGATION_METHODS])
    ap.add_argument("--style", default="flat", choices=sorted(STYLES), help="the per-frame target style")
    ap.add_argument("--real", default=None, metavar="DIR", help="also real clips from DIR (make real-clips)")
    ap.add_argument("--frames", type=int, default=31, help="frames per window of a real clip")
    ap.add_argument("--windows", type=int, default=2, help="windows per real clip")
    ap.add_argument("--real-clips", nargs="+", default=list(REAL_CLIPS), choices=REAL_CLIPS, help="which real clips")
    ap.add_argument("--seed", type=int, default=0,
                    help="texture seed of the clips (0: the tuning clips; 1, 2, ...: held-out clips, same motions)")
    ap.add_argument("--timing", type=int, default=0, help="also time the patch method at this size (e.g. 512)")
    ap.add_argument("--timing-only", action="store_true", help="only the timing row (needs --timing)")
    ap.add_argument("--cpu-timing", type=int, default=0,
                    help="CPU seconds per in-between frame of flow, patch and auto at this size (then exit)")
    ap.add_argument("--time-methods", type=int, default=0, metavar="SIZE",
                    help="wall seconds per in-between frame of flow, patch and auto (--methods, and their "
                         "--deflicker rows) at SIZE² on --device, flows excluded (then exit)")
    ap.add_argument("--device", default="cpu", help="device of the timing rows (cuda: the Triton kernels)")
    ap.add_argument("--patch", nargs="+", default=[], metavar="NAME=VALUE",
                    help="PatchParams fields of the patch method, e.g. em_iters=2 pm_iters=2 search_radius=8")
    ap.add_argument("--dense", type=int, default=0, metavar="N",
                    help="also run every method with a key every N frames (N >= 2, below every interval) and score it "
                         "against the flow blend at each interval on the frames in-between at both: how far denser "
                         "true keys would take each method (0: not; adds the flow method)")
    ap.add_argument("--deflicker", type=float, default=0.0, metavar="S",
                    help="also every method but nearest with the propagation's deflicker at strength S, as the rows "
                         "'<method>+d<S>' (0: not)")
    ap.add_argument("--flow", default="dis", choices=FLOWS,
                    help="the flow every method follows: dis (the propagation's own, default) or, with OpenCV's "
                         "contrib modules importable, deepflow or tvl1 (their in-between rows are then along that "
                         "flow; the stability column is still measured along DIS)")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if args.size < 32:
        ap.error(f"--size must be >= 32, got {args.size}")
    if args.timing and args.timing < 64:
        ap.error(f"--timing must be a size >= 64 (or 0: no timing row), got {args.timing}")
    if args.timing_only and not args.timing:
        ap.error("--timing-only needs --timing SIZE")
    from fresco.patch_params import PatchParams
    try:
        params = PatchParams(**{k: (v.lower() == "true") if v.lower() in ("true", "false") else float(v) if "." in v
                                else int(v) for k, v in (item.split("=", 1) for item in args.patch)})
    except (ValueError, TypeError) as e:
        ap.error(f"--patch: {e}")
    if args.frames < 3:
        ap.error(f"--frames must be >= 3, got {args.frames}")
    if args.windows < 1:
        ap.error(f"--windows must be >= 1, got {args.windows}")
    if args.time_methods and args.time_methods < 32:
        ap.error(f"--time-methods must be a size >= 32 (or 0: no timing), got {args.time_methods}")
    if args.dense and not 2 <= args.dense < min(args.intervals):
        ap.error(f"--dense must be an integer from 2 to below the smallest interval ({min(args.intervals)}), "
                 f"or 0, got {args.dense}")
    if not (math.isfinite(args.deflicker) and 0 <= args.deflicker <= 8):
        ap.error(f"--deflicker must be a number in [0, 8] (0: no deflicker rows), got {args.deflicker}")
    if args.deflicker:
        args.methods += [f"{m}+d{args.deflicker:g}" for m in args.methods if m != "nearest"]
    if args.dense and "flow" not in args.methods:
        args.methods.append("flow")  # the baseline of its margins
    if args.flow != "dis" and (args.cpu_timing or args.time_methods or args.timing):
        ap.error(f"--flow {args.flow}: only for the quality tables (the timing rows time the propagation's DIS)")
    try:
        make_flow(args.flow)
    except RuntimeError as e:
        ap.error(str(e))
    if args.cpu_timing:
        print(json.dumps(cpu_time_methods(args.cpu_timing)))
        return 0
    if args.time_methods:
        print(json.dumps(time_methods(args.time_methods, [m for m in args.methods if m != "nearest"],
                                      device=args.device)))
        return 0
    rows, reach_rows = [], []
    real = real_windows(args.real, args.size, args.frames, args.windows, args.real_clips) if args.real and not args.timing_only else []
    jobs = [(name, clip) for name, clip in real] + [(c, None) for c in ([] if args.timing_only else args.clips)]
    for clip, frames in jobs:
        sparse = {}
        flow = make_flow(args.flow)   # per clip: a contrib estimator keeps the clip's flows for every method
        for interval in args.intervals:
            sparse[interval] = {}
            new = evaluate(clip, args.size, interval, args.methods, seed=args.seed, patch_params=params,
                           style=args.style, frames=frames, outputs=sparse[interval], flow=flow)
            for r in new:
                r["real"] = frames is not None
                r["flow"] = args.flow
            rows += new
            print(markdown(new), flush=True)
        if args.dense:
            new = reach(clip, frames if frames is not None else make_clip(clip, args.size, CLIP_FRAMES,
                                                                         seed=args.seed),
                        args.size, args.style, args.dense, sparse, args.methods, params, flow)
            for r in new:
                r["real"] = frames is not None
            reach_rows += new
            print(reach_markdown(new), flush=True)
    md = "\n\n".join(markdown([r for r in rows if r["real"] == real]) for real in (True, False)
                       if any(r["real"] == real for r in rows))
    summary = []
    for real, interval, m in [(real, i, m) for real in (True, False) for i in (args.intervals if rows else [])
                              for m in ["target", *args.methods]]:
        sel = [r for r in rows if r["interval"] == interval and r["method"] == m and r["real"] == real]
        if sel:
            summary.append(f"{'real' if real else 'procedural'} {args.style} {args.size}px interval {interval} {m}"
                           f"{'' if args.flow == 'dis' else ' along ' + args.flow}: "
                           f"mean PSNR {np.mean([r['psnr'] for r in sel]):.2f} dB, "
                           f"sharpness {np.mean([r['sharpness'] for r in sel]):.3f}, warp error "
                           f"x{np.mean([r['warp_x_floor'] for r in sel]):.2f} the input's, change against the "
                           f"target's x{np.mean([r['temporal_vs_target'] for r in sel]):.3f} its warp error, "
                           f"worst frame vs flow "
                           f"{min(r.get('worst_vs_flow_db', float('nan')) for r in sel):+.2f} dB")
    for real, interval, m in [(real, i, m) for real in (True, False) for i in args.intervals
                              for m in args.methods]:
        sel = [r for r in reach_rows if r["interval"] == interval and r["method"] == m and r["real"] == real]
        if sel:
            summary.append(f"{'real' if real else 'procedural'} {args.style} {args.size}px interval {interval} {m}, "
                           f"margin over the flow blend at the interval: "
                           f"{np.mean([r['sparse_margin_db'] for r in sel]):+.2f} dB; with a key every "
                           f"{args.dense} frames: {np.mean([r['margin_db'] for r in sel]):+.2f} dB, sharpness "
                           f"{np.mean([r['sharpness'] for r in sel]):.3f}")
    if reach_rows:
        md += "\n\n" + reach_markdown(reach_rows)
    timing = time_patch(args.timing, device=args.device) if args.timing else None
    print("\n" + md + "\n\n" + "\n".join(summary))
    if timing:
        print(f"timing {timing}")
    if args.out:
        import pathlib
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"rows": rows, "reach": reach_rows, "timing": timing}, indent=1))
        (out / "results.md").write_text(md + "\n\n" + "\n".join(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
