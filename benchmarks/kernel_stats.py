"""Registers, spills and shared memory of the Triton kernels this process compiled and launched on the GPU, keyed
by their specialisation so that they match benchmarks.aot_check's offline rows (issue 14's first-GPU-run check).

    python -m pytest -p benchmarks.kernel_stats ...     # with FRESCO_KERNEL_STATS=FILE.jsonl: appended at the end
    python -m benchmarks.kernel_stats FILE.jsonl -- benchmarks.e2e --out DIR ...   # around a module's main()"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Dict, List

from benchmarks.kernel_spec import spec_key


def _jit(obj: Any) -> Any:
    while not hasattr(obj, "device_caches") and hasattr(obj, "fn"):
        obj = obj.fn
    return obj


def launched() -> List[Dict[str, Any]]:
    """One dict per compiled kernel that was loaded on a device (n_regs known): name, spec, n_regs, n_spills (local
    memory bytes / 4, as Triton reports it), shared bytes, warps, stages."""
    from benchmarks.aot_check import kernels
    rows = []
    for name, obj in kernels().items():
        # under TRITON_INTERPRET=1 (the CPU dry run of the GPU check) a kernel has no device caches: none launched
        for cache in getattr(_jit(obj), "device_caches", {}).values():
            for kernel in cache[0].values():
                kernel = kernel.result() if hasattr(kernel, "result") else kernel
                if getattr(kernel, "n_regs", None) is None:
                    continue
                rows.append({"kernel": name, "spec": spec_key(kernel), "n_regs": int(kernel.n_regs),
                             "n_spills": int(kernel.n_spills), "shared": int(kernel.metadata.shared),
                             "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages})
    return rows


def dump(path: str) -> None:
    with open(path, "a") as f:
        for row in launched():
            f.write(json.dumps(row) + "\n")


def pytest_sessionfinish() -> None:
    if os.environ.get("FRESCO_KERNEL_STATS"):
        dump(os.environ["FRESCO_KERNEL_STATS"])


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m benchmarks.kernel_stats OUT.jsonl -- MODULE [ARGS...]", file=sys.stderr)
        return 2
    out, module, args = argv[0], argv[2], argv[3:]
    try:
        rc = importlib.import_module(module).main(args)
    finally:
        dump(out)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
