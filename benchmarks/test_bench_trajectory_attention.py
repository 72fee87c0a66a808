"""trajectory_attention: fused (Triton on CUDA, C++ on CPU) vs the published gather -> masked SDPA -> argsort-scatter
path (vs its torch.compile on GPU); forward only (inference op) at the FRESCO attention shapes.

GPU: up_blocks.3 [2N, 64*64, 320] 8 heads D=40 and up_blocks.2 [2N, 32*32, 640] 8 heads D=80, N = 8 and 16, latent
64x64 and 64x112, fp16. CPU: tiny shapes (harness check), or with FRESCO_BENCH_SHAPES=sd up3 and up2 at N=8, 64x64, fp32."""
import os

import pytest
import torch

import fresco_kernels as fk
from benchmarks.harness import DEVICE, ON_GPU, PROVIDERS, provider_fn, run_bench

# (name, heads, D, latent downscale) of the FRESCO self-attention layers
LAYERS = {"up3": (8, 40, 1), "up2": (8, 80, 2)}


def shapes():
    """{"up3-N8-64x64": (N, h, w, heads, D), ...}"""
    if ON_GPU:
        ns, latents = (8, 16), ((64, 64), (64, 112))
    elif os.environ.get("FRESCO_BENCH_SHAPES") == "sd":
        ns, latents = (8,), ((64, 64),)
    else:
        return {"tiny-N2-8x8-H8-D40": (2, 8, 8, 8, 40), "tiny-N4-8x12-H8-D80": (4, 8, 12, 8, 80)}
    return {f"{name}-N{n}-{lh}x{lw}": (n, lh // s, lw // s, heads, d)
            for n in ns for lh, lw in latents for name, (heads, d, s) in LAYERS.items()}


SHAPES = shapes()
DTYPE = torch.float16 if ON_GPU else torch.float32


def make_inputs(n, h, w, heads, d, chunks=2):
    hw = h * w
    q, k, v = (torch.randn(chunks * n, hw, heads * d, device=DEVICE, dtype=DTYPE) for _ in range(3))
    # trajectories as flow makes them: near-identity permutations (each pixel moves a few pixels)
    fwd = torch.stack([torch.arange(hw)] + [torch.argsort(torch.arange(hw) + torch.randn(hw) * 2 * w * f)
                                            for f in range(1, n)]).to(DEVICE)
    breaks = (torch.rand(n, hw) < 0.1).int()
    breaks[0] = 0
    segment = torch.cumsum(breaks, 0).int().to(DEVICE)
    return q, k, v, fwd, segment


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_trajectory_attention(benchmark, shape, provider):
    n, h, w, heads, d = shape
    q, k, v, fwd, segment = make_inputs(*shape)
    fn = provider_fn(
        provider,
        lambda *a: fk.trajectory_attention(*a, 0.2, heads, 2, check_mapping=False, backend="fused"),
        lambda *a: fk.trajectory_attention_reference(*a, 0.2, heads, 2))

    def fwd_call():
        with torch.no_grad():
            return fn(q, k, v, fwd, segment)

    # ideal traffic: read q, k, v, write out (+ the mapping and segment ids)
    nbytes = 4 * q.numel() * q.element_size() + fwd.numel() * 8 + segment.numel() * 4
    run_bench(benchmark, fwd_call, op="trajectory_attention", provider=provider, mode="fwd",
              shape=f"{2 * n}x{h * w}x{heads * d}-{h}x{w}", bytes_moved=nbytes)
