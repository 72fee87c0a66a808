"""Non-keyframes by guided patch synthesis (Ebsynth-style, "Stylizing Video by Example", Jamriška et al. 2019), the
`propagation: patch` method: each in-between frame is re-assembled from patches of the stylised keys before and
after it (`fresco_kernels.patch_synthesis`), guided by the frames' colour and edges, by positions and by the key's
stylised frame, both carried along optical flow chained frame to frame. Each direction's output is voted with
weights that fall with each patch's synthesis error (so a few poor patches do not blur the good ones), and per pixel
the key warped along the chained flow replaces it where the key's source, read along the flow, matches the frame at
least as well as the synthesis's source patches (near a key the flow is nearly exact). The two directions are chosen
per pixel by their error and fused with histogram-preserving blending and, optionally, gradient-domain (Poisson)
fusion. Works on one gap between two keys at a time (memory bounded by the gap, flat in video length)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from fresco_kernels import patch_synthesis


@dataclass(frozen=True)
class PatchParams:
    """Knobs of the patch propagation (integer guide weights of the op's squared patch distance)."""
    patch_size: int = 5
    levels: int = 4
    em_iters: int = 3
    pm_iters: int = 1
    search_radius: int = 4
    w_colour: int = 6       # per RGB channel of the source frames
    w_edge: int = 4         # the frames' edge strength
    w_position: int = 2     # per coordinate channel, coordinates carried along the chained flow
    w_temporal: int = 2     # per channel of the key's stylised frame carried along the chained flow
    style_weight: int = 1   # EM coherence of the synthesised style
    uniformity: int = 0
    vote_sharpness: float = 0.5  # error-weighted vote: weight exp(-err / (s * mean err)) per patch; 0 = plain vote
    warp_candidate: bool = True  # per pixel, the key warped along the chained flow where its colour error is lower
    warp_bicubic: bool = True    # that warp bicubic (sharper) rather than bilinear
    poisson: bool = False
    seed: int = 0


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


def chain_to_key(step_flows: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Flows to a key chained frame by frame: step_flows[j] [1, 2, H, W] maps frame j to the frame one step nearer
    the key (step_flows[0] maps the frame next to the key onto the key). Returns the composed flows frame j -> key:
    F_j(p) = f_j(p) + F_{j-1}(p + f_j(p))."""
    out: List[torch.Tensor] = []
    for f in step_flows:
        out.append(f if not out else f + sample(out[-1], f))
    return out


def _positions(h: int, w: int, device) -> torch.Tensor:
    """[1, 2, H, W] pixel coordinates (y, x)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([ys, xs])[None]


def synthesize(frame: torch.Tensor, to_key: torch.Tensor, key_src: torch.Tensor, key_out: torch.Tensor,
               key_guides: torch.Tensor, p: PatchParams, backend: Optional[str] = None) -> tuple:
    """One direction: frame [1, 3, H, W] from the key (source key_src, stylised key_out [1, 3, H, W], key_guides
    from `_key_guides`) along to_key [1, 2, H, W] (frame -> key). Returns (out [3, H, W] 0..255, err [H, W])."""
    _, _, h, w = frame.shape
    scale = 255.0 / max(h, w)
    pos = _positions(h, w, frame.device)
    tgt_pos = (pos + to_key.flip(1)) * scale                       # where the key's pixel sits, as (y, x)
    temporal = sample(key_out, to_key)
    target = torch.cat([frame, edge_guide(frame), tgt_pos, temporal], 1)[0]
    weights = [p.w_colour] * 3 + [p.w_edge] + [p.w_position] * 2 + [p.w_temporal] * 3
    init = torch.round(pos + to_key.flip(1))[0].to(torch.int32)
    out, nnf, err = patch_synthesis(key_out[0], key_guides, target, weights, style_weight=p.style_weight,
                                    init_nnf=init, patch_size=p.patch_size, levels=p.levels, em_iters=p.em_iters,
                                    pm_iters=p.pm_iters, search_radius=p.search_radius, uniformity=p.uniformity,
                                    seed=p.seed, backend=backend)
    if p.vote_sharpness > 0:
        out = weighted_vote(key_out[0], nnf, err, p.patch_size // 2, p.vote_sharpness)
    if p.warp_candidate:
        # near a key the chained flow is nearly exact and its (sub-pixel) warp beats any patch re-assembly: take it
        # per pixel where the key's source, read along the flow, matches the frame over the patch at least as well
        # as the synthesis's source patches do
        ny = init[0].clamp(0, h - 1)
        nx = init[1].clamp(0, w - 1)
        e_warp = colour_error(frame[0], key_src[0], ny, nx, p.patch_size)
        e_syn = colour_error(frame[0], key_src[0], nnf[0], nnf[1], p.patch_size)
        use = e_warp <= e_syn
        warp = sample(key_out, to_key, "bicubic")[0].clamp(0, 255) if p.warp_bicubic else temporal[0]
        out = torch.where(use, warp, out)
        err = torch.where(use, e_warp * p.w_colour, err)
    return out, err


def colour_error(frame: torch.Tensor, key_src: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor,
                 patch_size: int) -> torch.Tensor:
    """Per pixel the patch mean of the squared RGB difference (summed over channels) between frame [3, H, W] and
    the key's source read at the field (ny, nx) [H, W] (in-image source pixels): [H, W]."""
    d = ((key_src[:, ny.long(), nx.long()] - frame) ** 2).sum(0)
    return F.avg_pool2d(d[None, None], patch_size, 1, patch_size // 2, count_include_pad=False)[0, 0]


def weighted_vote(style: torch.Tensor, nnf: torch.Tensor, err: torch.Tensor, r: int, sharpness: float
                  ) -> torch.Tensor:
    """Patch voting weighted by each patch's synthesis error: target pixel p averages the style value every covering
    patch q (centred within r of p) proposes, style[n(q) + p - q], with weight exp(-err(q) / (s * mean err)), so
    poorly matching patches do not blur the well matching ones. style [C, Hs, Ws], nnf [2, H, W], err [H, W]."""
    h, w = err.shape
    wt = torch.exp(-err / (sharpness * err.mean().clamp_min(1e-6)))
    total = style.new_zeros((style.shape[0], h, w))
    count = err.new_zeros((h, w))
    ny, nx = nnf[0].long(), nnf[1].long()
    for oy in range(-r, r + 1):
        y0, y1 = max(0, oy), min(h, h + oy)
        for ox in range(-r, r + 1):
            x0, x1 = max(0, ox), min(w, w + ox)
            qy, qx = ny[y0 - oy:y1 - oy, x0 - ox:x1 - ox], nx[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            ww = wt[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            total[:, y0:y1, x0:x1] += ww * style[:, qy + oy, qx + ox]
            count[y0:y1, x0:x1] += ww
    return total / count.clamp_min(1e-30)


def _key_guides(key_src: torch.Tensor, key_out: torch.Tensor) -> torch.Tensor:
    """The key's own guides in the order `synthesize` builds the target's: [9, H, W]."""
    _, _, h, w = key_src.shape
    pos = _positions(h, w, key_src.device) * (255.0 / max(h, w))
    return torch.cat([key_src, edge_guide(key_src), pos, key_out], 1)[0]


def histogram_blend(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Histogram-preserving blend of two images [3, H, W] by alpha [H, W] (weight of a): the blended deviations from
    each image's mean are rescaled by 1 / sqrt(alpha^2 + (1 - alpha)^2), so a mix keeps the contrast of its inputs
    instead of washing out (equal to a or b where alpha is 1 or 0)."""
    mu_a = a.mean(dim=(1, 2), keepdim=True)
    mu_b = b.mean(dim=(1, 2), keepdim=True)
    beta = 1 - alpha
    norm = torch.sqrt(alpha * alpha + beta * beta)
    return alpha * mu_a + beta * mu_b + (alpha * (a - mu_a) + beta * (b - mu_b)) / norm


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
         poisson: bool) -> torch.Tensor:
    """Per-pixel choice by synthesis error (the nearer key wins ties), softened over 5x5 and blended with
    `histogram_blend`; with `poisson` the gradients of the chosen synthesis are re-integrated around it."""
    choose_a = (err_a * (0.5 + t) <= err_b * (1.5 - t)).float()
    alpha = F.avg_pool2d(choose_a[None, None], 5, 1, 2, count_include_pad=False)[0, 0]
    out = histogram_blend(a, b, alpha)
    if poisson:
        ax, ay = _grads(a)
        bx, by = _grads(b)
        hard = choose_a > 0.5
        out = poisson_fuse(out, torch.where(hard, ax, bx), torch.where(hard, ay, by))
    return out


def patch_gap(frames: Sequence[torch.Tensor], src_a: torch.Tensor, out_a: torch.Tensor,
              src_b: Optional[torch.Tensor], out_b: Optional[torch.Tensor],
              flow: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], params: PatchParams = PatchParams(),
              backend: Optional[str] = None) -> Iterator[torch.Tensor]:
    """Yield the stylised in-between frames of one gap in order, [3, H, W] float 0..255 each.

    frames: the M in-between source frames [3, H, W] 0..255 (after key a, before key b); src_a/out_a: key a's
    source and stylised frame [3, H, W]; src_b/out_b likewise or None (no later key: key a alone); flow: a
    `FlowEstimator`; backend: of the op (None: the global switch). Flows are chained frame to frame toward each
    key, so large motion over long gaps is followed."""
    m = len(frames)
    if m == 0:
        return
    seq = [src_a] + list(frames) + ([src_b] if src_b is not None else [])
    x = torch.stack(seq)
    back = flow(x[1:m + 1], x[0:m])                                  # frame j -> j-1 (toward a)
    to_a = chain_to_key([f[None] for f in back])
    to_b = None
    if src_b is not None:
        fwd = flow(x[1:m + 1], x[2:m + 2])                           # frame j -> j+1 (toward b)
        to_b = chain_to_key([f[None] for f in reversed(fwd)])[::-1]
    ga = _key_guides(src_a[None], out_a[None])
    gb = _key_guides(src_b[None], out_b[None]) if src_b is not None else None
    for j in range(m):
        fr = frames[j][None]
        a, err_a = synthesize(fr, to_a[j], src_a[None], out_a[None], ga, params, backend)
        if src_b is None:
            yield a
            continue
        b, err_b = synthesize(fr, to_b[j], src_b[None], out_b[None], gb, params, backend)
        yield fuse(a, err_a, b, err_b, (j + 1) / (m + 1), params.poisson)
