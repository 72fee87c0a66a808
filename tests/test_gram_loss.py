"""gram_loss: C++ (CPU op), Triton (interpreter on CPU, native on CUDA) and the public function against the
materialised-Gram reference (the published `F.l1_loss(bmm(x̂, x̂ᵀ), G_ref) * 100`): loss and gradient at odd sizes,
L1 and L2 (tiled and closed form), zero rows, layouts, low precision, opcheck, gradcheck, compile, memory."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fresco_kernels as fk
from fresco_kernels.gram_loss import gram_loss_reference, normalize_features
from fresco_kernels.gram_loss.triton import gram_loss_fwd, gram_loss_fwd_bwd

from _utils import assert_lowp_close, max_err

# fp32: the same sums as the reference in another order (tiles, BLAS blocking); relative to the loss / max |grad|
RTOL_LOSS = 2e-5
RTOL_GRAD = 2e-5

# hw not a multiple of the tiles (Triton 64, C++ 128), C = 3, 40, 80, 320; C < hw picks the L2 closed form, C >= hw
# the tiled L2
SHAPES = {
    "B2-hw63-C3": (2, 63, 3),
    "B1-hw130-C40": (1, 130, 40),
    "B2-hw67-C80": (2, 67, 80),
    "B1-hw70-C320": (1, 70, 320),
}


def make_inputs(B, n, C, dtype=torch.float32, closeness=1.0):
    """feat and a normalised ref correlated with it (a loss that is neither tiny nor saturated)."""
    feat = torch.randn(B, n, C)
    ref = normalize_features(feat + closeness * torch.randn(B, n, C))
    return feat.to(dtype), ref


def run_impl(impl, feat, ref, reduction, weight=100.0, precision="ieee"):
    """-> (loss, dL/dfeat) of one implementation."""
    if impl == "triton":
        loss, grad = gram_loss_fwd_bwd(feat, ref, reduction, weight, precision)
        assert max_err(gram_loss_fwd(feat, ref, reduction, weight, precision), loss) <= 1e-6 * abs(loss.item())
        return loss, grad
    if impl == "op":
        loss, grad = torch.ops.fresco.gram_loss_fwd_bwd(feat, ref, reduction, weight, precision)
        assert max_err(torch.ops.fresco.gram_loss(feat, ref, reduction, weight, precision), loss) <= 1e-6 * abs(loss.item())
        return loss, grad
    f = feat.detach().clone().requires_grad_()
    fn = {"public": lambda a: fk.gram_loss(a, ref, reduction, weight, precision=precision, backend="fused"),
          "reference": lambda a: gram_loss_reference(a, ref, reduction, weight)}[impl]
    loss = fn(f)
    (grad,) = torch.autograd.grad(loss, f)
    return loss.detach(), grad


def assert_close(got, ref, what):
    (loss, grad), (rloss, rgrad) = got, ref
    assert loss.dim() == 0 and loss.dtype == torch.float32, what
    assert not torch.isnan(grad).any(), f"{what}: NaN in the gradient (an element never written)"
    assert grad.shape == rgrad.shape and grad.dtype == rgrad.dtype, what
    assert max_err(loss, rloss) <= RTOL_LOSS * abs(rloss.item()), f"{what} loss: {loss.item()} vs {rloss.item()}"
    assert max_err(grad, rgrad) <= RTOL_GRAD * rgrad.abs().max().item(), f"{what} grad: {max_err(grad, rgrad)}"


@pytest.mark.parametrize("reduction", ["l1", "l2"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_matches_reference_fp32(impl, shape, reduction):
    feat, ref = make_inputs(*shape)
    assert_close(run_impl(impl, feat, ref, reduction), run_impl("reference", feat, ref, reduction),
                 f"{impl} {reduction}")


@pytest.mark.parametrize("impl", ["op", "triton"])
def test_weight_scales_linearly(impl):
    feat, ref = make_inputs(1, 40, 8)
    l1, g1 = run_impl(impl, feat, ref, "l1", weight=1.0)
    l50, g50 = run_impl(impl, feat, ref, "l1", weight=50.0)
    assert max_err(50 * l1, l50) <= 1e-5 * l50.item() and max_err(50 * g1, g50) <= 1e-5 * g50.abs().max().item()


def test_l2_closed_form_cancellation():
    """L2 through C x C products subtracts O(hw²) terms: near convergence (ref ≈ feat) its absolute error stays at
    fp32 rounding of those terms while the tiled form sums the small differences directly. Both vs fp64."""
    feat, ref = make_inputs(1, 200, 16, closeness=1e-2)
    exact_loss = gram_loss_reference(feat.double(), ref.double(), "l2")
    f64 = feat.double().requires_grad_()
    gram_loss_reference(f64, ref.double(), "l2").backward()
    errs = {}
    for closed in (True, False):
        loss, grad = gram_loss_fwd_bwd(feat, ref, "l2", 100.0, "ieee", closed_form=closed)
        errs[closed] = (abs(loss.item() - exact_loss.item()) / exact_loss.item(), max_err(grad, f64.grad) / f64.grad.abs().max().item())
    # measured here: closed form ~1e-4 relative on the loss (tiled ~1e-7), gradients ~1e-5 both
    assert errs[False][0] < 1e-5 and errs[False][1] < 1e-4
    assert errs[True][0] < 3e-3 and errs[True][1] < 1e-3
    # the C++ op takes the closed form here (C < hw): the same bound
    loss, grad = torch.ops.fresco.gram_loss_fwd_bwd(feat, ref, "l2", 100.0, "ieee")
    assert abs(loss.item() - exact_loss.item()) / exact_loss.item() < 3e-3
    assert max_err(grad, f64.grad) / f64.grad.abs().max().item() < 1e-3


@pytest.mark.parametrize("impl", ["op", "triton", "public", "reference"])
def test_zero_rows_are_finite(impl):
    # a zero feature row (and a zero reference row) is defined as the zero normalised row: finite, zero gradient
    feat, ref = make_inputs(2, 30, 5)
    feat[0, 3] = 0
    feat[1, 7] = 0
    ref[1, 9] = 0
    loss, grad = run_impl(impl, feat, ref, "l1")
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[0, 3].abs().max() == 0 and grad[1, 7].abs().max() == 0
    xn = normalize_features(feat)
    assert xn[0, 3].abs().max() == 0
    # the loss counts the zero row's Gram entries as 0
    xd, rd = xn.double(), ref.double()
    expected = 100 * (xd @ xd.transpose(1, 2) - rd @ rd.transpose(1, 2)).abs().mean()
    assert abs(loss.item() - expected.item()) < 1e-5 * expected.item()


@pytest.mark.parametrize("layout", ["BChw", "channels_last", "rows_permuted"])
def test_layouts(layout):
    B, C, h, w = 2, 12, 5, 7
    x = torch.randn(B, C, h, w)
    ref = normalize_features(torch.randn(B, C, h, w))
    assert ref.shape == (B, h * w, C)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    expected = run_impl("reference", x.flatten(2).transpose(1, 2).contiguous(), ref, "l1")
    if layout == "rows_permuted":
        x = x.flatten(2).transpose(1, 2)
    for impl in ("public", "op", "triton"):
        feat = x if (impl == "public" or x.dim() == 3) else x.flatten(2).transpose(1, 2)
        loss, grad = run_impl(impl, feat, ref, "l1")
        grad = grad.flatten(2).transpose(1, 2) if grad.dim() == 4 else grad
        assert_close((loss, grad), expected, f"{impl} {layout}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["op", "triton"])
def test_low_precision_inputs(impl, dtype):
    feat, ref = make_inputs(2, 45, 24)
    ref32 = run_impl("reference", feat, ref, "l1")
    ref_lp = run_impl("reference", feat.to(dtype), ref.to(dtype), "l1")
    loss, grad = run_impl(impl, feat.to(dtype), ref.to(dtype), "l1")
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_lowp_close(loss, ref_lp[0], ref32[0], f"{impl} {dtype} loss")
    assert_lowp_close(grad, ref_lp[1], ref32[1], f"{impl} {dtype} grad")


def test_triton_bf16_and_tf32_dots():
    # the tensor-core precisions under the interpreter: bf16 rows (sign(D) exact) stay near the fp32 result
    feat, ref = make_inputs(1, 70, 24)
    rloss, rgrad = run_impl("reference", feat, ref, "l1")
    for precision, tol in (("tf32", 1e-2), ("tf32x3", 1e-2), ("bf16", 3e-2)):
        loss, grad = gram_loss_fwd_bwd(feat, ref, "l1", 100.0, precision)
        assert abs(loss.item() - rloss.item()) <= tol * rloss.item(), precision
        assert max_err(grad, rgrad) <= 10 * tol * rgrad.abs().max().item(), precision


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("reduction", ["l1", "l2"])
def test_opcheck(layout, grad, reduction):
    feat, ref = make_inputs(2, 11, 6)
    if layout == "permuted":
        feat = feat.transpose(1, 2).contiguous().transpose(1, 2)
    feat.requires_grad_(grad)
    for name in ("gram_loss", "gram_loss_fwd_bwd"):
        torch.library.opcheck(getattr(torch.ops.fresco, name).default, (feat, ref, reduction, 100.0, "tf32"))


@pytest.mark.parametrize("reduction", ["l1", "l2"])
def test_gradcheck_fp64(reduction):
    feat = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    ref = normalize_features(torch.randn(2, 9, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda f: gram_loss_reference(f, ref, reduction), (feat,))
    assert torch.autograd.gradcheck(lambda f: fk.gram_loss(f, ref, reduction, backend="fused"), (feat,))
    # the loss-only op's own backward (recomputing with the fused fwd+bwd)
    assert torch.autograd.gradcheck(lambda f: torch.ops.fresco.gram_loss(f, ref, reduction, 100.0, "ieee"), (feat,))
    # and the normalisation alone; at a zero row (where x/‖x‖ has no derivative) the gradient is defined as 0
    x = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_features, (x,))
    z = x.detach().clone()
    z[0, 2] = 0
    z.requires_grad_()
    normalize_features(z).sum().backward()
    assert z.grad[0, 2].abs().max() == 0 and torch.isfinite(z.grad).all()


def test_compile_fullgraph_fwd_bwd():
    feat, ref = make_inputs(2, 20, 7)
    f = feat.clone().requires_grad_()
    fn = torch.compile(lambda a: fk.gram_loss(a, ref, "l1"), fullgraph=True, backend="aot_eager")
    fn(f).backward()
    expected = run_impl("reference", feat, ref, "l1")[1]
    assert max_err(f.grad, expected) <= RTOL_GRAD * expected.abs().max().item()


def test_backend_switch_and_no_grad():
    feat, ref = make_inputs(1, 12, 5)
    with fk.use_backend("reference"):
        a = fk.gram_loss(feat, ref)
    b = fk.gram_loss(feat, ref)
    with torch.no_grad():
        c = fk.gram_loss(feat.requires_grad_(), ref)
    assert max_err(a, b) <= 1e-5 * a.item() and max_err(b, c) == 0
    with pytest.raises(ValueError, match="backend must be one of"):
        fk.gram_loss(feat, ref, backend="fast")


@pytest.mark.parametrize("kwargs, match", [
    (dict(feat=torch.randn(2, 3)), r"feat must be \[B, hw, C\] or \[B, C, h, w\]"),
    (dict(ref=torch.randn(2, 10, 5)), r"ref must have shape \[2, 12, 4\]"),
    (dict(ref=torch.randn(2, 12, 4, 1)), "ref must be a 3-D tensor"),
    (dict(feat=torch.randint(0, 3, (2, 12, 4))), "feat must have dtype in"),
    (dict(feat="x"), "feat must be a torch.Tensor"),
    (dict(reduction="l3"), "reduction must be one of"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(weight="1"), "weight must be a float"),
    (dict(feat=torch.randn(2, 0, 4), ref=torch.randn(2, 0, 4)), "hw >= 1 and C >= 1"),
])
def test_bad_input(kwargs, match):
    args = dict(feat=torch.randn(2, 12, 4), ref=torch.randn(2, 12, 4), reduction="l1", weight=100.0, precision="tf32")
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fk.gram_loss(args["feat"], args["ref"], args["reduction"], args["weight"], precision=args["precision"])


_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    import fresco_kernels as fk

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    torch.manual_seed(0)
    B, n, C = 1, 4096, 16
    x = torch.randn(B, n, C, requires_grad=True)
    r = fk.normalize_features(torch.randn(B, n, C))
    out = []
    for backend in sys.argv[1:]:
        # first use maps code pages (the library, BLAS) and starts OpenMP threads: pay that at a tiny size first
        xs = torch.randn(B, 64, C, requires_grad=True)
        fk.gram_loss(xs, fk.normalize_features(torch.randn(B, 64, C)), "l1", backend=backend).backward()
        # reset the peak resident set (VmHWM) to the current one, run, read how far the peak rose
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status("VmRSS:")
        for _ in range(2):
            fk.gram_loss(x, r, "l1", backend=backend).backward()
        out.append(status("VmHWM:") - base)
    print(*out)
""")


def test_no_hw_by_hw_buffer():
    """Peak resident memory of fwd+bwd at hw = 64·64 (one fp32 hw x hw Gram = 64 MiB, features 256 KiB): the fused
    op's peak grows by far less than one Gram, the reference's (the sanity check of the probe) by several."""
    if fk.cpu_impls().get("gram_loss_fwd_bwd") != "cpp":
        pytest.skip("the CPU op runs the materialised reference without the C++ library")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, "fused", "reference"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    fused, reference = (int(v) for v in res.stdout.split())
    gram = 4096 * 4096 * 4
    assert reference > 2 * gram, f"probe failed to see the reference's Gram matrices: {reference / 2**20:.1f} MiB"
    assert fused < gram / 8, f"fused fwd+bwd raised peak memory by {fused / 2**20:.1f} MiB (one Gram = 64 MiB)"


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32", "bf16"])
@pytest.mark.parametrize("reduction", ["l1", "l2"])
@pytest.mark.parametrize("shape", [(4, 777, 40), (2, 4096, 640), (4, 64, 1280), (2, 1024, 1280)],
                         ids=["odd", "up3", "up0", "up2"])
def test_cuda_matches_reference(shape, reduction, precision):
    feat, ref = make_inputs(*shape)
    feat, ref = feat.cuda(), ref.cuda()
    rloss, rgrad = run_impl("reference", feat.double(), ref.double(), reduction)
    loss, grad = torch.ops.fresco.gram_loss_fwd_bwd(feat, ref, reduction, 100.0, precision)
    # IEEE/tf32x3 ~ fp32; tf32 and bf16 products: Gram entries to ~1e-3 / ~1e-2, the mean loss much better
    tol = {"ieee": 1e-4, "tf32x3": 1e-4, "tf32": 3e-3, "bf16": 2e-2}[precision]
    assert abs(loss.item() - rloss.item()) <= tol * rloss.item()
    assert max_err(grad, rgrad) <= 20 * tol * rgrad.abs().max().item()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_features(dtype):
    feat, ref = make_inputs(2, 300, 80)
    feat, ref = feat.cuda(), ref.cuda()
    ref32 = run_impl("reference", feat, ref, "l1")
    ref_lp = run_impl("reference", feat.to(dtype), ref.to(dtype), "l1")
    got = run_impl("op", feat.to(dtype), ref, "l1", precision="ieee")
    assert_lowp_close(got[0], ref_lp[0], ref32[0], f"cuda {dtype} loss")
    assert_lowp_close(got[1], ref_lp[1], ref32[1], f"cuda {dtype} grad")


@pytest.mark.cuda
def test_cuda_opcheck_and_memory():
    feat, ref = make_inputs(2, 11, 6)
    feat = feat.cuda().requires_grad_()
    for name in ("gram_loss", "gram_loss_fwd_bwd"):
        torch.library.opcheck(getattr(torch.ops.fresco, name).default, (feat, ref.cuda(), "l1", 100.0, "tf32"))
    x, r = make_inputs(2, 4096, 640)
    x, r = x.cuda().requires_grad_(), r.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fk.gram_loss(x, r).backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 2 * 4096 * 4096 * 4 / 8
