"""End-to-end FRESCO on one keyframe batch: time per stage and peak memory for the fused and reference backends.

SD1.5-architecture random weights (UNet, VAE, ControlNet; no download, no text encoder: prompts go in as random
embeddings), synthetic frames made with torch (a panning texture with a moving disc), their analytic flow (the pan),
control images from a torch edge filter, a background map, every FRESCO constraint on, the published 20-step
schedule. Nothing here needs OpenCV or transformers, only torch, diffusers and this package.

    python -m benchmarks.e2e --out DIR [--sizes 512x512,512x896] [--n 8,16] [--backends fused,reference]
    python -m benchmarks.e2e --out DIR --tiny          # CPU smoke run: tiny widths, 64x64, N=8, 4 steps

Sizes are HxW. Results accumulate in DIR/e2e.json (one row per model/size/N/backend/settings; a re-run replaces its
row) and DIR/e2e.md is rewritten from all rows, so a long matrix can be split over several invocations. A
configuration that runs out of GPU memory is recorded as OOM and the next one runs."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

GIB = 2 ** 30


def synthetic_batch(n: int, h: int, w: int, device, seed: int = 0, pan: Tuple[float, float] = (3.0, 1.0)):
    """(frames [n, h, w, 3] uint8, flow-estimator callable, edges [n, h, w, 3] uint8, background [n, h, w]).

    Frame i is a smooth random texture shifted by i * pan pixels (x, y) with a disc moving the other way; the
    estimator returns the exact pan between any two of these frames (the disc is left to the occlusion test)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    pad = int(math.ceil(max(abs(pan[0]), abs(pan[1])) * n)) + 8
    tex = torch.rand(1, 3, (h + 2 * pad) // 8 + 1, (w + 2 * pad) // 8 + 1, generator=g)
    tex = F.interpolate(tex, size=(h + 2 * pad, w + 2 * pad), mode="bicubic", align_corners=False).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    frames = []
    for i in range(n):
        dx, dy = int(round(i * pan[0])), int(round(i * pan[1]))
        img = tex[0, :, pad + dy:pad + dy + h, pad + dx:pad + dx + w].clone()
        cx, cy, r = w * (0.7 - 0.04 * i), h * (0.4 + 0.02 * i), min(h, w) / 8
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r
        img[:, disc] = torch.tensor([0.92, 0.25, 0.15])[:, None]
        frames.append(img)
    frames = (torch.stack(frames) * 255).round().to(torch.uint8)
    # the frame index each image was made from, recovered from its content: frames are passed in batch order
    index = {frames[i].sum().item(): i for i in range(n)}

    def flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        out = torch.empty(src.shape[0], 2, h, w, device=src.device)
        for b in range(src.shape[0]):
            a = index[src[b].round().to(torch.uint8).sum().item()]
            c = index[dst[b].round().to(torch.uint8).sum().item()]
            # src(p) matches dst(p + flow(p)): content at p in frame a sits at p - (c - a) * pan in frame c
            out[b, 0] = -(round(c * pan[0]) - round(a * pan[0]))
            out[b, 1] = -(round(c * pan[1]) - round(a * pan[1]))
        return out

    gray = frames.float().mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    mag = torch.sqrt(F.conv2d(gray, kx, padding=1) ** 2 + F.conv2d(gray, kx.transpose(2, 3), padding=1) ** 2)
    edges = ((mag > 120).to(torch.uint8) * 255).expand(-1, 3, -1, -1)
    bg = torch.ones(n, h, w)
    bg[:, (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2) <= 1] = 0.0
    return (frames.permute(0, 2, 3, 1).contiguous().numpy(), flow, edges.permute(0, 2, 3, 1).contiguous().numpy(),
            bg)


def _key(row: Dict) -> str:
    return "|".join(str(row[k]) for k in ("model", "size", "n", "backend", "steps", "opt_iters", "device"))


def _load(path: str) -> List[Dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


def _save(out: str, rows: List[Dict], info: Dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "e2e.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    stages = ["flow", "control", "prepare", "encode", "reference", "denoise", "decode"]
    lines = [f"# FRESCO end to end, one batch ({info.get('device_name', info['device'])}, torch {info['torch']})",
             "",
             "Random SD1.5-architecture weights, every constraint on (cross-frame, spatial-guided and temporal "
             "attention, 4-layer feature optimisation, background smoothing), ControlNet, CFG; seconds per stage, "
             "peak GiB allocated per stage (CUDA).", "",
             "| model | HxW | N | backend | dtype | steps | iters | total s | " + " | ".join(stages) +
             " | peak GiB | finite |",
             "|" + "---|" * (10 + len(stages))]
    for r in sorted(rows, key=lambda r: (r["model"], r["size"], r["n"], r["backend"])):
        if r.get("error"):
            cells = [r["error"]] + [""] * (len(stages) + 1)
        else:
            t, p = r["timings"], r["peak_gib"]
            cells = [f"{r['total_s']:.2f}"] + [
                f"{t.get(s, 0):.2f}" + (f" ({p[s]:.1f})" if s in p else "") for s in stages] + [
                "-" if r["peak_total_gib"] is None else f"{r['peak_total_gib']:.2f}"]
        lines.append(f"| {r['model']} | {r['size']} | {r['n']} | {r['backend']} | {r['dtype']} | {r['steps']} | "
                     f"{r['opt_iters']} | " + " | ".join(cells) + f" | {r.get('finite', '')} |")
    with open(os.path.join(out, "e2e.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("benchmarks", "out"))
    ap.add_argument("--sizes", default="512x512,512x896", help="comma-separated HxW")
    ap.add_argument("--n", default="8,16", help="comma-separated batch sizes N")
    ap.add_argument("--backends", default="fused,reference")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--opt-iters", type=int, default=20)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="tiny widths at 64x64, N=8, 4 steps (CPU smoke run)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the short warm-up call per configuration (Triton compilation/autotuning)")
    args = ap.parse_args(argv)

    from fresco.models import resolve_dtype
    from fresco.pipeline import FrescoPipeline

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    if args.tiny:
        args.sizes, args.n, args.steps = "64x64", "8", 4
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    ns = [int(v) for v in args.n.split(",")]
    backends = args.backends.split(",")
    model = "tiny-random" if args.tiny else "sd15-random"
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    json_path = os.path.join(args.out, "e2e.json")
    rows = _load(json_path)

    def no_flow(src, dst):
        raise RuntimeError("set pipe.flow to the batch's analytic flow first")

    # a callable flow estimator keeps OpenCV (the default DIS estimator) out of the benchmark's dependencies
    pipe = FrescoPipeline.tiny(seed=0, device=device, dtype=dtype, sd15_widths=not args.tiny, text_encoder=False,
                               flow=no_flow)
    dim = pipe.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(77, dim, generator=g), torch.randn(77, dim, generator=g)
    for (h, w) in sizes:
        for n in ns:
            frames, flow, edges, bg = synthetic_batch(n, h, w, device)
            pipe.flow = flow
            common = dict(prompt_embeds=cond, negative_prompt_embeds=uncond, control_images=edges, background=bg,
                          seed=0)
            for backend in backends:
                row = dict(model=model, size=f"{h}x{w}", n=n, backend=backend, steps=args.steps,
                           opt_iters=args.opt_iters, device=info.get("device_name", str(device)),
                           dtype=str(dtype).replace("torch.", ""))
                try:
                    if not args.no_warmup:
                        # the same shapes through every op once (compilation and autotuning happen here)
                        pipe(frames, num_inference_steps=4, num_warmup_steps=1, end_opt_step=3, opt_iters=1,
                             bg_smoothing_steps=[3], backend=backend, **common)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    t0 = time.perf_counter()
                    out = pipe(frames, num_inference_steps=args.steps, opt_iters=args.opt_iters, backend=backend,
                               **common)
                    row["total_s"] = time.perf_counter() - t0
                    row["timings"] = out.timings
                    row["peak_gib"] = {k: v / GIB for k, v in out.peak_memory.items()}
                    row["peak_total_gib"] = None if out.peak_memory_bytes is None else out.peak_memory_bytes / GIB
                    row["finite"] = bool(torch.isfinite(out.latents).all())
                    row["schedule"] = out.steps
                    row["events"] = {k: out.count(k) for k in sorted({e[0] for e in out.events})}
                except torch.cuda.OutOfMemoryError as e:
                    row["error"] = "OOM"
                    row["detail"] = str(e).split("\n")[0]
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows = [r for r in rows if _key(r) != _key(row)] + [row]
                _save(args.out, rows, info)
                print(json.dumps({k: row[k] for k in row if k not in ("events", "schedule")}), flush=True)
    with open(os.path.join(args.out, "e2e.md")) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
