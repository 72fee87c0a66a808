"""Turn a pytest-benchmark JSON written through benchmarks/harness.py into Markdown tables (for RESULTS.md).

    python -m benchmarks.report bench.json > bench.md"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


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


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.report BENCH.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        sys.stdout.write(render(json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
