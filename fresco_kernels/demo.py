"""A short, offline demonstration of the ops: generate a clip with known motion, warp each frame onto the next
along its flow with the fused op and with the reference, and print their agreement and timing.

    python -m fresco_kernels.demo [--frames 8] [--size 128 192]"""
from __future__ import annotations

import argparse
import time

import torch

import fresco_kernels as fk


def synthetic_clip(n: int, h: int, w: int, shift=(3.0, 1.0), seed: int = 0):
    """n frames [n,3,h,w] in 0..255 of a smooth random texture translating by `shift` (x, y) pixels per frame,
    and the exact backward flows [n-1,2,h,w] (frame i+1 -> frame i: every pixel came from p - shift)."""
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(1, 3, (h + n * 8) // 8 + 2, (w + n * 8) // 8 + 2, generator=g)
    tex = torch.nn.functional.interpolate(big, scale_factor=8, mode="bicubic", align_corners=False).clamp(0, 1) * 255
    frames = []
    for i in range(n):
        ox, oy = 4 + n * 4 - i * shift[0], 4 + n * 4 - i * shift[1]
        ys = torch.arange(h, dtype=torch.float32) + oy
        xs = torch.arange(w, dtype=torch.float32) + ox
        gy = 2 * ys / (tex.shape[2] - 1) - 1
        gx = 2 * xs / (tex.shape[3] - 1) - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        frames.append(torch.nn.functional.grid_sample(tex, grid, align_corners=True)[0])
    bwd = torch.empty(n - 1, 2, h, w)
    bwd[:, 0], bwd[:, 1] = -shift[0], -shift[1]
    return torch.stack(frames), bwd


def _timed(fn, repeat=5):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(128, 192), metavar=("H", "W"))
    args = ap.parse_args(argv)
    if args.frames < 2:
        ap.error(f"--frames must be >= 2, got {args.frames}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    frames, bwd = synthetic_clip(args.frames, *args.size)
    frames, bwd = frames.to(device), bwd.to(device)
    print(f"fresco_kernels {fk.__version__} on {device}; CPU kernels: {fk.cpp_status()}")
    print(f"clip: {args.frames} frames {args.size[0]}x{args.size[1]}, texture moving (3, 1) px/frame")

    src, dst = frames[:-1], frames[1:]
    fused = fk.flow_warp(src, bwd, backend="fused")
    ref = fk.flow_warp(src, bwd, backend="reference")
    inside = torch.zeros_like(dst[:, :1], dtype=torch.bool)
    inside[..., 2:, 4:] = True
    print(f"flow_warp  fused vs reference: max |diff| = {(fused - ref).abs().max().item():.2e} (0..255 scale)")
    print(f"           warp(frame i, flow) vs frame i+1 (inside the frame): "
          f"mean |err| = {(fused - dst).abs().masked_select(inside.expand_as(dst)).mean().item():.3f}")
    t_f = _timed(lambda: fk.flow_warp(src, bwd, backend="fused"))
    t_r = _timed(lambda: fk.flow_warp(src, bwd, backend="reference"))
    print(f"           time: fused {t_f * 1e3:.2f} ms, reference {t_r * 1e3:.2f} ms")

    # the temporal loss over the clip's cyclic pairs (incl. the wrap pair N-1 -> 0), with the frames standing in for
    # decoder features under CFG (two chunks)
    n = args.frames
    step_flow = -bwd[:1]
    fwd = torch.cat([step_flow.expand(n - 1, -1, -1, -1), -(n - 1) * step_flow])
    bwd_all = torch.cat([-step_flow.expand(n - 1, -1, -1, -1), (n - 1) * step_flow])
    fwd_occ, bwd_occ = fk.occlusion_from_flows(fwd, bwd_all, frames)
    feat = torch.cat([frames, frames]).div(255).requires_grad_()
    args_ = (fwd, bwd_all, fwd_occ[:, None], bwd_occ[:, None], 2)
    print(f"occlusion  {fwd_occ.mean().item() * 100:.1f}% of forward, {bwd_occ.mean().item() * 100:.1f}% of backward pixels occluded")
    losses, grads = {}, {}
    for backend in ("fused", "reference"):
        feat.grad = None
        loss = fk.warp_consistency_loss(feat, *args_, backend=backend)
        loss.backward()
        losses[backend], grads[backend] = loss.item(), feat.grad.clone()
    print(f"warp_consistency_loss (~0: the clip is consistent along these flows)  "
          f"fused {losses['fused']:.2e}  reference {losses['reference']:.2e}  "
          f"max |grad diff| = {(grads['fused'] - grads['reference']).abs().max().item():.1e}")

    def step(backend):
        feat.grad = None
        fk.warp_consistency_loss(feat, *args_, backend=backend).backward()

    print(f"           fwd+bwd time: fused {_timed(lambda: step('fused')) * 1e3:.2f} ms, "
          f"reference {_timed(lambda: step('reference')) * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
