"""The plain-PyTorch fallbacks behind the ops, as a machine without the C++ library runs them (FRESCO_NO_CPP=1, or a
build that failed to load): every op with a gradient must give the reference's gradient through autograd, and
through the fused loss-and-gradient ops the feature optimisation calls. They run in a fresh interpreter because
the choice of kernel is made once, at import."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import torch
    import fresco_kernels
    from fresco_kernels import _library
    from fresco_kernels.flow_warp.reference import flow_warp_reference
    from fresco_kernels.gram_loss.reference import gram_loss_reference
    from fresco_kernels.warp_loss.reference import warp_consistency_loss_reference
    assert set(_library.CPU_IMPL.values()) == {"reference"}, _library.CPU_IMPL
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    flow = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64) * 2
    occ = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    ref_feat = torch.nn.functional.normalize(torch.randn(4, 64, 3, generator=g, dtype=torch.float64), dim=2)

    def grads(fn, *xs):
        xs = [x.clone().requires_grad_() for x in xs]
        out = fn(*xs)
        out = out if out.dim() == 0 else (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        return [float(out)] + [t for t in torch.autograd.grad(out, xs)]

    def same(a, b, what):
        for x, y in zip(a, b):
            ok = abs(x - y) < 1e-9 if isinstance(x, float) else torch.allclose(x, y, atol=1e-9, rtol=1e-7)
            assert ok, what

    args = (flow, flow.flip(1), occ, occ.flip(2), 2)
    same(grads(lambda f: torch.ops.fresco.warp_consistency_loss(f, *args), feat),
         grads(lambda f: warp_consistency_loss_reference(f, *args), feat), "warp loss")
    loss, grad = torch.ops.fresco.warp_consistency_loss_fwd_bwd(feat, *args)
    same([float(loss), grad], grads(lambda f: warp_consistency_loss_reference(f, *args), feat), "warp loss fwd_bwd")
    with torch.no_grad():  # how the optimisation calls it
        loss, grad = torch.ops.fresco.warp_consistency_loss_fwd_bwd(feat, *args)
    same([float(loss), grad], grads(lambda f: warp_consistency_loss_reference(f, *args), feat), "no_grad fwd_bwd")
    gargs = (ref_feat, "l1", 2.0, "ieee")
    same(grads(lambda f: torch.ops.fresco.gram_loss(f, *gargs), feat),
         grads(lambda f: gram_loss_reference(f, *gargs[:3]), feat), "gram loss")
    loss, grad = torch.ops.fresco.gram_loss_fwd_bwd(feat, *gargs)
    same([float(loss), grad], grads(lambda f: gram_loss_reference(f, *gargs[:3]), feat), "gram fwd_bwd")
    x = feat[:2]
    same(grads(torch.ops.fresco.flow_warp, x, flow), grads(flow_warp_reference, x, flow), "flow_warp")
    same(grads(lambda t: torch.ops.fresco.flow_warp(t, flow), x), grads(lambda t: flow_warp_reference(t, flow), x),
         "flow_warp, x only")
    same(grads(lambda f: torch.ops.fresco.flow_warp(x, f), flow), grads(lambda f: flow_warp_reference(x, f), flow),
         "flow_warp, flow only")
    print("ok")
""")


def test_reference_fallbacks_have_gradients_without_the_cpp_library():
    env = {**os.environ, "FRESCO_NO_CPP": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
