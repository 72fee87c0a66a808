"""torch.compile (`FrescoSettings.compile`, `fresco render --compile`) against eager on FRESCO batches of one size:
time per denoising step, graphs compiled by the first and by the second batch (the second must compile none),
graph breaks, the fused-op nodes inside the graphs, and the largest latent difference from eager.

Model, frames, flow, control images and background as in benchmarks.e2e (random SD1.5-architecture weights,
synthetic frames with their analytic flow). Per row: eager warm-up call, then batch A eager, batch A compiled (the
compile), batch B (other content, same size) compiled and eager: "per step" is the denoise stage's time over the
run steps of batch B, warm in both modes. Rows: every constraint on, and without the feature optimisation (whose
Adam loop stays eager under --compile, so this row shows the compiled part's share).

    python -m benchmarks.compile_check --out DIR [--size 512x512] [--n 8] [--steps 20] [--opt-iters 20]
    python -m benchmarks.compile_check --out DIR --tiny     # the tiny model at 64x64, N=4, 6 steps (CPU)

Writes DIR/compile.json and DIR/compile.md."""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Dict, List, Optional

import torch
from torch._dynamo.utils import counters

from benchmarks.e2e import synthetic_batch
from benchmarks.harness import write_results


def _row(pipe, batches, label: str, backend_name: str, steps: int, opt_iters: int, **kw) -> Dict:
    from fresco.pipeline.compiled import CountingBackend
    torch._dynamo.reset()
    counters.clear()
    backend = CountingBackend(backend_name)
    pipe.compile_backend = backend
    common = dict(num_inference_steps=steps, opt_iters=opt_iters, seed=0, **kw)

    def call(batch, compile_: bool):
        frames, flow, edges, bg, cond, uncond = batch
        pipe.flow = flow
        t0 = time.perf_counter()
        out = pipe(frames, prompt_embeds=cond, negative_prompt_embeds=uncond, control_images=edges, background=bg,
                   compile=compile_, **common)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    a, b = batches
    call(a, False)  # eager warm-up
    eager_a, _ = call(a, False)
    comp_a, first_s = call(a, True)
    n_first = len(backend.graphs)
    comp_b, _ = call(b, True)
    eager_b, _ = call(b, False)
    run_steps = steps - comp_b.steps["num_warmup_steps"]
    return dict(row=label, steps=steps, run_steps=run_steps, opt_iters=opt_iters, backend=backend_name,
                eager_step_s=eager_b.timings["denoise"] / run_steps,
                compiled_step_s=comp_b.timings["denoise"] / run_steps,
                first_compiled_batch_s=first_s, graphs_first_batch=n_first,
                graphs_second_batch=len(backend.graphs) - n_first,
                graph_breaks=sum(counters["graph_break"].values()),
                fresco_op_nodes=dict(backend.op_nodes()),
                max_latent_diff=max((eager_a.latents - comp_a.latents).abs().max().item(),
                                    (eager_b.latents - comp_b.latents).abs().max().item()),
                latent_std=eager_b.latents.std().item(), events_equal=eager_b.events == comp_b.events)


def markdown(info: Dict, rows: List[Dict]) -> str:
    lines = [f"torch.compile vs eager ({info['model']}, {info['size']}, N={info['n']}, {info['device']}, torch "
             f"{info['torch']}):", "",
             "| row | eager s/step | compiled s/step | speed-up | 1st compiled batch s | graphs (1st batch) | "
             "graphs (2nd batch) | graph breaks | fresco op nodes | max latent diff (std) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["fresco_op_nodes"].items())) or "-"
        lines.append(f"| {r['row']} | {r['eager_step_s']:.3f} | {r['compiled_step_s']:.3f} | "
                     f"{r['eager_step_s'] / r['compiled_step_s']:.2f}x | {r['first_compiled_batch_s']:.1f} | "
                     f"{r['graphs_first_batch']} | {r['graphs_second_batch']} | {r['graph_breaks']} | {ops} | "
                     f"{r['max_latent_diff']:.2e} ({r['latent_std']:.2f}) |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("benchmarks", "out"))
    ap.add_argument("--size", default="512x512", help="HxW")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--opt-iters", type=int, default=20)
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    ap.add_argument("--tiny", action="store_true", help="the tiny model at 64x64, N=4, 6 steps, 2 Adam iterations")
    args = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size: HxW in pixels, e.g. 512x512, got {args.size!r}")
    if args.tiny:
        (h, w), args.n, args.steps, args.opt_iters = (64, 64), 4, 6, 2

    from fresco.pipeline import FrescoPipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    made = [synthetic_batch(args.n, h, w, device, seed=seed) for seed in (0, 1)]
    # each batch's analytic flow (set per call) keeps OpenCV out, as in benchmarks.e2e
    pipe = FrescoPipeline.tiny(seed=0, device=device, dtype=dtype, sd15_widths=not args.tiny, text_encoder=False,
                               flow=made[0][1])
    dim = pipe.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(77, dim, generator=g), torch.randn(77, dim, generator=g)
    batches = [(*m, cond, uncond) for m in made]
    info = dict(model="tiny-random" if args.tiny else "sd15-random", size=f"{h}x{w}", n=args.n,
                device=torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.machine()}, "
                f"{torch.get_num_threads()} threads)", torch=torch.__version__)
    rows = [_row(pipe, batches, "every constraint", args.backend, args.steps, args.opt_iters),
            _row(pipe, batches, "no feature optimisation", args.backend, args.steps, args.opt_iters,
                 feature_optimization=False)]
    write_results(args.out, "compile", dict(info=info, rows=rows), markdown(info, rows))
    ok = all(r["graphs_second_batch"] == 0 and r["events_equal"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
