"""Predicted vs measured peak GPU memory (issue 28): fresco.memory's meta-tensor trace against the card.

Rows:
- GPU-BASELINE.md's cases (decoder layer 3's optimisation, the SD1.5 UNet forward) for "baseline" (the measured
  program, fresco.memory.baseline_optimize), "reference" and "fused" (this project's optimize_features): predicted
  on meta tensors; on CUDA also run with GPU-BASELINE's protocol (one warm-up, empty_cache, reset_peak_memory_stats,
  peak = max_memory_allocated during the call - memory_allocated before it) and the ratio printed;
- with DIR/e2e.json from benchmarks.e2e (the GPU check's end-to-end stage, run first): fresco.memory.plan_batch of
  the same batch (no text encoder) against its measured peak per stage, weights included.

    python -m benchmarks.memory_check --out DIR [--tiny]

--tiny: the same rows at tiny shapes (N=2, 40 channels, 8x12 features of 64x96 frames; the tiny UNet) for the CPU
dry run of the GPU check, where the programs run on CPU tensors and nothing is measured. Writes DIR/memory-check.json
and DIR/memory-check.md."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from benchmarks.harness import write_results
from fresco import memory as M

TINY_ROWS = [("tiny L3, N=2", "optimize", 2, 40, (8, 12), (64, 96), True, True, None),
             ("tiny L3, N=2, temporal only", "optimize", 2, 40, (8, 12), (64, 96), False, True, None),
             ("tiny UNet forward, N=2, latent 8²", "unet", 2, 4, (8, 8), (64, 64), False, False, None)]


def _measure(fn, device: torch.device) -> Optional[float]:
    """Peak MiB of fn() above what was allocated before it (GPU-BASELINE's protocol); None off CUDA (fn still runs)."""
    fn()  # warm-up (kernels compiled, workspaces allocated)
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / M.MiB


def measured_rows(rows, device: torch.device, tiny: bool) -> List[Dict]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    out = []
    unet = real_unet = None
    for case, kind, n, c, size, image, sp, tp, published in rows:
        h, w = size
        H, W = image
        if kind == "unet":
            unet = unet or M.sd15_models(tiny=tiny, controlnet=False, vae=False).unet
            preds = {"all": M.trace_unet_forward(n, size, unet) / M.MiB}
            if real_unet is None:
                from diffusers import UNet2DConditionModel
                from fresco.models.sd import unet_config
                real_unet = UNet2DConditionModel(**unet_config(tiny)).to(device, dtype).eval()
            x = torch.randn(2 * n, 4, h, w, device=device, dtype=dtype)
            emb = torch.randn(2 * n, 77, real_unet.config.cross_attention_dim, device=device, dtype=dtype)

            def run_unet():
                with torch.no_grad():
                    real_unet(x, 500, encoder_hidden_states=emb, return_dict=False)
            runs = {"all": run_unet}
        else:
            preds = {which: M.trace_optimize(n, c, size, image, spatial=sp, temporal=tp, which=which) / M.MiB
                     for which in ("baseline", "reference", "fused")}
            sample = torch.randn(2 * n, c, h, w, device=device, dtype=dtype)
            ref = torch.randn(2 * n, c, h, w, device=device, dtype=dtype)
            flows = (torch.randn(n, 2, H, W, device=device), torch.randn(n, 2, H, W, device=device),
                     (torch.rand(n, H, W, device=device) > 0.9).float(),
                     (torch.rand(n, H, W, device=device) > 0.9).float())
            runs = {"baseline": lambda: M.baseline_optimize(sample, ref, *flows, spatial=sp, temporal=tp)}
            for backend in ("reference", "fused"):
                runs[backend] = (lambda b: lambda: M.pipeline_optimize(sample, ref, *flows, spatial=sp, temporal=tp,
                                                                       backend=b))(backend)
        for which, pred in preds.items():
            meas = _measure(runs[which], device)
            out.append(dict(case=case, program=which, predicted_mib=round(pred, 1),
                            published_mib=published, measured_mib=None if meas is None else round(meas, 1),
                            ratio=None if meas is None else round(pred / meas, 3),
                            ratio_published=None if published is None else round(pred / published, 3)))
            print(json.dumps(out[-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def e2e_rows(out_dir: str, tiny: bool) -> List[Dict]:
    """The plan of each e2e.json row's batch against its measured per-stage peaks (weights included)."""
    path = os.path.join(out_dir, "e2e.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    rows = []
    for r in data["rows"]:
        if r.get("error") or not r.get("peak_gib"):
            continue
        h, w = (int(v) for v in r["size"].split("x"))
        dtype = getattr(torch, r["dtype"])
        plan = M.plan_batch((w, h), r["n"], backend=r["backend"], tiny=r["model"].startswith("tiny"), dtype=dtype,
                            vae_chunk=1)
        weights = plan.weights - M.sd15_models(tiny=r["model"].startswith("tiny"), dtype=dtype).text_weights
        st = plan.all_stages(1)
        pred = {"reference": st["reference pass"], "denoise": max(st["unet+controlnet"], st["optimisation"]),
                "decode": st["vae decode (chunk 1)"]}
        for stage, p in pred.items():
            meas = r["peak_gib"].get(stage)
            rows.append(dict(case=f"e2e {r['model']} {r['size']} N={r['n']} {r['backend']}", program=stage,
                             predicted_mib=round((weights + p) / M.MiB, 1), published_mib=None,
                             measured_mib=None if meas is None else round(meas * 1024, 1),
                             ratio=None if not meas else round((weights + p) / M.MiB / (meas * 1024), 3),
                             ratio_published=None))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: List[Dict], device: str) -> str:
    lines = [f"Peak memory, predicted (fresco.memory, meta tensors) vs measured ({device})", "",
             "| case | program | predicted MiB | measured MiB | ratio | GPU-BASELINE MiB | ratio to it |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['program']} | {r['predicted_mib']} | {r['measured_mib'] or '-'} | "
                     f"{r['ratio'] or '-'} | {r['published_mib'] or '-'} | {r['ratio_published'] or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for memory-check.json/.md (and where e2e.json is read)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU dry run)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    rows = measured_rows(TINY_ROWS if a.tiny else M.MEASURED, device, a.tiny)
    rows += e2e_rows(a.out, a.tiny)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU: nothing measured"
    write_results(a.out, "memory-check", {"device": name, "seconds": time.perf_counter() - t0, "rows": rows},
                  markdown(rows, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
