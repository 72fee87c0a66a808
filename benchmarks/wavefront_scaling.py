"""Issue 15's scaling row: the keyframe pass of one video with B batches, sequential in one process vs the step
wavefront on K Ray actors (CPU actors and the tiny model here; GPU actors where the cluster has GPUs). Prints the
measured ratio and the ideal S*B / (S+B-1).

    python -m benchmarks.wavefront_scaling --actors 4 --batches 12 [--steps 4] [--size 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps run per batch")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args(argv)

    from fresco.config import RenderConfig
    from fresco.distributed import render_wavefront
    from fresco.distributed.cluster import connect
    from fresco.video import make_synthetic_clip, plan_batches
    from fresco.video.render import render

    # batch size 3: 3 keys in the first batch, one new key per batch after, two in the last; keys every 2 frames
    n_keys = args.batches + 3  # the published plan merges the last single key into the batch before it
    n_frames = 2 * (n_keys - 1) + 1
    assert len(plan_batches(list(range(0, n_frames, 2)), 3)) == args.batches
    tmp = Path(tempfile.mkdtemp(prefix="fresco-wavefront-"))
    clip = make_synthetic_clip(tmp / "clip", n_frames, (args.size, args.size), fps=24)

    def cfg(out):
        return RenderConfig(file_path=str(clip), save_path=str(tmp / out), prompt="a test", sd_path="tiny-random",
                            size=f"{args.size}x{args.size}", num_inference_steps=args.steps + 1, num_warmup_steps=1,
                            opt_iters=2, batch_size=3, mininterv=2, maxinterv=2, device="cpu", output="frames")

    connect(num_cpus=args.actors)
    torch.set_num_threads(1)
    seq = render(cfg("seq"), progress=False)
    wf = render_wavefront(cfg("wf"), num_actors=args.actors, progress=False)
    s, b = args.steps, args.batches
    t_seq, t_wf = seq.timings["diffusion_s"], wf.timings["diffusion_s"]
    print(f"keyframe pass, {b} batches x {s} steps, tiny model {args.size}², CPU actors, torch threads 1:")
    print(f"  sequential {t_seq:.1f} s; wavefront on {args.actors} actors {t_wf:.1f} s (incl. actor start and model "
          f"loads); ratio {t_seq / t_wf:.2f}; ideal S*B/(S+B-1) = {s * b / (s + b - 1):.2f}")


if __name__ == "__main__":
    main()
