"""Non-keyframes by guided patch synthesis (Ebsynth-style, "Stylizing Video by Example", Jamriška et al. 2019), the
`propagation: patch` method. Each in-between frame is re-assembled from patches of the stylised keys before and after
it (`fresco_kernels.patch_synthesis`). The guides are the frames' colour and edges, the positions carried along
optical flow chained frame to frame, and a temporal guide: the direction's previous output carried one step
(Ebsynth's), or the key's stylised frame carried along the chained flow (`PatchParams.temporal_guide`). Each
direction's field is voted again. Each vote is weighted by its patch's synthesis error and by how well the key's
source pixel it proposes matches the frame there, so outlines keep the votes of their own side. Per pixel, the key
warped along the chained flow replaces the vote where the warped source matches the frame clearly better than the
synthesis's source patches (near a key the flow is nearly exact). The two directions are chosen per pixel by how well
each rebuilds the frame's colours, and fused with histogram-preserving blending and, optionally, gradient-domain
(Poisson) fusion. Works on one gap between two keys at a time (memory bounded by the gap, flat in video length)."""
from __future__ import annotations

import math
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from fresco_kernels import patch_synthesis

from ..patch_params import PatchParams


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] 0..255 -> [B, 1, H, W]."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def edge_guide(frames: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] 0..255 -> [B, 1, H, W] Sobel gradient magnitude of the gray frame, 0..255 (saturating)."""
    g = F.pad(_gray(frames), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=frames.device) / 4
    gx = F.conv2d(g, kx.view(1, 1, 3, 3))
    gy = F.conv2d(g, kx.t().reshape(1, 1, 3, 3))
    return (2 * torch.sqrt(gx * gx + gy * gy)).clamp(0, 255)


def sample(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """x [B, C, H, W] sampled at p + flow(p) (flow [B, 2, H, W] pixels, ch0 = x), border-clamped; mode "bilinear"
    or "bicubic" (sharper at sub-pixel shifts; may overshoot, clamp 0..255 images after)."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / max(w - 1, 1) - 1
    gy = 2 * (ys + flow[:, 1]) / max(h - 1, 1) - 1
    return F.grid_sample(x, torch.stack([gx, gy], -1), mode=mode, padding_mode="border", align_corners=True)


def into_frame(flow: torch.Tensor) -> torch.Tensor:
    """The flow [B, 2, H, W] (pixels, channel 0 = x) with every sample point p + flow(p) clamped into the frame, so
    that a zero-padding warp reads the nearest border pixel there (border padding) instead of black."""
    _, _, h, w = flow.shape
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, w)
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(h, 1)
    return torch.stack([(xs + flow[:, 0]).clamp(0, w - 1) - xs, (ys + flow[:, 1]).clamp(0, h - 1) - ys], 1)


def chain_to_key(step_flows: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Flows to a key chained frame by frame: step_flows[j] [1, 2, H, W] maps frame j to the frame one step nearer
    the key (step_flows[0] maps the frame next to the key onto the key). Returns the composed flows frame j -> key:
    F_j(p) = f_j(p) + F_{j-1}(p + f_j(p))."""
    out: List[torch.Tensor] = []
    for f in step_flows:
        out.append(f if not out else f + sample(out[-1], f))
    return out


class GapFlows(NamedTuple):
    """The frame-to-frame flows of one gap and the flows to each key chained from them. back [M, 2, H, W]: frame j
    -> frame j - 1 (toward key a; the first maps onto key a); fwd: frame j -> frame j + 1 (toward key b), None
    without a later key; to_a[j] / to_b[j] [1, 2, H, W]: frame j -> key a / key b, chained (`chain_to_key`)."""
    back: torch.Tensor
    fwd: Optional[torch.Tensor]
    to_a: List[torch.Tensor]
    to_b: Optional[List[torch.Tensor]]


def gap_flows(frames: Sequence[torch.Tensor], src_a: torch.Tensor, src_b: Optional[torch.Tensor],
              flow: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int = 8) -> GapFlows:
    """`GapFlows` of the in-between frames [3, H, W] after key a's source frame (and before key b's, or None): the
    estimator sees at most `chunk` pairs per call, so a batched one (GMFlow, RAFT on a GPU) needs no more memory at
    interval 30 than at 10. Both patch synthesis and the flow blend follow them, so `auto` computes them once per
    gap."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: an int >= 1, got {chunk!r}")
    m = len(frames)
    x = torch.stack([src_a] + list(frames) + ([src_b] if src_b is not None else []))

    def pairs(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return torch.cat([flow(src[s:s + chunk], dst[s:s + chunk]) for s in range(0, src.shape[0], chunk)])

    back = pairs(x[1:m + 1], x[0:m])
    fwd = pairs(x[1:m + 1], x[2:m + 2]) if src_b is not None else None
    return GapFlows(back, fwd, chain_to_key([f[None] for f in back]),
                    chain_to_key([f[None] for f in reversed(fwd)])[::-1] if fwd is not None else None)


def _positions(h: int, w: int, device) -> torch.Tensor:
    """[1, 2, H, W] pixel coordinates (y, x)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([ys, xs])[None]


def synthesize(frame: torch.Tensor, to_key: torch.Tensor, key_src: torch.Tensor, key_out: torch.Tensor,
               key_guides: torch.Tensor, p: PatchParams, backend: Optional[str] = None,
               with_source: bool = False, temporal: Optional[torch.Tensor] = None) -> tuple:
    """One direction: frame [1, 3, H, W] from the key (source key_src, stylised key_out [1, 3, H, W], key_guides
    from `_key_guides`) along to_key [1, 2, H, W] (frame -> key). Returns (out [3, H, W] 0..255, err [H, W]), and
    with `with_source` also the key's source frame re-assembled the same way [3, H, W]: the rebuilt source).
    temporal: the temporal guide [1, 3, H, W] (None: the key's stylised frame carried along to_key)."""
    _, _, h, w = frame.shape
    scale = 255.0 / max(h, w)
    pos = _positions(h, w, frame.device)
    tgt_pos = (pos + to_key.flip(1)) * scale                       # where the key's pixel sits, as (y, x)
    if p.w_temporal == 0:
        temporal = torch.zeros_like(key_out)                      # weight 0: never read, so never sampled
    elif temporal is None:
        temporal = sample(key_out, to_key)
    target = torch.cat([frame, edge_guide(frame), tgt_pos, temporal], 1)[0]
    weights = [p.w_colour] * 3 + [p.w_edge] + [p.w_position] * 2 + [p.w_temporal] * 3
    # a guide of weight 0 adds 0 to every patch distance: leaving its channels out gives the same field, faster
    used = [i for i, wt in enumerate(weights) if wt > 0] or list(range(len(weights)))
    init = torch.round(pos + to_key.flip(1))[0].to(torch.int32)
    out, nnf, err = patch_synthesis(key_out[0], key_guides[used], target[used], [weights[i] for i in used],
                                    style_weight=p.style_weight,
                                    init_nnf=init, patch_size=p.patch_size, levels=p.levels, em_iters=p.em_iters,
                                    pm_iters=p.pm_iters, search_radius=p.search_radius, uniformity=p.uniformity,
                                    seed=p.seed, backend=backend)
    # the vote re-assembles the key's source frame too: how well it matches the frame is the output's error
    # (colour, then the edge guide scaled by sqrt(vote_edge_weight), for the per-vote pixel check and the rebuild)
    k = 4 if p.vote_edge_weight > 0 else 3
    scale = torch.tensor([1.0, 1.0, 1.0, math.sqrt(p.vote_edge_weight)][:k], device=frame.device).view(k, 1, 1)
    tgt_check = target[:k] * scale
    voted = weighted_vote(key_out[0], nnf, err, p.patch_size // 2, p.vote_sharpness, key_guides[:k] * scale,
                          tgt_check, p.vote_pixel_sigma)
    out, rebuilt = voted[:3], voted[3:]
    err = rebuild_error(rebuilt, tgt_check, p.fuse_window)
    if p.warp_candidate:
        # near a key the chained flow is nearly exact and its (sub-pixel) warp beats any patch re-assembly: take it
        # per pixel where the key's source warped the same way matches the frame over the patch clearly better
        # than the synthesis's (integer) source patches do. Style and source are warped in one pass.
        warped = sample(torch.cat([key_out, key_src], 1), to_key, "bicubic" if p.warp_bicubic else "bilinear")[0]
        warp, src_warp = warped[:3].clamp(0, 255), warped[3:]
        d_warp = ((src_warp - frame[0]) ** 2).sum(0)
        use = box_mean(d_warp, p.patch_size) <= p.warp_margin * colour_error(frame[0], key_src[0], nnf[0], nnf[1],
                                                                             p.patch_size)
        out = torch.where(use, warp, out)
        rebuilt = torch.cat([torch.where(use, src_warp, rebuilt[:3]), rebuilt[3:]])
        if k == 4:   # the same terms as the rebuild's error
            d_warp = d_warp + p.vote_edge_weight * ((edge_guide(src_warp[None])[0, 0] - target[3]) ** 2)
        err = torch.where(use, box_mean(d_warp, p.fuse_window), err)
    return (out, err, rebuilt[:3]) if with_source else (out, err)


def box_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """[H, W] or [C, H, W] -> the mean over the k x k window around each pixel (the window clipped at the border)."""
    return x if k <= 1 else F.avg_pool2d(x[None], k, 1, k // 2, count_include_pad=False)[0]


def rebuild_error(rebuilt: torch.Tensor, frame: torch.Tensor, window: int) -> torch.Tensor:
    """Per pixel the squared error (summed over channels) of a rebuilt source [C, H, W] against the frame's [C, H, W],
    averaged over the window x window box around it (clipped at the border): [H, W]; or of a batch, [M, C, H, W] ->
    [M, H, W]. The choice between the two keys here, `propagation: auto`'s choice between methods and the flow
    blend's weights all rank candidates by it."""
    return box_mean(((rebuilt - frame) ** 2).sum(-3), window)


def keep_better(best: Optional[torch.Tensor], err: Optional[torch.Tensor], cand: torch.Tensor,
                err_cand: torch.Tensor) -> tuple:
    """(best, err) updated per pixel with a candidate image and its rebuild error (`rebuild_error`; the error
    broadcasts over the image's channels): where the candidate's error is lower it replaces the best so far (ties
    keep the earlier). best / err None: the candidate is the first. How the flow blend and non-local means choose,
    per pixel, between a key carried along the direct and along the chained flow."""
    if best is None:
        return cand, err_cand
    take = err_cand < err
    return torch.where(take, cand, best), torch.where(take, err_cand, err)


def colour_error(frame: torch.Tensor, key_src: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor,
                 patch_size: int) -> torch.Tensor:
    """Per pixel the patch mean of the squared RGB difference (summed over channels) between frame [3, H, W] and
    the key's source read at the field (ny, nx) [H, W] (in-image source pixels): [H, W]."""
    return box_mean(((key_src[:, ny.long(), nx.long()] - frame) ** 2).sum(0), patch_size)


def weighted_vote(style: torch.Tensor, nnf: torch.Tensor, err: torch.Tensor, r: int, sharpness: float,
                  source: Optional[torch.Tensor] = None, frame: Optional[torch.Tensor] = None,
                  pixel_sigma: float = 0.0) -> torch.Tensor:
    """Patch voting weighted by each patch's synthesis error: target pixel p averages the style value every covering
    patch q (centred within r of p) proposes, style[n(q) + p - q], with weight exp(-err(q) / (s * mean err)) (s =
    `sharpness`; 0: equal weights), so poorly matching patches do not blur the well matching ones.

    With `source` (the key's source guides [K, Hs, Ws], e.g. its colours) their vote is appended to the output
    (channels C..C+K-1), and with `pixel_sigma` > 0 each vote is also weighted by how well the source pixel it
    proposes matches `frame` (the frame's guides [K, H, W]) at p, exp(-|source[n(q) + p - q] - frame[p]|^2 /
    pixel_sigma): where patches of two motions overlap (an object's outline), each pixel keeps the votes of its own
    side instead of a blend of both. style [C, Hs, Ws], nnf [2, H, W], err [H, W]. Returns [C (+K), H, W]."""
    h, w = err.shape
    ws = style.shape[2]
    both = style if source is None else torch.cat([style, source])
    flat = both.reshape(both.shape[0], -1).t().contiguous()      # channels last: one gather reads a whole pixel
    c = style.shape[0]
    frame_cl = frame.permute(1, 2, 0) if pixel_sigma > 0 else None
    # weights in the log domain with a running per-pixel maximum (as a streaming softmax): a pixel whose votes all
    # match poorly still gets their weighted mean, where exp() of the raw weights would underflow to 0 / 0
    # (the floors keep a vanishing sharpness or sigma, 1e-320, from turning the weights into inf / NaN: such a value
    # means "the best vote only", which these finite scales give)
    scale = (sharpness * err.mean().clamp_min(1e-6)).clamp_min(1e-12)
    log_wt = -(err - err.min()) / scale if sharpness > 0 else torch.zeros_like(err)  # (a common offset cancels)
    inv_sigma = 1.0 / max(pixel_sigma, 1e-12)
    total = both.new_zeros((h, w, both.shape[0]))
    count = err.new_zeros((h, w))
    top = torch.full_like(err, -math.inf)
    at = nnf[0].long() * ws + nnf[1].long()                     # flat source index of each patch centre
    for oy in range(-r, r + 1):
        y0, y1 = max(0, oy), min(h, h + oy)
        for ox in range(-r, r + 1):
            x0, x1 = max(0, ox), min(w, w + ox)
            idx = at[y0 - oy:y1 - oy, x0 - ox:x1 - ox] + (oy * ws + ox)
            vals = flat.index_select(0, idx.reshape(-1)).view(y1 - y0, x1 - x0, -1)
            lw = log_wt[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            if pixel_sigma > 0:
                d = vals[..., c:] - frame_cl[y0:y1, x0:x1]
                lw = lw - (d * d).sum(-1) * inv_sigma
            old = top[y0:y1, x0:x1]
            new = torch.maximum(old, lw)
            keep, ww = torch.exp(old - new), torch.exp(lw - new)
            total[y0:y1, x0:x1] = total[y0:y1, x0:x1] * keep[..., None] + ww[..., None] * vals
            count[y0:y1, x0:x1] = count[y0:y1, x0:x1] * keep + ww
            top[y0:y1, x0:x1] = new
    total = total.permute(2, 0, 1)
    return total / count.clamp_min(1e-30)


def _key_guides(key_src: torch.Tensor, key_out: torch.Tensor) -> torch.Tensor:
    """The key's own guides in the order `synthesize` builds the target's: [9, H, W]."""
    _, _, h, w = key_src.shape
    pos = _positions(h, w, key_src.device) * (255.0 / max(h, w))
    return torch.cat([key_src, edge_guide(key_src), pos, key_out], 1)[0]


def histogram_blend(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Contrast-preserving blend of two images [3, H, W] by alpha [H, W] (weight of a), equal to a or b where
    alpha is 1 or 0. A plain mix of two different textures loses contrast (wash-out): its variance is
    alpha^2 var a + (1 - alpha)^2 var b + the covariance, not alpha var a + (1 - alpha) var b. Here the mix's
    deviations from its local mean (window x window) are rescaled so its local variance is the latter, at most by
    1 / sqrt(alpha^2 + (1 - alpha)^2) (the histogram-preserving blend of two independent textures) and never below
    1. Where a and b agree the plain mix already keeps their contrast, so nothing changes: no halo, no shift in
    flat colours, which rescaling around each image's global mean would cause."""
    beta = 1 - alpha
    mix = alpha * a + beta * b

    def local_var(x, mean):
        return (box_mean(x * x, window) - mean * mean).clamp_min(0)

    mu = box_mean(mix, window)
    var_mix = local_var(mix, mu)
    var_want = alpha * local_var(a, box_mean(a, window)) + beta * local_var(b, box_mean(b, window))
    limit = 1 / torch.sqrt(alpha * alpha + beta * beta)
    gain = torch.sqrt(var_want / var_mix.clamp_min(1e-6)).clamp(min=1.0)
    gain = torch.minimum(gain, limit.expand_as(gain))
    return mu + (mix - mu) * gain


def _dct_matrix(n: int, device) -> torch.Tensor:
    k = torch.arange(n, device=device, dtype=torch.float64)
    m = torch.cos(math.pi * (k[None] + 0.5) * k[:, None] / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


def poisson_fuse(guide: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, lam: float = 0.05) -> torch.Tensor:
    """Screened Poisson (gradient-domain) fusion with Neumann borders, solved exactly by a DCT-II:
    argmin_u |grad u - (gx, gy)|^2 + lam |u - guide|^2. guide [C, H, W]; gx, gy [C, H, W] forward differences
    (last column / row ignored)."""
    c, h, w = guide.shape
    # divergence of the target field (backward differences of forward-difference gradients)
    gx = gx.clone()
    gy = gy.clone()
    gx[..., -1] = 0
    gy[..., -1, :] = 0
    div = gx - F.pad(gx, (1, 0))[..., :-1] + gy - F.pad(gy, (0, 0, 1, 0))[..., :-1, :]
    my, mx = _dct_matrix(h, guide.device), _dct_matrix(w, guide.device)
    rhs = lam * guide - div
    r = my @ rhs @ mx.t()
    ly = 2 - 2 * torch.cos(math.pi * torch.arange(h, device=guide.device) / h)
    lx = 2 - 2 * torch.cos(math.pi * torch.arange(w, device=guide.device) / w)
    u = r / (lam + ly[:, None] + lx[None, :])
    return my.t() @ u @ mx


def _grads(x: torch.Tensor) -> tuple:
    gx = F.pad(x[..., 1:] - x[..., :-1], (0, 1))
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return gx, gy


def fuse(a: torch.Tensor, err_a: torch.Tensor, b: torch.Tensor, err_b: torch.Tensor, t: float,
         poisson: bool, soften: int = 1) -> torch.Tensor:
    """Per-pixel choice by error (the nearer key wins ties: the errors are weighted by 0.5 + t and 1.5 - t),
    softened over soften x soften (1: a hard choice) and blended with `histogram_blend`; with `poisson` the
    gradients of the chosen synthesis are re-integrated around it."""
    choose_a = (err_a * (0.5 + t) <= err_b * (1.5 - t)).float()
    # a hard choice (soften 1) is a or b at every pixel, which the blend leaves as they are
    out = torch.where(choose_a > 0.5, a, b) if soften <= 1 else histogram_blend(a, b, box_mean(choose_a, soften))
    if poisson:
        ax, ay = _grads(a)
        bx, by = _grads(b)
        hard = choose_a > 0.5
        out = poisson_fuse(out, torch.where(hard, ax, bx), torch.where(hard, ay, by))
    return out


def patch_gap(frames: Sequence[torch.Tensor], src_a: torch.Tensor, out_a: torch.Tensor,
              src_b: Optional[torch.Tensor], out_b: Optional[torch.Tensor],
              flow: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], params: PatchParams = PatchParams(),
              backend: Optional[str] = None, with_source: bool = False,
              flows: Optional[GapFlows] = None) -> Iterator[torch.Tensor]:
    """Yield the stylised in-between frames of one gap in order, [3, H, W] float 0..255 each (with `with_source`:
    [6, H, W], the rebuilt source frame, fused by the same per-pixel choice, in channels 3..5).

    frames: the M in-between source frames [3, H, W] 0..255 (after key a, before key b); src_a/out_a: key a's
    source and stylised frame [3, H, W]; src_b/out_b likewise or None (no later key: key a alone); flow: a
    `FlowEstimator`; backend: of the op (None: the global switch); flows: this gap's `gap_flows`, if already
    computed. Flows are chained frame to frame toward each key, so large motion over long gaps is followed."""
    m = len(frames)
    if m == 0:
        return
    back, fwd, to_a, to_b = flows if flows is not None else gap_flows(frames, src_a, src_b, flow)
    ga = _key_guides(src_a[None], out_a[None])
    gb = _key_guides(src_b[None], out_b[None]) if src_b is not None else None
    chained = params.temporal_guide == "previous" and params.w_temporal > 0   # weight 0: no guide to carry

    def one(j: int, to_key, steps, key_src, key_out, guides, prev):
        # prev: this direction's output for the frame one step nearer the key ([3, H, W]; the key itself first),
        # carried one step along the frame-to-frame flow steps[j] (Ebsynth's temporal guide)
        tg = sample(prev[None], steps[j][None]) if chained else None
        o, e, *r = synthesize(frames[j][None], to_key[j], key_src[None], key_out[None], guides, params, backend,
                              with_source, temporal=tg)
        return o, e, r

    from_b = [None] * m   # with the "previous" guide, b's direction for the whole gap, run from key b back to a
    if src_b is not None and chained:
        prev = out_b
        for j in reversed(range(m)):
            from_b[j] = one(j, to_b, fwd, src_b, out_b, gb, prev)
            prev = from_b[j][0]
    prev = out_a
    for j in range(m):
        a, err_a, ra = one(j, to_a, back, src_a, out_a, ga, prev)
        prev = a
        a = torch.cat([a, *ra])
        if src_b is None:
            yield a
            continue
        b, err_b, rb = from_b[j] if from_b[j] is not None else one(j, to_b, fwd, src_b, out_b, gb, None)
        b = torch.cat([b, *rb])
        yield fuse(a, err_a, b, err_b, (j + 1) / (m + 1), params.poisson, params.fuse_soften)
