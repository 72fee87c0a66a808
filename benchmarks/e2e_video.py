"""End to end on a whole clip (issue 6's GPU check): a generated clip (100 frames at 512² by default) rendered by
`fresco.video.render` with SD1.5-architecture random weights (no download): wall time and peak memory, split by stage
(keyframe selection, keyframe diffusion, propagation + encoding), as JSON + Markdown.

    PYTHONPATH=. python3 -m benchmarks.e2e_video --out OUT            # on the GPU machine
    python -m benchmarks.e2e_video --tiny --out /tmp/e2e               # CPU smoke run, tiny widths"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

from benchmarks.harness import machine


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("benchmarks", "out"))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=512, help="square frame side (a multiple of 64)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backend", default="fused", choices=("fused", "reference"))
    ap.add_argument("--tiny", action="store_true", help="tiny widths, 24 frames at 64², 4 steps (CPU smoke run)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.frames, args.size, args.steps = 24, 64, 4

    from fresco.config import RenderConfig
    from fresco.pipeline import FrescoPipeline
    from fresco.video.render import render
    from fresco.video.stylize import make_stylizer
    from fresco.video import make_synthetic_clip

    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, f"e2e_video_{args.size}_{args.backend}")
    clip = make_synthetic_clip(os.path.join(work, "clip.mp4"), args.frames, (args.size, args.size))
    cuda = torch.cuda.is_available()
    pipe = FrescoPipeline.tiny(sd15_widths=not args.tiny, device="cuda" if cuda else "cpu",
                               dtype=torch.float16 if cuda else torch.float32)
    cfg = RenderConfig(file_path=str(clip), save_path=os.path.join(work, "render"), prompt="a watercolor painting",
                       size=f"{args.size}x{args.size}", num_inference_steps=args.steps,
                       num_warmup_steps=max(1, args.steps // 4), end_opt_step=max(1, args.steps * 3 // 4),
                       mininterv=4 if args.tiny else 10, maxinterv=12 if args.tiny else 30,
                       batch_size=4 if args.tiny else 8, backend=args.backend, overwrite=True, resume=False,
                       opt_iters=2 if args.tiny else 20)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = render(cfg, make_stylizer(cfg, pipe))
    wall = time.perf_counter() - t0
    row = dict(frames=args.frames, size=args.size, steps=args.steps, backend=args.backend, keyframes=len(result.keys),
               batches=len(result.batches), wall_s=wall, **{k: v for k, v in result.timings.items()},
               peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
               peak_host_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, machine=machine())
    with open(os.path.join(args.out, "e2e_video.json"), "a") as f:
        f.write(json.dumps(row) + "\n")
    md = (f"| frames | size | steps | backend | keys | batches | wall s | keyframes s | diffusion s | propagation+I/O s "
          f"| peak GPU GiB | peak host GiB |\n|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {args.frames} | {args.size}² | {args.steps} | {args.backend} | {row['keyframes']} | {row['batches']} | "
          f"{wall:.1f} | {row.get('keyframes_s', 0):.1f} | {row.get('diffusion_s', 0):.1f} | "
          f"{row.get('propagation_s', 0):.1f} | {row['peak_gpu_gib'] if row['peak_gpu_gib'] is None else round(row['peak_gpu_gib'], 2)} | "
          f"{row['peak_host_rss_gib']:.2f} |\n")
    with open(os.path.join(args.out, "e2e_video.md"), "a") as f:
        f.write(md)
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in row["machine"].items()))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
