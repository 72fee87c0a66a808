"""The CPU targets the issues state, measured in one run: each fused C++ op against its reference at the issue's
shape (best and median of a few repeats; the machine's other load shows in the spread).

    python -m benchmarks.cpu_targets [--out DIR] [--quick]

Writes cpu-targets.json and cpu-targets.md (DIR defaults to benchmarks/out)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable, Dict, List

import torch

import fresco_kernels as fk
from benchmarks.harness import machine


def _times(fn: Callable[[], object], repeats: int) -> List[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _row(name: str, shape: str, target: str, fused: List[float], reference: List[float], unit: float = 1e3,
         per: int = 1) -> Dict:
    f, r = min(fused) / per, min(reference) / per
    return dict(case=name, shape=shape, target=target, fused_best_ms=f * unit, fused_median_ms=statistics.median(fused) / per * unit,
                reference_best_ms=r * unit, reference_median_ms=statistics.median(reference) / per * unit, speedup=r / f)


def warp_loss(repeats: int) -> List[Dict]:
    n, c, h, w = 8, 640, 64, 64
    feat = torch.randn(2 * n, c, h, w)
    ff, bf = torch.randn(n, 2, h, w) * 2, torch.randn(n, 2, h, w) * 2
    fo, bo = (torch.rand(n, 1, h, w) < 0.1).float(), (torch.rand(n, 1, h, w) < 0.1).float()

    def run(backend):
        f = feat.clone().requires_grad_()
        fk.warp_consistency_loss(f, ff, bf, fo, bo, 2, backend=backend).backward()

    def op():
        torch.ops.fresco.warp_consistency_loss_fwd_bwd(feat, ff, bf, fo, bo, 2)

    ref = _times(lambda: run("reference"), max(2, repeats // 2))
    # the public function as a caller pays for it (fresh leaf, autograd's grad * grad_output, .grad), and the
    # fused C++ op alone (loss and gradient from one call), both against the same reference autograd
    return [_row("warp_consistency_loss fwd+bwd", "[16,640,64,64]", ">= 20x the reference autograd",
                 _times(lambda: run("fused"), repeats), ref),
            _row("warp_consistency_loss_fwd_bwd op alone", "[16,640,64,64]", ">= 20x the reference autograd",
                 _times(op, repeats), ref)]


def gram(repeats: int) -> Dict:
    feat = torch.randn(2, 4096, 640)
    ref = fk.normalize_features(torch.randn(2, 4096, 640))

    def run(backend):
        f = feat.clone().requires_grad_()
        fk.gram_loss(f, ref, backend=backend).backward()

    return _row("gram_loss fwd+bwd (L1)", "[2,4096,640]", "no slower than the materialised reference",
                _times(lambda: run("fused"), repeats), _times(lambda: run("reference"), max(2, repeats // 2)))


def correspondence(repeats: int) -> Dict:
    n, h, w = 8, 64, 64
    bwd = torch.randn(n - 1, 2, h, w) * 3
    occ = torch.rand(n - 1, h, w) < 0.1
    frames = torch.rand(n, 3, h, w) * 2 - 1
    fused = _times(lambda: fk.flow_correspondence(bwd, occ, frames, backend="fused"), repeats)
    from fresco_kernels.correspondence.reference import single_pair_mapping_loop
    loop = _times(lambda: single_pair_mapping_loop(bwd[0], occ[0], frames[0], frames[1]), 1)
    # per frame pair: the fused batch covers N-1 pairs, the loop port one
    row = _row("flow_correspondence per 64x64 pair", "N=8 batch, 64x64", "<= 0.3 ms per pair",
               [t / (n - 1) for t in fused], loop)
    row["reference"] = "published per-pixel loop (port), one pair"
    return row


def trajectory(repeats: int) -> Dict:
    n, hw, heads, d = 8, 4096, 8, 40
    q, k, v = (torch.randn(2 * n, hw, heads * d) for _ in range(3))
    mapping = torch.stack([torch.arange(hw)] + [torch.randperm(hw) for _ in range(n - 1)])
    segment = torch.cumsum((torch.rand(n, hw) < 0.1).int(), 0).int()
    segment[0] = 0
    with torch.no_grad():
        fused = _times(lambda: fk.trajectory_attention(q, k, v, mapping, segment, check_mapping=False, backend="fused"), repeats)
        ref = _times(lambda: fk.trajectory_attention(q, k, v, mapping, segment, backend="reference"), max(2, repeats // 2))
    return _row("trajectory_attention (up3, D=40)", "[16,4096,320] N=8", "<= 100 ms", fused, ref)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("benchmarks", "out"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = warp_loss(args.repeats) + [fn(args.repeats) for fn in (gram, correspondence, trajectory)]
    os.makedirs(args.out, exist_ok=True)
    m = machine()
    with open(os.path.join(args.out, "cpu-targets.json"), "w") as f:
        json.dump({"machine": m, "rows": rows}, f, indent=1)
    lines = ["Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), "",
             "| case | shape | target | fused best (median) ms | reference best (median) ms | speed-up |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['shape']} | {r['target']} | {r['fused_best_ms']:.2f} ({r['fused_median_ms']:.2f}) | "
                     f"{r['reference_best_ms']:.1f} ({r['reference_median_ms']:.1f}) | {r['speedup']:.1f}x |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "cpu-targets.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
