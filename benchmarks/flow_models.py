"""Flow and saliency model costs (issue 12): time per frame pair of each flow estimator (DIS, RAFT, GMFlow) at
512x512 and 512x896, one direction and both directions (what a keyframe batch needs: GMFlow gives both from one
pass), and the background-mask cost of one keyframe batch (EGNet + the dilation rule). Random weights (the cost
does not depend on the values); GPU peak memory per row when on CUDA.

    python -m benchmarks.flow_models [--out DIR] [--device cpu|cuda] [--pairs B] [--n N] [--repeats R]
                                     [--sizes 512x512,512x896] [--skip dis,raft,gmflow,mask]

Writes flow-models.json and flow-models.md (DIR defaults to benchmarks/out)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional

import torch

from benchmarks.harness import machine, write_results
from fresco.models import egnet, gmflow
from fresco.models.flow import get_flow_estimator
from fresco.models.saliency import background_mask, get_saliency_estimator


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _times(fn: Callable[[], object], repeats: int, device: str) -> List[float]:
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _peak(fn: Callable[[], object], device: str) -> Optional[float]:
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _frames(b: int, h: int, w: int, device: str) -> torch.Tensor:
    """b frames of smooth random texture in 0..255, the next one shifted by (2, 3) pixels."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(b + 1, 3, h // 8, w // 8, generator=g) * 255, (h, w),
                                           mode="bilinear")
    return torch.roll(base, (2, 3), dims=(2, 3)).to(device), base.to(device)


class _Rows(list):
    """The result rows, each printed as soon as it is measured (CPU runs take minutes)."""

    def append(self, row: Dict) -> None:
        print(json.dumps(row), flush=True)
        super().append(row)


def run(device: str, sizes, pairs: int, n: int, repeats: int, skip, tmp: str) -> List[Dict]:
    rows = _Rows()
    paths = {"gmflow": gmflow.write_random_checkpoint(os.path.join(tmp, "gmflow.pth")),
             "sod": egnet.write_random_checkpoint(os.path.join(tmp, "sod.pth"))}
    for name in ("dis", "raft", "gmflow"):
        if name in skip:
            continue
        try:
            est = get_flow_estimator(name, device=device, gmflow_path=paths["gmflow"])
        except RuntimeError as e:  # RAFT without torchvision / weights
            rows.append(dict(case=f"flow {name}", size="-", note=str(e).split(";")[0]))
            continue
        for h, w in sizes:
            src, dst = _frames(pairs, h, w, device)
            src, dst = src[:pairs], dst[:pairs]
            one = _times(lambda: est(src, dst), repeats, device)
            bidir = getattr(est, "bidirectional", None)
            both = _times((lambda: bidir(src, dst)) if bidir else (lambda: (est(src, dst), est(dst, src))),
                          repeats, device)
            rows.append(dict(case=f"flow {name}", size=f"{h}x{w}", batch=pairs,
                             one_dir_ms_per_pair=min(one) / pairs * 1e3,
                             one_dir_median_ms=statistics.median(one) / pairs * 1e3,
                             both_dirs_ms_per_pair=min(both) / pairs * 1e3,
                             both_dirs_median_ms=statistics.median(both) / pairs * 1e3,
                             peak_gib=_peak(lambda: bidir(src, dst) if bidir else est(src, dst), device)))
    if "mask" not in skip:
        sal = get_saliency_estimator(paths["sod"], device=device)
        for h, w in sizes:
            frames = _frames(n, h, w, device)[0][:n]
            t = _times(lambda: background_mask(frames, sal), repeats, device)
            rows.append(dict(case="background mask (EGNet)", size=f"{h}x{w}", batch=n,
                             batch_ms=min(t) * 1e3, batch_median_ms=statistics.median(t) * 1e3,
                             peak_gib=_peak(lambda: background_mask(frames, sal), device)))
    return rows


def markdown(rows: List[Dict], info: Dict) -> str:
    def f(v):
        return "" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)
    lines = [f"machine: {json.dumps(info)}", "",
             "| case | size | batch | one direction ms/pair best (median) | both directions ms/pair best (median) "
             "| batch ms best (median) | peak GiB | note |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        one = f"{f(r.get('one_dir_ms_per_pair'))} ({f(r.get('one_dir_median_ms'))})" if "one_dir_ms_per_pair" in r \
            else ""
        both = f"{f(r.get('both_dirs_ms_per_pair'))} ({f(r.get('both_dirs_median_ms'))})" \
            if "both_dirs_ms_per_pair" in r else ""
        batch = f"{f(r.get('batch_ms'))} ({f(r.get('batch_median_ms'))})" if "batch_ms" in r else ""
        lines.append(f"| {r['case']} | {r['size']} | {f(r.get('batch'))} | {one} | {both} | {batch} | "
                     f"{f(r.get('peak_gib'))} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--pairs", type=int, default=None, help="frame pairs per call (default: 8 on GPU, 1 on CPU)")
    ap.add_argument("--n", type=int, default=None, help="keyframes per mask batch (default: 8 on GPU, 2 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 10 on GPU, 2 on CPU)")
    ap.add_argument("--sizes", default="512x512,512x896")
    ap.add_argument("--skip", default="", help="comma-separated: dis, raft, gmflow, mask")
    a = ap.parse_args(argv)
    gpu = a.device == "cuda"
    try:
        sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in sizes)
    except (ValueError, AssertionError):
        ap.error(f"--sizes: comma-separated HxW, e.g. 512x512,512x896, got {a.sizes!r}")
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(a.device, sizes, a.pairs or (8 if gpu else 1), a.n or (8 if gpu else 2),
                   a.repeats or (10 if gpu else 2), set(filter(None, a.skip.split(","))), tmp)
    write_results(a.out, "flow-models", dict(machine=info, rows=rows), markdown(rows, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
