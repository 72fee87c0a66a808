"""Non-keyframes by non-local means over the keys (`propagation: nlmeans`, and `auto`'s second candidate; docs/
algorithm.md, "Non-keyframes"). Each key is carried onto the frame along the better of the direct and the chained
flow (nearest sampling, so every candidate is a real pixel of the key, never a bilinear mix of two). Then per pixel
p the output is a weighted mean of the key pixels at the carried position p + d for every offset d within
`NLM_RADIUS`, over both keys: a candidate weighs exp(-(D - D_min) / h), with D the squared difference over a
`NLM_PATCH` x `NLM_PATCH` patch between the key's SOURCE frame around p + d and the frame around p (summed over
RGB), D_min the best candidate's, h = `NLM_H` + `NLM_ADAPT` x D_min, and each key
also weighs by its distance (1 - t for the earlier key, t for the later).

Where patch synthesis copies the single best-matching patch (sharp, but a wrong pick is a whole wrong stroke) and
the flow blend mixes two bilinear warps at the flow's guess (safe, blurred along every misaligned edge), this keeps
every candidate whose source looks like the frame there and averages them: where the keys agree it is as sharp as
the keys, where they do not it is the mean of what a matching source says, the lowest-error guess. The source
frames go through the same weights, so the method also rebuilds the frame's own source, the error `auto` weighs
its candidates by. benchmarks/RESULTS.md, "Stop 38", has the sweep that chose the constants."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .patch_propagation import box_mean, into_frame, keep_better, rebuild_error, sample

# the search: offsets within NLM_RADIUS (Chebyshev) of the carried position; patch side NLM_PATCH;
# h = NLM_H + NLM_ADAPT x the best candidate's patch error (an adaptive
# bandwidth: where even the best match is poor, more candidates share the weight)
NLM_RADIUS = 3
NLM_PATCH = 3
NLM_H = 10.0
NLM_ADAPT = 1.0
# frames of more pixels than this go through nlm_frame in bands of rows (each with the rows its search and patches
# reach), so the [2 (2 NLM_RADIUS + 1)^2, rows, W] candidate stacks stay near 200 MB each: 1.6 GB at 1920x1080 without
NLM_BAND_PIXELS = 1 << 19
# the direct and the chained flow are compared per pixel by the carried source's squared error over this box
CHOICE_WINDOW = 3


def carry_nearest(stack: torch.Tensor, frame: torch.Tensor, flows: Tuple[Optional[torch.Tensor], ...],
                  src: int = 3) -> torch.Tensor:
    """`stack` [C, H, W] (a key: its stylised frame, its source frame in channels src .. src + 2, anything else)
    carried onto `frame` [3, H, W] along whichever of `flows` ([1, 2, H, W] frame -> key, None skipped)
    rebuilds the frame's source better per pixel (`CHOICE_WINDOW`); nearest sampling, beyond the border the nearest
    pixel. Returns [C, H, W]."""
    best = err = None
    for f in flows:
        if f is None:
            continue
        w = sample(stack[None], into_frame(f.to(stack.dtype)), "nearest")[0]
        best, err = keep_better(best, err, w, rebuild_error(w[src:src + 3], frame, CHOICE_WINDOW))
    if best is None:
        raise ValueError("carry_nearest: no flow given")
    return best


def nlm_frame(frame: torch.Tensor, keys: list, radius: int = NLM_RADIUS, patch: int = NLM_PATCH,
              h: float = NLM_H, adapt: float = NLM_ADAPT, band_pixels: int = NLM_BAND_PIXELS) -> torch.Tensor:
    """One in-between frame [3, H, W] (0..255) from its keys: `keys` a list of (carried [C, H, W], weight), carried
    = `carry_nearest` of a key's (stylised [C - 3], source [3]) and weight > 0 the key's distance weight. Returns
    [C, H, W]: the stylised estimate, then the rebuilt source in the last 3 channels. A frame of more than
    `band_pixels` pixels is done in bands of rows, each with the `radius` + `patch` // 2 rows around it that its
    pixels read, so every pixel sees what it would see in one pass and the memory stays bounded."""
    h_, w_ = frame.shape[1:]
    rows = max(1, band_pixels // max(w_, 1))
    if h_ <= rows:
        return _nlm_pass(frame, keys, radius, patch, h, adapt)
    halo = radius + patch // 2
    out = torch.empty_like(keys[0][0])
    for y0 in range(0, h_, rows):
        y1 = min(h_, y0 + rows)
        a, b = max(0, y0 - halo), min(h_, y1 + halo)
        part = _nlm_pass(frame[:, a:b], [(c[:, a:b], wk) for c, wk in keys], radius, patch, h, adapt)
        out[:, y0:y1] = part[:, y0 - a:y1 - a]
    return out


def _nlm_pass(frame: torch.Tensor, keys: list, radius: int, patch: int, h: float, adapt: float) -> torch.Tensor:
    """`nlm_frame` over the whole of `frame` in one pass (its candidate stacks: [K (2 radius + 1)^2, H, W])."""
    h_, w_ = frame.shape[1:]
    span = range(-radius, radius + 1)

    pads = [F.pad(carried[None], (radius,) * 4, mode="replicate")[0] for carried, _ in keys]

    def shifted():   # (every key shifted by every offset d, key by key: [C, H, W] views of its padded copy)
        for pad in pads:
            for dy in span:
                for dx in span:
                    yield pad[:, radius + dy:radius + dy + h_, radius + dx:radius + dx + w_]

    diffs = torch.stack([((v[-3:] - frame) ** 2).sum(0) for v in shifted()])
    dist = box_mean(diffs, patch)                               # [K (2r + 1)^2, H, W]: one pooling call for all
    del diffs
    dmin = dist.amin(0)
    prior = torch.tensor([math.log(wk) for _, wk in keys], dtype=dist.dtype, device=dist.device)
    prior = prior.repeat_interleave(len(span) ** 2).view(-1, 1, 1)
    # softmax over the candidates of prior - (dist - dmin) / bandwidth, in place (the stack is the largest tensor)
    wt = dist.sub_(dmin).div_(h + adapt * dmin).neg_().add_(prior)
    wt = wt.sub_(wt.amax(0)).exp_()
    wt = wt.div_(wt.sum(0))
    out = torch.zeros_like(keys[0][0])
    for i, v in enumerate(shifted()):
        out.addcmul_(wt[i].expand_as(v), v)
    return out


def nlm_from_keys(frames: torch.Tensor, t: torch.Tensor, src_a: torch.Tensor, out_a: torch.Tensor,
                  src_b: Optional[torch.Tensor], out_b: Optional[torch.Tensor], direct: Tuple[torch.Tensor, ...],
                  chained: Tuple[torch.Tensor, Optional[torch.Tensor]], with_source: bool = False) -> torch.Tensor:
    """The in-between frames [M, 3, H, W] (0..255) at positions t [M] in (0, 1) between key a (before) and key b
    (after, or None: key a alone), from the keys' source and stylised frames [3, H, W]; direct: the flows
    (frames -> key a, frames -> key b or None) [M, 2, H, W], chained: the same chained frame to frame (`gap_flows`).
    Returns [M, C, H, W] (with `with_source`: [M, C + 3, H, W], the rebuilt source in the last 3 channels)."""
    stacks = [torch.cat([out_a, src_a]).to(frames.dtype)]
    if src_b is not None:
        stacks.append(torch.cat([out_b, src_b]).to(frames.dtype))
    c = out_a.shape[0] + (3 if with_source else 0)
    outs = []
    for j in range(frames.shape[0]):
        tj = float(t[j])
        weights = [max(1.0 - tj, 1e-6), max(tj, 1e-6)] if src_b is not None else [1.0]
        keys = []
        for k, (stack, wk) in enumerate(zip(stacks, weights)):
            dk = direct[k][j:j + 1] if direct[k] is not None else None
            ck = chained[k][j:j + 1] if chained[k] is not None else None
            keys.append((carry_nearest(stack, frames[j], (dk, ck), out_a.shape[0]), wk))
        outs.append(nlm_frame(frames[j], keys)[:c])
    return torch.stack(outs)
