"""The key of a compiled Triton kernel's specialisation, shared by benchmarks.aot_check (offline rows) and
benchmarks.kernel_stats (the kernels a GPU run launched), so that the two match; a module of its own so that neither
of them imports the other at load time."""
from __future__ import annotations

from typing import Any


def spec_key(kernel: Any) -> str:
    """A compiled kernel's name, argument types, constexprs, specialisation attributes, warps and stages: equal for
    the same launch on any machine with the same Triton (unlike the JIT's cache key, which holds library paths)."""
    src, md = kernel.src, kernel.metadata
    sig = ",".join(f"{k}:{v}" for k, v in src.signature.items())
    const = ",".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in src.constants.items()))
    attrs = ",".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in src.attrs.items()))
    return f"{src.name}|{sig}|{const}|{attrs}|w{md.num_warps}s{md.num_stages}"
