"""flow_warp: fused vs reference (vs compiled reference on GPU); fwd, bwd, fwd+bwd at the SD1.5 decoder shapes."""
import pytest
import torch

import fresco_kernels as fk
from benchmarks.harness import DEVICE, MODES, PROVIDERS, decoder_shapes, modes, provider_fn, run_bench

SHAPES = decoder_shapes()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_flow_warp(benchmark, shape, provider, mode):
    B, C, H, W = shape
    dtype = torch.float32
    x = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)
    flow = (torch.randn(B, 2, H, W, device=DEVICE) * 2).requires_grad_()
    fn = provider_fn(provider, lambda a, f: fk.flow_warp(a, f, backend="fused"), fk.flow_warp_reference)
    calls = modes(lambda: fn(x, flow), [x, flow])
    e = x.element_size()
    # ideal traffic: fwd reads x + flow, writes out; bwd reads grad_out + x + flow, writes grad_x + grad_flow
    fwd_bytes = 2 * x.numel() * e + flow.numel() * 4
    bwd_bytes = 3 * x.numel() * e + 2 * flow.numel() * 4
    nbytes = {"fwd": fwd_bytes, "bwd": bwd_bytes, "fwd+bwd": fwd_bytes + bwd_bytes}[mode]
    run_bench(benchmark, calls[mode], op="flow_warp", provider=provider, mode=mode,
              shape="x".join(map(str, shape)), bytes_moved=nbytes)
