"""flow_correspondence: fused (Triton on CUDA, C++ on CPU) vs the vectorised PyTorch reference vs the port of the
published per-pixel loop (on the same device), per batch of N frames at feature size.

GPU: N = 8 and 16 at 64x64, 32x32 and 64x112 (the loop only at N8-32x32: it takes seconds). CPU: one 64x64 pair
(the per-pair target) and a small batch; there the loop is also timed over plain Python lists (`list-loop`), which is
how a CPU port without per-pixel tensor indexing would run."""
from typing import Tuple

import pytest
import torch

import fresco_kernels as fk
from benchmarks.harness import DEVICE, ON_GPU, run_bench
from fresco_kernels.correspondence.reference import flow_correspondence_loop


def shapes():
    """{"N8-64x64": (N, h, w), ...}"""
    if ON_GPU:
        return {f"N{n}-{h}x{w}": (n, h, w) for n in (8, 16) for h, w in ((64, 64), (32, 32), (64, 112))}
    return {"N2-64x64": (2, 64, 64), "N8-32x32": (8, 32, 32)}


SHAPES = shapes()
LOOP_SHAPES = {"N8-32x32"} if ON_GPU else set(SHAPES)
PROVIDERS = ("fused", "reference", "loop") + (() if ON_GPU else ("list-loop",))


def make_inputs(n, h, w):
    """Flow-like inputs: a smooth global motion plus per-pixel noise (collisions happen), 10% occlusion."""
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    shift = torch.randn(n - 1, 2, 1, 1) * 2 + 0.05 * rows
    flow = shift + torch.randn(n - 1, 2, h, w)
    occ = torch.rand(n - 1, h, w) < 0.1
    frames = torch.rand(n, 3, h, w) * 2 - 1
    return flow.to(DEVICE), occ.to(DEVICE), frames.to(DEVICE)


def _pair_map_lists(fx, fy, occ, tgt, src, h, w) -> Tuple[list, list]:
    """The published loop over plain Python lists (Python floats are fp64: for timing only, not bit-exact)."""
    hw = h * w
    mapping = [-1] * hw
    mask = [False] * hw
    for s in range(hw):
        ty, tx = round(s // w + fy[s]), round(s % w + fx[s])
        if occ[s] or not (0 <= ty < h and 0 <= tx < w):
            continue
        mask[s] = True
        t = ty * w + tx
        prev = mapping[t]
        if prev == -1:
            mapping[t] = s
            continue
        e_prev = sum((src[c][prev] - tgt[c][t]) ** 2 for c in range(3)) / 3
        e_new = sum((src[c][s] - tgt[c][t]) ** 2 for c in range(3)) / 3
        if e_prev > e_new:
            mask[prev] = False
            mapping[t] = s
        else:
            mask[s] = False
    unused = iter([s for s in range(hw) if not mask[s]])
    unlinked = [m == -1 for m in mapping]
    return [next(unused) if u else m for m, u in zip(mapping, unlinked)], unlinked


def list_loop(flow, occ, frames):
    n, _, h, w = frames.shape
    fwd = [list(range(h * w))]
    for i in range(n - 1):
        m, _ = _pair_map_lists(flow[i, 0].flatten().tolist(), flow[i, 1].flatten().tolist(), occ[i].flatten().tolist(),
                               frames[i].reshape(3, -1).tolist(), frames[i + 1].reshape(3, -1).tolist(), h, w)
        fwd.append([m[p] for p in fwd[-1]])
    return fwd


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_flow_correspondence(benchmark, name, provider):
    if provider in ("loop", "list-loop") and name not in LOOP_SHAPES:
        pytest.skip("the per-pixel loop takes seconds per batch: timed at the smallest shape only")
    n, h, w = SHAPES[name]
    flow, occ, frames = make_inputs(n, h, w)
    fn = {
        "fused": lambda: fk.flow_correspondence(flow, occ, frames, backend="fused"),
        "reference": lambda: fk.flow_correspondence(flow, occ, frames, backend="reference"),
        "loop": lambda: flow_correspondence_loop(flow, occ, frames),
        "list-loop": lambda: list_loop(flow, occ, frames),
    }[provider]
    hw = h * w
    # ideal traffic: flow, occlusion, both frames of each pair, out fwd_mapping + segment
    nbytes = (n - 1) * hw * (8 + 1 + 24) + n * hw * 12
    slow = provider in ("loop", "list-loop")
    run_bench(benchmark, fn, op="flow_correspondence", provider=provider, mode="fwd", shape=name,
              bytes_moved=nbytes, rounds=3 if slow else None)
