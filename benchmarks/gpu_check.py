"""The essential GPU verification in at most 8 minutes of command time (issue 14), in priority order:
1. the CUDA parity tests (with opcheck): `pytest tests -m cuda`;
2. the warp-loss, Gram and optimisation benchmark rows at L3 (up3) for N = 8;
3. trajectory attention at up3;
4. one end-to-end FRESCO batch (512², N = 8, fused vs reference, time per stage and peak memory);
5. fresco.memory's predicted peak memory against the card: GPU-BASELINE's cases and stage 4's batch (issue 28);
6. n_regs / n_spills of every kernel those runs launched against the offline AOT tables of the same Triton
   (benchmarks/aot/aot-triton-<version>*.json, made by `make aot-check`; matched by specialisation).
Each stage runs in its own process with a share of what is left of the budget; a stage that would start with too
little time is skipped and listed. Writes OUT/gpu-check.json and OUT/gpu-check.md (plus each stage's own files).

    python -m benchmarks.gpu_check --out DIR [--budget 480]
    python -m benchmarks.gpu_check --out DIR --dry-run     # CPU, tiny shapes: every stage's script runs (CI)

Needs diffusers/transformers for stage 4: benchmarks/prepare_gpu_check.sh downloads their wheels here, the device
command installs them offline (see RESULTS.md "GPU check")."""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AOT_DIR = os.path.join(ROOT, "benchmarks", "aot")

# (name, argv after `python -m`, share of the budget it may use, bench JSON file or None, the argv of --dry-run:
# the same script and output files at tiny shapes on CPU, None = the same argv)
STAGES = [
    ("cuda parity tests", ["pytest", "tests", "-m", "cuda", "-q", "-x", "-p", "no:cacheprovider"], 0.27, None, None),
    ("L3 rows: warp loss, Gram, optimisation",
     ["pytest", "benchmarks/test_bench_warp_loss.py", "benchmarks/test_bench_gram_loss.py", "-q",
      "-p", "no:cacheprovider", "-k", "up3-N8-64x64 and not compiled"], 0.22, "bench-l3.json",
     ["pytest", "benchmarks/test_bench_warp_loss.py", "benchmarks/test_bench_gram_loss.py", "-q",
      "-p", "no:cacheprovider", "-k", "tiny-N2-C40-8x12 and not compiled"]),
    ("trajectory attention up3",
     ["pytest", "benchmarks/test_bench_trajectory_attention.py", "-q", "-p", "no:cacheprovider",
      "-k", "up3-N8-64x64 and not compiled"], 0.09, "bench-attn.json",
     ["pytest", "benchmarks/test_bench_trajectory_attention.py", "-q", "-p", "no:cacheprovider",
      "-k", "tiny-N2-8x8-H8-D40 and not compiled"]),
    ("end-to-end batch 512² N=8", ["benchmarks.e2e", "--sizes", "512x512", "--n", "8"], 0.32, None,
     ["benchmarks.e2e", "--tiny", "--backends", "fused", "--opt-iters", "1", "--no-warmup"]),
    # after the end-to-end stage: it also compares fresco.memory's plan with that stage's e2e.json
    ("memory: predicted vs measured", ["benchmarks.memory_check"], 0.10, None, ["benchmarks.memory_check", "--tiny"]),
]
MIN_STAGE_S = 20


def _run_stage(name: str, argv: List[str], limit: float, out: str, bench_json: Optional[str], stats: str,
               dry_run: bool = False) -> Dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "FRESCO_KERNEL_STATS": stats}
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if argv[0] == "pytest":
        cmd = [sys.executable, "-m", "pytest", *argv[1:], "-p", "benchmarks.kernel_stats"]
        if bench_json:
            cmd += ["--benchmark-json", os.path.join(out, bench_json)]
    else:
        cmd = [sys.executable, "-m", "benchmarks.kernel_stats", stats, "--", argv[0], *argv[1:], "--out", out]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout or ""
        rc, text = "timeout", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    slug = "".join(ch if ch.isascii() and ch.isalnum() else "-" for ch in name.lower())  # plain names travel back
    with open(os.path.join(out, f"stage-{slug}.log"), "w") as f:
        f.write(text)
    tail = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    return {"stage": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "limit_s": round(limit),
            "summary": tail[0][:200], "command": " ".join(cmd)}


def compare_with_aot(stats_path: str) -> Dict:
    """Launched kernels (GPU, this Triton) against the AOT rows of the same specialisation for this GPU's target."""
    import torch
    import triton
    major, minor = torch.cuda.get_device_capability()
    target = f"sm_{major}{minor}"
    paths = sorted(glob.glob(os.path.join(AOT_DIR, f"aot-triton-{triton.__version__}*.json")))
    launched = []
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            launched = [json.loads(line) for line in f if line.strip()]
    if not paths:
        return {"target": target, "aot_table": None, "launched": launched, "rows": [],
                "note": f"no AOT table for Triton {triton.__version__} in {AOT_DIR}"}
    aot = {}
    for path in paths:
        with open(path) as f:
            aot.update({r["spec"]: r for r in json.load(f)["rows"] if r.get("target") == target and r.get("spec")})
    rows, seen = [], set()
    for k in launched:
        if k["spec"] in seen:
            continue
        seen.add(k["spec"])
        a = aot.get(k["spec"])
        row = {"kernel": k["kernel"], "warps": k["num_warps"], "stages": k["num_stages"], "gpu_regs": k["n_regs"],
               "gpu_spill_bytes": 4 * k["n_spills"], "gpu_smem": k["shared"], "aot": a is not None}
        if a:
            row.update(aot_regs=a["regs"], aot_stack_bytes=a["stack"], aot_smem=a["smem"], variant=a["variant"],
                       config=a["config"], agree=(a["regs"] == k["n_regs"] and a["stack"] == 4 * k["n_spills"]
                                                  and a["smem"] == k["shared"]))
        rows.append(row)
    return {"target": target, "aot_table": ", ".join(os.path.relpath(p, ROOT) for p in paths), "rows": rows,
            "matched": sum(r["aot"] for r in rows), "agree": sum(bool(r.get("agree")) for r in rows)}


def markdown(result: Dict) -> str:
    dry = " (dry run: every stage on CPU at tiny shapes)" if result.get("dry_run") else ""
    lines = [f"GPU check{dry} ({result['device']}, torch {result['torch']}, Triton {result['triton']}): "
             f"{result['seconds']:.0f} s of {result['budget_s']} s", "",
             "| stage | rc | seconds (limit) | summary |", "|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['rc']} | {s['seconds']} ({s['limit_s']}) | {s['summary']} |")
    cmp_ = result["kernels"]
    lines += ["", f"Launched kernels vs the AOT table ({cmp_.get('aot_table')}, {cmp_['target']}): "
              f"{cmp_.get('matched', 0)} matched, {cmp_.get('agree', 0)} agree on regs, spill and smem. "
              + cmp_.get("note", ""), "",
              "| kernel | launch constexprs | config | GPU regs | AOT regs | GPU spill B | AOT stack B | GPU smem | AOT smem |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in cmp_["rows"]:
        config = r.get("config", "w{} s{}".format(r["warps"], r["stages"]))
        lines.append(f"| `{r['kernel']}` | {r.get('variant', '?')} | {config} "
                     f"| {r['gpu_regs']} | {r.get('aot_regs', '-')} | {r['gpu_spill_bytes']} | "
                     f"{r.get('aot_stack_bytes', '-')} | {r['gpu_smem']} | {r.get('aot_smem', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu-check.json/.md and the stages' files")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of command time in all (default 480; 1200 with --dry-run)")
    ap.add_argument("--dry-run", dest="dry_run", action="store_true",
                    help="every stage on CPU at tiny shapes, with its real script, arguments and output files (CI)")
    a = ap.parse_args(argv)
    a.budget = a.budget if a.budget is not None else (1200.0 if a.dry_run else 480.0)
    if a.budget <= 0:
        ap.error(f"--budget: a positive number of seconds, got {a.budget}")
    import torch
    import triton
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_check: needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    stats = os.path.join(a.out, "kernels-launched.jsonl")
    if os.path.exists(stats):
        os.remove(stats)
    t0 = time.perf_counter()
    stages = []
    remaining_share = sum(stage[2] for stage in STAGES)
    for name, argv_, share, bench_json, dry_argv in STAGES:
        left = a.budget - (time.perf_counter() - t0) - 15  # the comparison and the report
        limit = left * share / remaining_share if remaining_share else left
        remaining_share -= share
        if limit < MIN_STAGE_S:
            stages.append({"stage": name, "rc": "skipped", "seconds": 0, "limit_s": round(limit), "summary":
                           "not enough budget left", "command": ""})
            continue
        stages.append(_run_stage(name, dry_argv or argv_ if a.dry_run else argv_, limit, a.out, bench_json, stats,
                                 a.dry_run))
        print(json.dumps(stages[-1]), flush=True)
    kernels = {"target": "none", "rows": [], "note": "dry run: no kernel ran on a GPU"} if a.dry_run else \
        compare_with_aot(stats)
    device = "CPU" if a.dry_run else torch.cuda.get_device_name(0)
    result = {"device": device, "torch": torch.__version__, "triton": triton.__version__, "dry_run": a.dry_run,
              "budget_s": a.budget, "stages": stages, "kernels": kernels}
    result["seconds"] = time.perf_counter() - t0
    with open(os.path.join(a.out, "gpu-check.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(os.path.join(a.out, "gpu-check.md"), "w") as f:
        f.write(md)
    print(md)
    return 0 if all(s["rc"] == 0 for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
