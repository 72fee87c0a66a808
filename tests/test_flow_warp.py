"""flow_warp: C++ (CPU op), Triton (interpreter on CPU, native on CUDA) and the public function against the
grid_sample reference: outputs and both gradients, odd sizes, special flows, low precision, opcheck, gradcheck, compile."""
import pytest
import torch

import fresco_kernels as fk
from fresco_kernels.flow_warp.triton import flow_warp_bwd, flow_warp_fwd

from _utils import assert_lowp_close, max_err

# fp32 tolerance: the kernels compute the same products as grid_sample in fp32, in another summation order
ATOL32 = 2e-5

SHAPES = {
    "B2-C5-7x9": (2, 5, 7, 9),
    "B1-C3-16x16": (1, 3, 16, 16),
    "B2-C33-13x70": (2, 33, 13, 70),
}


def make_flow(kind, B, H, W, dtype=torch.float32):
    if kind == "random":
        return torch.randn(B, 2, H, W, dtype=dtype) * 3
    if kind == "out_of_frame":
        return torch.randn(B, 2, H, W, dtype=dtype) * max(H, W)
    if kind == "integer":
        return torch.randint(-3, 4, (B, 2, H, W)).to(dtype)
    if kind == "half_pixel":
        return torch.randint(-4, 5, (B, 2, H, W)).to(dtype) + 0.5
    if kind == "zero":
        return torch.zeros(B, 2, H, W, dtype=dtype)
    raise ValueError(kind)


def run_impl(impl, x, flow, g):
    """-> (out, grad_x, grad_flow) of one implementation."""
    if impl == "triton":
        out = flow_warp_fwd(x, flow)
        gx, gf = flow_warp_bwd(g, x, flow)
        return out, gx, gf
    xr = x.detach().clone().requires_grad_()
    fr = flow.detach().clone().requires_grad_()
    fn = {"op": torch.ops.fresco.flow_warp, "public": fk.flow_warp, "reference": fk.flow_warp_reference}[impl]
    out = fn(xr, fr)
    gx, gf = torch.autograd.grad(out, [xr, fr], g)
    return out, gx, gf


@pytest.mark.parametrize("flow_kind", ["random", "out_of_frame", "integer", "half_pixel", "zero"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_matches_reference_fp32(impl, shape, flow_kind):
    B, C, H, W = shape
    x = torch.randn(shape)
    flow = make_flow(flow_kind, B, H, W)
    g = torch.randn(shape)
    ref = run_impl("reference", x, flow, g)
    got = run_impl(impl, x, flow, g)
    for name, a, b in zip(("out", "grad_x", "grad_flow"), got, ref):
        if flow_kind == "integer" and name == "grad_flow" and impl == "triton":
            # at integer sample points the flow gradient is one-sided; which side depends on the last bit of the
            # normalised-grid round trip, where Triton's fp32 division may differ from ATen's by an ulp
            continue
        assert a.shape == b.shape and a.dtype == torch.float32, name
        assert not torch.isnan(a).any(), f"{name}: NaN (an element never written)"
        assert max_err(a, b) < ATOL32 * max(1.0, b.abs().max().item()), f"{impl} {name}: {max_err(a, b)}"


def test_exact_shifts_are_exact():
    # an integer flow moves pixels: out[:, :, y, x] = x[:, :, y+dy, x+dx] (0 outside)
    x = torch.randn(1, 4, 8, 10)
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0], flow[:, 1] = 2.0, -1.0
    expected = torch.zeros_like(x)
    expected[:, :, 1:, :8] = x[:, :, :7, 2:]
    for out in (torch.ops.fresco.flow_warp(x, flow), flow_warp_fwd(x, flow)):
        assert max_err(out, expected) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["op", "triton"])
def test_low_precision(impl, dtype):
    B, C, H, W = 2, 6, 9, 11
    x = torch.randn(B, C, H, W)
    flow = make_flow("random", B, H, W)
    g = torch.randn(B, C, H, W)
    ref32 = run_impl("reference", x, flow, g)
    ref_lp = run_impl("reference", x.to(dtype), flow.to(dtype), g.to(dtype))
    got = run_impl(impl, x.to(dtype), flow.to(dtype), g.to(dtype))
    for name, a, r, r32 in zip(("out", "grad_x", "grad_flow"), got, ref_lp, ref32):
        assert a.dtype == dtype, name
        assert_lowp_close(a, r, r32, f"{impl} {dtype} {name}")


def test_fp32_flow_with_half_features():
    x = torch.randn(2, 4, 8, 8)
    flow = make_flow("random", 2, 8, 8)
    out = torch.ops.fresco.flow_warp(x.half(), flow)
    assert out.dtype == torch.float16
    assert max_err(out, fk.flow_warp_reference(x, flow)) < 1e-2


def test_channels_last_and_permuted_inputs():
    x = torch.randn(2, 8, 6, 7).to(memory_format=torch.channels_last)
    flow = make_flow("random", 2, 6, 7).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    ref = fk.flow_warp_reference(x.contiguous(), flow.contiguous())
    for out in (torch.ops.fresco.flow_warp(x, flow), flow_warp_fwd(x, flow)):
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert max_err(out, ref) < ATOL32


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_opcheck(layout, grad):
    x = torch.randn(2, 3, 5, 6)
    flow = make_flow("random", 2, 5, 6)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "permuted":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
        flow = flow.transpose(2, 3).contiguous().transpose(2, 3)
    x.requires_grad_(grad)
    flow.requires_grad_(grad)
    torch.library.opcheck(torch.ops.fresco.flow_warp.default, (x, flow))
    g = torch.randn(2, 3, 5, 6)
    torch.library.opcheck(torch.ops.fresco.flow_warp_backward.default, (g, x.detach(), flow.detach(), True, grad))


def test_gradcheck_fp64():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    # keep sample points away from integer coordinates, where bilinear weights have kinks
    flow = (torch.rand(1, 2, 5, 6, dtype=torch.float64) * 0.8 + 0.1 + torch.randint(-2, 2, (1, 2, 5, 6))).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fk.flow_warp(a, b), (x, flow))


def test_compile_fullgraph_fwd_bwd():
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    flow = make_flow("random", 2, 6, 7).requires_grad_()
    fn = torch.compile(lambda a, b: (fk.flow_warp(a, b) ** 2).sum(), fullgraph=True, backend="aot_eager")
    loss = fn(x, flow)
    loss.backward()
    x2 = x.detach().clone().requires_grad_()
    f2 = flow.detach().clone().requires_grad_()
    (fk.flow_warp_reference(x2, f2) ** 2).sum().backward()
    assert max_err(x.grad, x2.grad) < 1e-4 and max_err(flow.grad, f2.grad) < 1e-3


def test_backend_switch():
    x, flow = torch.randn(1, 2, 4, 5), make_flow("random", 1, 4, 5)
    with fk.use_backend("reference"):
        assert fk.get_backend() == "reference"
        a = fk.flow_warp(x, flow)
    assert fk.get_backend() == "fused"
    assert max_err(a, fk.flow_warp(x, flow, backend="fused")) < ATOL32
    with pytest.raises(ValueError, match="backend must be one of"):
        fk.flow_warp(x, flow, backend="fast")


@pytest.mark.parametrize("args, match", [
    ((torch.randn(2, 3, 4), torch.randn(2, 2, 4, 4)), "x must be a 4-D tensor"),
    ((torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)), r"flow must have shape \[2, 2, 4, 4\]"),
    ((torch.randn(2, 3, 4, 4), torch.randn(1, 2, 4, 4)), r"flow must have shape"),
    ((torch.randn(2, 3, 1, 4), torch.randn(2, 2, 1, 4)), "H >= 2 and W >= 2"),
    ((torch.randint(0, 3, (2, 3, 4, 4)), torch.randn(2, 2, 4, 4)), "x must have dtype in"),
    (("x", torch.randn(2, 2, 4, 4)), "x must be a torch.Tensor"),
])
def test_bad_input(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fk.flow_warp(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 40, 33, 47), (2, 640, 64, 64), (2, 1280, 8, 8)], ids=["odd", "up3", "up0"])
def test_cuda_matches_reference(shape, dtype):
    B, C, H, W = shape
    x = torch.randn(shape, device="cuda")
    flow = make_flow("random", B, H, W).cuda()
    g = torch.randn(shape, device="cuda")
    ref32 = run_impl("reference", x, flow, g)
    got = run_impl("op", x.to(dtype), flow, g.to(dtype))
    if dtype == torch.float32:
        for name, a, b in zip(("out", "grad_x", "grad_flow"), got, ref32):
            assert max_err(a, b) < 1e-3 * max(1.0, b.abs().max().item()), name
    else:
        ref_lp = run_impl("reference", x.to(dtype), flow.to(dtype), g.to(dtype))
        for name, a, r, r32 in zip(("out", "grad_x", "grad_flow"), got, ref_lp, ref32):
            assert_lowp_close(a, r, r32, f"cuda {dtype} {name}")


@pytest.mark.cuda
def test_cuda_opcheck():
    x = torch.randn(2, 3, 5, 6, device="cuda", requires_grad=True)
    flow = make_flow("random", 2, 5, 6).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.fresco.flow_warp.default, (x, flow))
