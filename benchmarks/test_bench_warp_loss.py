"""warp_consistency_loss: fused vs the published formula (vs compiled on GPU); fwd, bwd, fwd+bwd at the SD1.5
decoder shapes (N = 8, 16; latent 64x64 and 64x112; tiny on CPU, FRESCO_BENCH_SHAPES=sd for the SD shapes there)."""
import pytest
import torch

import fresco_kernels as fk
from benchmarks.harness import DEVICE, MODES, ON_GPU, PROVIDERS, decoder_shapes, modes, provider_fn, run_bench

SHAPES = decoder_shapes()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_warp_consistency_loss(benchmark, shape, provider, mode):
    B, C, h, w = shape
    n = B // 2
    dtype = torch.float32
    feat = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)
    ff = torch.randn(n, 2, h, w, device=DEVICE) * 2
    bf = torch.randn(n, 2, h, w, device=DEVICE) * 2
    fo = (torch.rand(n, 1, h, w, device=DEVICE) < 0.1).float()
    bo = (torch.rand(n, 1, h, w, device=DEVICE) < 0.1).float()
    fn = provider_fn(provider, lambda *a: fk.warp_consistency_loss(*a, backend="fused"),
                     fk.warp_consistency_loss_reference)
    calls = modes(lambda: fn(feat, ff, bf, fo, bo, 2), [feat])
    e = feat.element_size()
    # ideal traffic: fwd reads the features once (+ flows, occlusions); bwd writes the gradient once
    side = (ff.numel() + bf.numel() + fo.numel() + bo.numel()) * 4
    nbytes = {"fwd": feat.numel() * e + side, "bwd": feat.numel() * e,
              "fwd+bwd": 2 * feat.numel() * e + side}[mode]
    run_bench(benchmark, calls[mode], op="warp_consistency_loss", provider=provider, mode=mode,
              shape="x".join(map(str, shape)), bytes_moved=nbytes, rounds=None if ON_GPU else 3)
