"""Turn a pytest-benchmark JSON written through benchmarks/harness.py into Markdown tables (for RESULTS.md), and
optionally into PNG charts: the fused op's speed-up over the reference per op, mode and shape, and peak memory
against N and resolution (from the benchmark rows' peak_mib, GPU runs, and/or a benchmarks.e2e JSON).

    python -m benchmarks.report bench.json > bench.md
    python -m benchmarks.report bench.json --plots DIR [--e2e e2e.json] [--label CPU] > bench.md"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional


def _fmt(v, nd=2):
    if v is None:
        return "–"
    return f"{v:.{nd}f}"


def render(data: dict) -> str:
    rows = [b["extra_info"] for b in data["benchmarks"] if "op" in b.get("extra_info", {})]
    if not rows:
        return "no harness benchmarks in this file\n"
    m = {k[len("machine_"):]: v for k, v in rows[0].items() if k.startswith("machine_")}
    lines = ["Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), ""]
    ref = {(r["op"], r["shape"], r["mode"]): r["median_s"] for r in rows if r["provider"] == "reference"}
    by_op = defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    for op, rs in by_op.items():
        lines += [f"### {op}", "",
                  "| shape | mode | provider | median ms | p20–p80 ms | speed-up vs ref | peak MiB | GB/s | % copy BW | TFLOP/s | % TC peak |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(rs, key=lambda r: (r["shape"], r["mode"], r["provider"])):
            base = ref.get((r["op"], r["shape"], r["mode"]))
            speed = base / r["median_s"] if base else None
            lines.append(
                f"| {r['shape']} | {r['mode']} | {r['provider']} | {_fmt(r['median_s'] * 1e3, 3)} | "
                f"{_fmt(r['p20_s'] * 1e3, 3)}–{_fmt(r['p80_s'] * 1e3, 3)} | {_fmt(speed, 1)} | {_fmt(r.get('peak_mib'), 1)} | "
                f"{_fmt(r.get('gbps'), 1)} | {_fmt(r.get('pct_copy_bw'), 1)} | {_fmt(r.get('tflops'), 2)} | {_fmt(r.get('pct_tc_peak'), 1)} |")
        lines.append("")
    return "\n".join(lines)


def _rows(data: dict) -> List[dict]:
    return [b["extra_info"] for b in data["benchmarks"] if "op" in b.get("extra_info", {})]


def _shape_n_res(shape: str):
    """(N, "hxw") from a harness shape string: "16x640x64x64" (B = 2N, C, h, w) -> (8, "64x64")."""
    dims = [int(v) for v in re.findall(r"\d+", shape)]
    if len(dims) == 4:
        return dims[0] // 2, f"{dims[2]}x{dims[3]}"
    return None, shape


def plot_speedup(data: dict, path: str, label: str) -> Optional[str]:
    """Bars of reference time / fused time per (shape, mode), one panel per op. Returns the path, or None."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = _rows(data)
    ref = {(r["op"], r["shape"], r["mode"]): r["median_s"] for r in rows if r["provider"] == "reference"}
    by_op: Dict[str, list] = defaultdict(list)
    for r in rows:
        base = ref.get((r["op"], r["shape"], r["mode"]))
        if r["provider"] == "fused" and base:
            by_op[r["op"]].append((f"{r['shape']}\n{r['mode']}", base / r["median_s"]))
    if not by_op:
        return None
    fig, axes = plt.subplots(len(by_op), 1, figsize=(10, 2.6 * len(by_op)), squeeze=False)
    for ax, (op, vals) in zip(axes[:, 0], sorted(by_op.items())):
        names, speed = zip(*sorted(vals))
        ax.bar(range(len(speed)), speed, color=["tab:green" if v >= 1 else "tab:red" for v in speed])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(speed)), names, fontsize=6)
        ax.set_ylabel("speed-up ×")
        ax.set_yscale("log")
        ax.set_title(f"{op}: fused vs reference ({label})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(data: Optional[dict], e2e: Optional[dict], path: str, label: str) -> Optional[str]:
    """Peak memory against N (one line per resolution and provider/backend): the ops' rows with peak_mib and the
    end-to-end rows (peak_total_gib). Returns the path, or None when neither holds a peak."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series: Dict[str, Dict[int, float]] = defaultdict(dict)
    for r in _rows(data) if data else []:
        n, res = _shape_n_res(r["shape"])
        if r.get("peak_mib") is not None and n and r["mode"] in ("fwd+bwd", "fwd"):
            series[f"{r['op']} {r['mode']} {res} {r['provider']}"][n] = r["peak_mib"] / 1024
    for r in (e2e or {}).get("rows", []) if isinstance(e2e, dict) else (e2e or []):
        if r.get("peak_total_gib") is not None:
            series[f"FRESCO batch {r.get('size', '')} {r.get('backend', '')}"][int(r.get("n", 0))] = r["peak_total_gib"]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, pts in sorted(series.items()):
        ns = sorted(pts)
        ax.plot(ns, [pts[n] for n in ns], marker="o", label=name)
    ax.set_xlabel("N (frames per batch)")
    ax.set_ylabel("peak memory GiB")
    ax.set_title(f"peak memory vs N and resolution ({label})", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", help="pytest-benchmark JSON written through benchmarks/harness.py")
    ap.add_argument("--plots", default=None, help="folder for speedup.png and memory.png (needs matplotlib)")
    ap.add_argument("--e2e", default=None, help="a benchmarks.e2e JSON for the memory chart")
    ap.add_argument("--label", default=None, help="chart label (default: the machine's device, e.g. CPU or the GPU)")
    a = ap.parse_args(argv)
    with open(a.bench) as f:
        data = json.load(f)
    sys.stdout.write(render(data))
    if a.plots:
        rows = _rows(data)
        label = a.label or (rows[0].get("machine_gpu") or rows[0].get("machine_device", "?")).upper() if rows else "?"
        e2e = None
        if a.e2e:
            with open(a.e2e) as f:
                e2e = json.load(f)
        os.makedirs(a.plots, exist_ok=True)
        for made in (plot_speedup(data, os.path.join(a.plots, "speedup.png"), label),
                     plot_memory(data, e2e, os.path.join(a.plots, "memory.png"), label)):
            print(f"report: wrote {made}" if made else "report: a chart had no data and was skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
