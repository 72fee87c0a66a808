"""gram_loss and optimize_features: fused vs the published materialised-Gram path (vs its torch.compile on GPU).

- gram_loss per iteration (fwd = loss only, fwd+bwd = what each Adam iteration needs), L1 and L2, at the decoder
  block inputs ([2N,1280,8,8], [2N,1280,16,16], [2N,1280,32,32], [2N,640,64,64]; N = 8, 16; latent 64x64, 64x112).
  The reference compares against a stored G_ref = r̂r̂ᵀ as the published code does; that matrix's size is recorded
  as `gram_ref_mib` (it is allocated before timing, so it is not in `peak_mib`).
- the fused Gram tile precisions (tf32 default, bf16, tf32x3) at fwd+bwd, to weigh speed against accuracy.
- the whole 20-iteration optimize_features (temporal + spatial when warp_consistency_loss is present, else spatial).
FLOPs (TFLOP/s, % of the tensor-core peak): the fused algorithm's Gram products, counted for every provider alike:
fwd 2·B·hw²·C (x̂x̂ᵀ and r̂r̂ᵀ over the i <= j half), fwd+bwd 4·B·hw²·C (+ S x̂ and Sᵀx̂). The L2 closed form (C < hw)
does 4·B·hw·C² + 4·B·hw·C² instead; its rows report time and memory only.
CPU: tiny shapes (harness check) plus the issue's CPU target [2, 640, 64, 64] for gram_loss fwd+bwd."""
import pytest
import torch

import fresco_kernels as fk
from fresco.settings import FrescoSettings
from benchmarks.harness import DEVICE, ON_GPU, PROVIDERS, decoder_shapes, modes, provider_fn, run_bench
from fresco_kernels.gram_loss import gram_loss_from_gram, gram_matrix

SHAPES = decoder_shapes()
if not ON_GPU:
    SHAPES["cpu-target-N1-C640-64x64"] = (2, 640, 64, 64)
OPT_SHAPES = {k: v for k, v in SHAPES.items() if not k.startswith("cpu-target")}
ITERS = 20


def make_inputs(shape):
    B, C, h, w = shape
    feat = torch.randn(shape, device=DEVICE)
    ref = fk.normalize_features(feat + torch.randn(shape, device=DEVICE))
    return feat, ref


def gram_flops(shape, mode, reduction):
    B, C, h, w = shape
    n = h * w
    if reduction == "l2" and C < n:
        return None
    return (2 if mode == "fwd" else 4) * B * n * n * C


@pytest.mark.parametrize("reduction", ["l1", "l2"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_gram_loss(benchmark, shape, provider, mode, reduction):
    if shape == (2, 640, 64, 64) and not ON_GPU and (mode, reduction) != ("fwd+bwd", "l1"):
        pytest.skip("CPU target: fwd+bwd L1 only")
    feat, ref = make_inputs(shape)
    x = feat.requires_grad_()
    gram_ref = gram_matrix(ref)
    fn = provider_fn(provider, lambda a: fk.gram_loss(a, ref, reduction, backend="fused"),
                     lambda a: gram_loss_from_gram(a, gram_ref, reduction, 100.0))
    calls = modes(lambda: fn(x), [x])
    run_bench(benchmark, calls[mode], op=f"gram_loss-{reduction}", provider=provider, mode=mode,
              shape="x".join(map(str, shape)), flops=gram_flops(shape, mode, reduction), precision="tf32")
    benchmark.extra_info["gram_ref_mib"] = gram_ref.numel() * 4 / 2**20


@pytest.mark.skipif(not ON_GPU, reason="tile precisions only differ on tensor cores")
@pytest.mark.parametrize("precision", ["tf32", "bf16", "tf32x3"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_gram_loss_precision(benchmark, shape, precision):
    feat, ref = make_inputs(shape)
    x = feat.requires_grad_()
    calls = modes(lambda: fk.gram_loss(x, ref, "l1", precision=precision, backend="fused"), [x])
    run_bench(benchmark, calls["fwd+bwd"], op="gram_loss-l1-precision", provider=f"fused-{precision}", mode="fwd+bwd",
              shape="x".join(map(str, shape)), flops=gram_flops(shape, "fwd+bwd", "l1"),
              precision="bf16" if precision == "bf16" else "tf32")
    # accuracy of this precision: the loss and gradient vs the IEEE fp32 tiles
    loss, grad = torch.ops.fresco.gram_loss_fwd_bwd(x.detach(), ref, "l1", 100.0, precision)
    loss0, grad0 = torch.ops.fresco.gram_loss_fwd_bwd(x.detach(), ref, "l1", 100.0, "ieee")
    benchmark.extra_info["loss_rel_err"] = (abs(loss - loss0) / loss0).item()
    benchmark.extra_info["grad_rel_err"] = ((grad - grad0).abs().max() / grad0.abs().max()).item()


@pytest.mark.parametrize("reduction", ["l1", "l2"])
@pytest.mark.parametrize("provider", ["fused", "reference"])
@pytest.mark.parametrize("shape", list(OPT_SHAPES.values()), ids=list(OPT_SHAPES))
def test_optimize_features(benchmark, shape, provider, reduction):
    B, C, h, w = shape
    N = B // 2
    feat, ref = make_inputs(shape)
    flows = {}
    if hasattr(fk, "warp_consistency_loss"):
        flows = dict(fwd_flow=torch.randn(N, 2, h, w, device=DEVICE), bwd_flow=torch.randn(N, 2, h, w, device=DEVICE),
                     fwd_occ=(torch.rand(N, 1, h, w, device=DEVICE) > 0.8).float(),
                     bwd_occ=(torch.rand(N, 1, h, w, device=DEVICE) > 0.8).float())
    weight = 100.0 if reduction == "l1" else 50.0
    settings = FrescoSettings()  # the published lr and AdaIN epsilon
    run_bench(benchmark, lambda: fk.optimize_features(feat, ref=ref, **flows, iters=ITERS, reduction=reduction,
                                                      spatial_weight=weight, lr=settings.opt_lr,
                                                      adain_eps=settings.adain_eps, backend=provider),
              op=f"optimize_features-{reduction}" + ("" if flows else "-spatial-only"), provider=provider,
              mode=f"{ITERS} iters", shape="x".join(map(str, shape)),
              flops=None if gram_flops(shape, "fwd+bwd", reduction) is None else ITERS * gram_flops(shape, "fwd+bwd", reduction),
              precision="tf32", rounds=5 if ON_GPU else 2)
