"""Non-keyframes from the two stylised keyframes around them (docs/algorithm.md, "Non-keyframes"). Four methods:
"auto" (default): "patch" and "nlmeans" on each gap, mixed per pixel with more weight on the one whose output rebuilds
the frame's own source better (`patch_weight`, then the contrast-preserving `histogram_blend`): each method, applied
to the keys' SOURCE frames as extra channels, re-assembles the in-between source frame, an error measurable without
the stylised target; "patch" (the published Ebsynth step
as an op: guided patch synthesis from both keys, fresco.video.patch_propagation); "flow": both keys are warped to
the frame along optical flow, direct or chained frame to frame, whichever rebuilds the frame's source better there
(a sample point beyond the frame reads the nearest border pixel), and blended with weights that fall linearly with
distance and with that rebuild error (`blend_from_keys`); "nlmeans": per pixel the mean of the keys' pixels around
where the flow carries it, weighted by how well each key's source patch matches the frame's (fresco.video.nlmeans).
All follow one set of frame-to-frame flows per gap (`gap_flows`); the optional deflicker (`deflicker_gap`, off by
default) mixes each output with its neighbours' along them. Runs on the GPU when the tensors are there; streams
frames. Every op follows `backend` (None: the global switch)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from fresco_kernels import flow_warp

from ..constants import DEFAULT_PROPAGATION, PROPAGATION_METHODS
from ..models.flow import FlowEstimator
from ..patch_params import PatchParams
from .nlmeans import nlm_from_keys
from .patch_propagation import gap_flows, histogram_blend, into_frame, keep_better, patch_gap, rebuild_error


# the flow blend: each key's warp is judged per pixel by the squared RGB error (summed over channels) of the key's
# source warped the same way against the frame, box-averaged over BLEND_WINDOW; the warp follows the direct or the
# chained flow, whichever rebuilds the source better, and the two keys are mixed with weights (distance weight) /
# (that error + BLEND_ERROR_FLOOR): a key whose warp does not match the frame there fades out gradually, where the
# first blend cut it by an occlusion mask (benchmarks/RESULTS.md, "Stop 34": +0.45 / +0.38 dB over that blend on the
# real clips at 512 / 256 px, no window below it; the floor, the window and the power were swept there)
BLEND_WINDOW = 3
BLEND_ERROR_FLOOR = 30.0


def blend_from_keys(frames: torch.Tensor, t: torch.Tensor,
                    src_a: torch.Tensor, out_a: torch.Tensor,
                    src_b: torch.Tensor | None, out_b: torch.Tensor | None,
                    flow: FlowEstimator, backend: Optional[str] = None,
                    chained: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
                    with_source: bool = False) -> torch.Tensor:
    """Stylise in-between frames from key a (before) and key b (after).

    frames: [M, 3, H, W] source frames in 0..255; t: [M] position in (0, 1) between a (0) and b (1);
    src_a/out_a: [3, H, W] key a's source and [C, H, W] stylised frame; src_b/out_b likewise, or None when there is
    no later key (then key a alone is warped). chained: (to_a, to_b), the flows [M, 2, H, W] from each frame to key a
    / key b chained frame to frame (`fresco.video.patch_propagation.gap_flows`; to_b None without a later key), or
    None: the direct flow (`flow(frames, key)`) alone. Returns [M, C, H, W] float in 0..255 (with `with_source`:
    [M, C + 3, H, W], the keys' source frames blended the same way, the rebuilt source, in the last 3 channels).
    Per key and pixel the warp follows whichever of the direct and the chained flow rebuilds the frame's own source
    better (`BLEND_WINDOW`); the keys are mixed with weights w_a = (1 - t) / (e_a + BLEND_ERROR_FLOOR),
    w_b = t / (e_b + BLEND_ERROR_FLOOR), e that rebuild error: a key that does not see the pixel gives way to the
    other one, and where neither does the distance weights decide. A flow that points beyond the frame reads the
    key's nearest border pixel (`into_frame`), not black: content entering at the frame's edge continues the key's
    edge. backend: the fresco_kernels backend of the warps (None: the global switch)."""
    m, c = frames.shape[0], out_a.shape[0] + (3 if with_source else 0)
    warp_a, err_a = _warp_key(frames, src_a, out_a, flow, chained[0] if chained is not None else None, backend)
    if src_b is None:
        return warp_a[:, :c]
    warp_b, err_b = _warp_key(frames, src_b, out_b, flow, chained[1] if chained is not None else None, backend)
    t = t.view(m, 1, 1, 1).to(frames)
    w_a = (1 - t) / (err_a + BLEND_ERROR_FLOOR)
    w_b = t / (err_b + BLEND_ERROR_FLOOR)
    return ((w_a * warp_a + w_b * warp_b) / (w_a + w_b))[:, :c]


def _warp_key(frames: torch.Tensor, src: torch.Tensor, out: torch.Tensor, flow: FlowEstimator,
              chained: Optional[torch.Tensor], backend: Optional[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the key's stylised frame and source frame warped onto each frame [M, C + 3, H, W], the rebuild error of that
    warp [M, 1, H, W]): along the direct flow, or per pixel the chained one where its warped source matches the
    frame better."""
    m = frames.shape[0]
    key = torch.cat([out, src]).to(frames.dtype).expand(m, -1, -1, -1)
    best = err = None
    for f in (flow(frames, src.expand(m, -1, -1, -1)), chained):
        if f is None:
            continue
        best, err = keep_better(best, err, *_carry(key, f, frames, backend))
    return best, err


def _carry(stack: torch.Tensor, flow: torch.Tensor, frames: torch.Tensor, backend: Optional[str]
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(`stack` [M, C + 3, H, W], an image with its source frame in the last 3 channels, warped onto `frames`
    [M, 3, H, W] along `flow` [M, 2, H, W] (frame -> the stack's frame; beyond the border the nearest pixel,
    `into_frame`), the rebuild error of the warped source [M, 1, H, W] over `BLEND_WINDOW`): how the flow blend and
    the deflicker carry a key or a neighbour onto a frame and judge the carry."""
    w = flow_warp(stack, into_frame(flow.to(stack.dtype)), backend=backend)
    return w, rebuild_error(w[:, -3:], frames, BLEND_WINDOW).unsqueeze(1)


def _chunk(gf, start: int, n: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The chained flows to key a and key b ([n, 2, H, W] each, b None without a later key) of the gap's frames
    start .. start + n - 1, from its `gap_flows`."""
    return (torch.cat(gf.to_a[start:start + n]),
            torch.cat(gf.to_b[start:start + n]) if gf.to_b is not None else None)


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).float()


def _to_image(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


# auto, per pixel: patch synthesis weighs alpha = 1 / (1 + (e_patch / (AUTO_PATCH_MARGIN e_other))^AUTO_POWER)
# against the other candidate's 1 - alpha (non-local means since stop 38, the flow blend before), with e the
# rebuilt-source errors box-averaged over AUTO_WINDOW, and the two are mixed by the contrast-preserving histogram
# blend (benchmarks/RESULTS.md, "Real footage": the rows "hard w3 m1.0" and its neighbours chose window and margin;
# "Stop 32", the soft choice, chose power 4 against the flow blend, where lower powers gained PSNR by blurring;
# "Stop 38" chose 1.5 against non-local means, which is sharper than the blend: +0.34 dB over stop 37's `auto` on the
# real clips at 256 px, 1% less warp error, sharpness 0.785 against 0.798, no case below the flow blend)
AUTO_WINDOW = 3
AUTO_PATCH_MARGIN = 1.0
AUTO_POWER = 1.5


def choose_per_pixel(err_patch: torch.Tensor, err_flow: torch.Tensor, margin: float = AUTO_PATCH_MARGIN
                     ) -> torch.Tensor:
    """[H, W] bool, True where patch synthesis's error map is <= margin x the other candidate's (non-local means; a
    tie counts for patch synthesis): where `auto` gives it the larger weight, as logged."""
    return err_patch <= margin * err_flow


def patch_weight(err_patch: torch.Tensor, err_flow: torch.Tensor, margin: float = AUTO_PATCH_MARGIN,
                 power: float = AUTO_POWER) -> torch.Tensor:
    """[H, W] in [0, 1]: `auto`'s weight of patch synthesis, 1 / (1 + (err_patch / (margin err_flow))^power),
    computed in the log domain (no overflow; both errors 0: 0.5). 0.5 where err_patch = margin x err_flow; toward 1
    where patch synthesis rebuilds the frame better, toward 0 where the other candidate does; a larger power is a harder
    choice (infinity: `choose_per_pixel`)."""
    tiny = 1e-6
    return torch.sigmoid(power * (torch.log(margin * err_flow + tiny) - torch.log(err_patch + tiny)))


# deflicker: each in-between frame's output o_j is mixed with its neighbours' outputs (the frame before and the frame
# after, a key where the gap ends) carried onto it along the gap's frame-to-frame flows, each neighbour with the
# weight strength x F / (e + F), e the rebuild error of the neighbour's source carried the same way (`BLEND_WINDOW`,
# F = BLEND_ERROR_FLOOR), o_j itself with weight 1: where the flow holds, patch synthesis's frame-to-frame texture
# noise averages out; where it does not (occlusion, a wrong flow), the neighbour fades. `auto` deflickers its patch
# candidate, rebuilt source included, before the mix (measured when its other candidate was the flow blend, which is
# steady already): at the same sharpness that scored 0.035 dB more, with less warp error, than deflickering the mix.
# Off by default: on the real clips it trades sharpness for stability and PSNR (benchmarks/RESULTS.md, "Stop 35")
def deflicker_gap(outs: Sequence[torch.Tensor], frames: Sequence[torch.Tensor], gf, src_a: torch.Tensor,
                  out_a: torch.Tensor, src_b: Optional[torch.Tensor], out_b: Optional[torch.Tensor],
                  strength: float, backend: Optional[str] = None, with_source: bool = False
                  ) -> Iterator[torch.Tensor]:
    """Yield the gap's outputs outs ([C, H, W] 0..255, one per in-between frame `frames` [3, H, W]) deflickered:
    each mixed with the unfiltered outputs of the frames next to it (key a before the first, key b after the last)
    warped along `gf` (the gap's `gap_flows`), weighted by how well each neighbour's warped source rebuilds the
    frame. with_source: the last 3 of the C channels are a rebuilt source (`patch_gap(with_source=True)`), mixed
    the same way (a key's is its source frame). Without a later key (gf.fwd None) only the earlier neighbour is
    used."""
    m = len(outs)
    key_a = torch.cat([out_a, src_a]) if with_source else out_a
    key_b = (torch.cat([out_b, src_b]) if with_source else out_b) if out_b is not None else None
    for j in range(m):
        num = outs[j][None].float()
        c = num.shape[1]
        den = torch.ones_like(num[:, :1])
        nbrs = [(outs[j - 1] if j else key_a, frames[j - 1] if j else src_a, gf.back[j])]
        if gf.fwd is not None:
            nbrs.append((outs[j + 1] if j + 1 < m else key_b, frames[j + 1] if j + 1 < m else src_b, gf.fwd[j]))
        for out_n, src_n, f in nbrs:
            w, e = _carry(torch.cat([out_n, src_n])[None].float(), f[None], frames[j][None], backend)
            wt = strength * BLEND_ERROR_FLOOR / (e + BLEND_ERROR_FLOOR)
            num = num + wt * w[:, :c]
            den = den + wt
        yield (num / den)[0]


def propagate(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray],
              flow: FlowEstimator, device: torch.device | str = "cpu", chunk: int = 8,
              backend: Optional[str] = None, method: str = DEFAULT_PROPAGATION,
              patch_params: Optional[PatchParams] = None, auto_log: Optional[list] = None,
              deflicker: float = 0.0) -> Iterator[np.ndarray]:
    """Yield the whole stylised video frame by frame (exactly one output per input frame).

    frames: the source frames (HxWx3 uint8, processing size) as a stream; keys: keyframe indices (keys[0] = 0);
    load_key(k): the stylised keyframe k (HxWx3 uint8); method: "patch" (guided patch synthesis from both keys,
    fresco.video.patch_propagation, `patch_params` its `PatchParams`), "flow" (`blend_from_keys`), "auto" (patch and
    nlmeans, mixed per pixel by `patch_weight`, more weight on the one whose rebuilt source is better; `auto_log`,
    if given, gets (key a, share of the gap's pixels where patch synthesis weighs more, mean patch rebuild error,
    mean rebuild error of the other candidate) per gap) or "nlmeans" (`fresco.video.nlmeans`); deflicker: > 0 mixes
    each in-between frame with its neighbours' outputs carried along the flow (`deflicker_gap`, that strength; 0:
    off; `auto` deflickers its patch candidate before the mix). Holds the frames between two keys (at most one gap),
    their frame-to-frame and chained flows, and two stylised keys; the flow estimator sees at most `chunk` frame
    pairs per call and the flow blend works on `chunk` in-between frames at a time on `device`; all use the
    fresco_kernels `backend` (None: the global switch)."""
    if method not in PROPAGATION_METHODS:
        raise ValueError(f"method must be one of {PROPAGATION_METHODS}, got {method!r}")
    keys = list(keys)
    if not keys or keys[0] != 0:
        raise ValueError(f"keys: must start with frame 0, got {keys[:3]}")
    device = torch.device(device)
    key_set = set(keys)
    a = None
    src_a = out_a = None
    pending: list[np.ndarray] = []

    def flush(b: int | None, src_b: torch.Tensor | None, out_b: torch.Tensor | None) -> Iterator[np.ndarray]:
        if not pending:
            return
        span = (b - a) if b is not None else None
        with torch.no_grad():
            xs = [_to_tensor(f, device) for f in pending]
            gf = gap_flows(xs, src_a, src_b, flow, chunk)  # one set of flows for every method and step
            if method == "patch":
                outs = patch_gap(xs, src_a, out_a, src_b, out_b, flow, patch_params or PatchParams(), backend,
                                 flows=gf)
            elif method == "auto":
                outs = auto_gap(xs, gf, span, src_b, out_b)
            elif method == "nlmeans":
                outs = (o for _, out in nlms(xs, gf, span, src_b, out_b, False) for o in out)
            else:
                outs = (o for _, out in blends(xs, gf, span, src_b, out_b, False) for o in out)
            if deflicker > 0 and method != "auto":   # auto deflickers its patch candidate (auto_gap)
                outs = deflicker_gap(list(outs), xs, gf, src_a, out_a, src_b, out_b, deflicker, backend)
            for o in outs:
                yield _to_image(o)

    def gap_chunks(xs: list, span: int | None) -> Iterator[tuple]:
        # the gap's frames xs `chunk` at a time: (the first one's index in xs, those frames [n, 3, H, W], their
        # positions t in (0, 1) between the keys; 0 without a later key)
        for s in range(0, len(xs), chunk):
            x = torch.stack(xs[s:s + chunk])
            js = torch.arange(s + 1, s + 1 + x.shape[0], dtype=torch.float32)
            yield s, x, (js / span if span else torch.zeros_like(js))

    def blends(xs: list, gf, span: int | None, src_b: torch.Tensor | None, out_b: torch.Tensor | None,
               with_source: bool) -> Iterator[tuple]:
        # the flow blend of the gap's frames xs, `chunk` at a time: (those frames [n, 3, H, W], their blend)
        for s, x, t in gap_chunks(xs, span):
            yield x, blend_from_keys(x, t, src_a, out_a, src_b, out_b, flow, backend, _chunk(gf, s, chunk),
                                     with_source)

    def nlms(xs: list, gf, span: int | None, src_b: torch.Tensor | None, out_b: torch.Tensor | None,
             with_source: bool) -> Iterator[tuple]:
        # non-local means over the keys (fresco.video.nlmeans) of the gap's frames xs, `chunk` at a time: (those
        # frames [n, 3, H, W], their estimates)
        for s, x, t in gap_chunks(xs, span):
            m = x.shape[0]
            direct = (flow(x, src_a.expand(m, -1, -1, -1)),
                      flow(x, src_b.expand(m, -1, -1, -1)) if src_b is not None else None)
            yield x, nlm_from_keys(x, t, src_a, out_a, src_b, out_b, direct, _chunk(gf, s, chunk), with_source)

    def auto_gap(xs: list, gf, span: int | None, src_b: torch.Tensor | None, out_b: torch.Tensor | None
                 ) -> Iterator[torch.Tensor]:
        # patch synthesis and non-local means on the keys' stylised frames and, as extra channels, on their source
        # frames; per pixel more weight on the one whose rebuilt source matches the frame better (streams: `chunk`
        # frames at a time)
        stats = []  # per frame (share from patch, mean patch error, mean error of the other), only for auto_log
        patches = patch_gap(xs, src_a, out_a, src_b, out_b, flow, patch_params or PatchParams(), backend,
                            with_source=True, flows=gf)
        if deflicker > 0:
            patches = deflicker_gap(list(patches), xs, gf, src_a, out_a, src_b, out_b, deflicker, backend,
                                    with_source=True)
        for x, others in nlms(xs, gf, span, src_b, out_b, True):
            for xi, fo, po in zip(x, others, patches):
                ep, ef = rebuild_error(po[3:], xi, AUTO_WINDOW), rebuild_error(fo[3:], xi, AUTO_WINDOW)
                if auto_log is not None:
                    stats.append(torch.stack([choose_per_pixel(ep, ef).float().mean(), ep.mean(), ef.mean()]))
                yield histogram_blend(po[:3], fo[:3], patch_weight(ep, ef))
        if auto_log is not None:
            share, err_p, err_f = torch.stack(stats).mean(0).tolist()
            auto_log.append((a, share, err_p, err_f))

    n = 0
    for i, img in enumerate(frames):
        n = i + 1
        if i not in key_set:
            if a is None:
                raise ValueError("keys: frame 0 must be a keyframe")
            pending.append(img)
            continue
        src_b, out_b = _to_tensor(img, device), _to_tensor(load_key(i), device)
        if out_b.shape != src_b.shape:
            raise ValueError(f"load_key({i}): stylised key is {tuple(out_b.shape)}, frame is {tuple(src_b.shape)}")
        if a is not None:
            yield from flush(i, src_b, out_b)
        pending = []
        yield _to_image(out_b)
        a, src_a, out_a = i, src_b, out_b
    if a is None:
        raise ValueError("frames: the stream is empty")
    if keys[-1] >= n:
        raise ValueError(f"keys: key {keys[-1]} is past the last frame ({n - 1})")
    yield from flush(None, None, None)
