"""One benchmark harness for every op: providers (fused / reference / compiled reference), modes (fwd / bwd /
fwd+bwd), timing (median, p20/p80), peak memory, achieved GB/s or TFLOP/s and their share of the device ceiling.

Used from pytest-benchmark suites (`benchmarks/test_bench_*.py`); `python -m benchmarks.report` turns the JSON
into the Markdown tables of RESULTS.md."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# torch.compile of the reference: always on GPU; on CPU only when asked (inductor's C++ builds take minutes here)
COMPILE = ON_GPU or os.environ.get("FRESCO_BENCH_COMPILE", "0") == "1"
PROVIDERS = ("fused", "reference") + (("compiled",) if COMPILE else ())
MODES = ("fwd", "bwd", "fwd+bwd")

# Dense tensor-core peaks (TFLOP/s, fp16/bf16, tf32) from the vendors' datasheets, by device-name substring.
_TC_PEAK = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0), "L4": (121.0, 60.0)}

# ---- SD1.5 shapes (`docs/architecture.md`, "Benchmarks"); decoder inputs at latent 64x64 (512²) and 64x112 (512x896) ----
# channels of each decoder block input and how much smaller than the latent it is
DECODER_LAYERS = {"up0": (1280, 8), "up1": (1280, 4), "up2": (1280, 2), "up3": (640, 1)}


def decoder_shapes(ns: Sequence[int] = (8, 16), latents: Sequence[tuple] = ((64, 64), (64, 112))) -> Dict[str, tuple]:
    """{"up3-N8-64x64": (2N, C, h, w), ...}: the inputs of unet.up_blocks[i] under CFG.

    On CPU: two tiny shapes (the harness check), or with FRESCO_BENCH_SHAPES=sd the SD1.5 shapes at N=8, 512²."""
    if not ON_GPU:
        if os.environ.get("FRESCO_BENCH_SHAPES") != "sd":
            return {"tiny-N2-C40-8x12": (4, 40, 8, 12), "tiny-N3-C64-16x16": (6, 64, 16, 16)}
        ns, latents = (8,), ((64, 64),)
    return {f"{name}-N{n}-{lh}x{lw}": (2 * n, c, lh // d, lw // d)
            for n in ns for lh, lw in latents for name, (c, d) in DECODER_LAYERS.items()}


# ---- machine info ----
def commit() -> str:
    if os.environ.get("FRESCO_COMMIT"):
        return os.environ["FRESCO_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], stderr=subprocess.DEVNULL,
                                       cwd=os.path.dirname(__file__)).decode().strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.lru_cache(None)
def machine() -> Dict[str, Any]:
    info = {"device": DEVICE, "torch": torch.__version__, "commit": commit()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if ON_GPU:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, cuda=torch.version.cuda, sm=f"{p.major}.{p.minor}", mem_gib=round(p.total_memory / 2**30, 1))
        try:
            info["driver"] = subprocess.check_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).decode().split("\n")[0].strip()
        except (OSError, subprocess.CalledProcessError):
            info["driver"] = None
    else:
        info.update(cpu_threads=torch.get_num_threads())
    info["copy_gbps"] = round(copy_bandwidth_gbps(), 1)
    return info


def write_results(out: str, stem: str, data: Dict[str, Any], md: str) -> None:
    """A benchmark's results in `out`: `stem`.json (`data`) and `stem`.md (`md`, also printed)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(md)
    print(md)


@functools.lru_cache(None)
def copy_bandwidth_gbps() -> float:
    """Measured device copy bandwidth (read + write bytes / time of a large clone): the ceiling for GB/s shares."""
    n = (1 << 28) if ON_GPU else (1 << 24)
    src = torch.empty(n, dtype=torch.float32, device=DEVICE).fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        t = _time_once(lambda: dst.copy_(src))
        times.append(t)
    return 2 * src.numel() * 4 / min(times) / 1e9


def tc_peak_tflops(precision: str = "bf16") -> Optional[float]:
    if not ON_GPU:
        return None
    name = torch.cuda.get_device_name(0)
    for key, (half, tf32) in _TC_PEAK.items():
        if key in name:
            return half if precision in ("bf16", "fp16") else tf32
    return None


# ---- timing ----
def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


def _time_once(fn: Callable[[], Any]) -> float:
    if ON_GPU:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quantile(sorted_vals: List[float], q: float) -> float:
    i = q * (len(sorted_vals) - 1)
    lo, hi = int(i), min(int(i) + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (i - lo)


def run_bench(benchmark, fn: Callable[[], Any], *, op: str, provider: str, mode: str, shape: str,
              bytes_moved: Optional[float] = None, flops: Optional[float] = None, precision: str = "bf16",
              rounds: Optional[int] = None) -> None:
    """Time `fn` with pytest-benchmark and record the numbers RESULTS.md reports in `benchmark.extra_info`.

    bytes_moved: the minimum bytes an ideal kernel reads + writes (for GB/s); flops: useful FLOPs (for TFLOP/s)."""
    fn()
    _sync()
    if ON_GPU:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

    def target():
        fn()
        _sync()

    rounds = rounds or (20 if ON_GPU else 3)
    benchmark.pedantic(target, rounds=rounds, iterations=1, warmup_rounds=1 if ON_GPU else 0)
    data = sorted(benchmark.stats.stats.data)
    median = quantile(data, 0.5)
    info = dict(op=op, provider=provider, mode=mode, shape=shape, median_s=median,
                p20_s=quantile(data, 0.2), p80_s=quantile(data, 0.8), **{f"machine_{k}": v for k, v in machine().items()})
    if ON_GPU:
        info["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    if bytes_moved:
        gbps = bytes_moved / median / 1e9
        info.update(bytes=bytes_moved, gbps=gbps, pct_copy_bw=100 * gbps / machine()["copy_gbps"])
    if flops:
        tflops = flops / median / 1e12
        info.update(flops=flops, tflops=tflops)
        peak = tc_peak_tflops(precision)
        if peak:
            info["pct_tc_peak"] = 100 * tflops / peak
    benchmark.extra_info.update(info)


# ---- modes ----
def modes(forward: Callable[[], torch.Tensor], inputs: Iterable[torch.Tensor]) -> Dict[str, Callable[[], Any]]:
    """{"fwd", "bwd", "fwd+bwd"} callables for a differentiable `forward()` over `inputs` (which require grad).

    bwd re-runs only the backward of one recorded forward (retain_graph); fwd runs under no_grad."""
    inputs = list(inputs)
    state = {}

    def fwd():
        with torch.no_grad():
            return forward()

    def bwd():
        if "out" not in state:
            state["out"] = forward()
            state["grad"] = torch.ones_like(state["out"])
        for t in inputs:
            t.grad = None
        state["out"].backward(state["grad"], retain_graph=True)

    def fwd_bwd():
        for t in inputs:
            t.grad = None
        out = forward()
        out.backward(torch.ones_like(out))

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def provider_fn(provider: str, fused: Callable, reference: Callable) -> Callable:
    """The function a provider runs: the op, the reference, or torch.compile(reference)."""
    if provider == "fused":
        return fused
    if provider == "reference":
        return reference
    if provider == "compiled":
        return _compiled(reference)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


@functools.lru_cache(None)
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)
