"""warp_consistency_loss: C++ op, Triton launcher (interpreter on CPU) and the public function against the published
formula (grid_sample warps + autograd): loss and gradient, odd shapes, low precision, opcheck, gradcheck, compile."""
import pytest
import torch

import fresco_kernels as fk
from fresco_kernels.warp_loss.triton import _warp_loss_fwd_bwd_kernel, warp_loss_fwd_bwd

from _utils import assert_lowp_close, max_err

# fp32: the kernels sum B*C*h*w terms in another order than the reference's mean (relative ~1e-6)
RTOL32 = 2e-5

CASES = {
    # chunks, N, C, h, w, flow scale
    "cfg2-N3-C5-7x9": (2, 3, 5, 7, 9, 2.0),
    "cfg1-N2-C3-6x5": (1, 2, 3, 6, 5, 2.0),
    "cfg2-N2-C33-9x13": (2, 2, 33, 9, 13, 2.0),
    "cfg2-N5-C7-5x6-out-of-frame": (2, 5, 7, 5, 6, 8.0),
    # two channel blocks of the C++ kernel (64 + 6), 8x8 register-transpose tiles plus ragged edges
    "cfg1-N3-C70-9x11": (1, 3, 70, 9, 11, 2.0),
}


def make_inputs(chunks, n, c, h, w, fscale, dtype=torch.float32, occ_p=0.3):
    feat = torch.randn(chunks * n, c, h, w, dtype=dtype)
    ff = torch.randn(n, 2, h, w, dtype=dtype) * fscale
    bf = torch.randn(n, 2, h, w, dtype=dtype) * fscale
    fo = (torch.rand(n, 1, h, w) < occ_p).to(dtype)
    bo = (torch.rand(n, 1, h, w) < occ_p).to(dtype)
    return feat, ff, bf, fo, bo


def loss_and_grad(impl, feat, ff, bf, fo, bo, chunks):
    if impl == "triton":
        return warp_loss_fwd_bwd(feat, ff, bf, fo, bo, chunks)
    f = feat.detach().clone().requires_grad_()
    if impl == "reference":
        loss = fk.warp_consistency_loss_reference(f, ff, bf, fo, bo, chunks)
    elif impl == "op":
        loss = torch.ops.fresco.warp_consistency_loss(f, ff, bf, fo, bo, chunks)
    elif impl == "op_fwd_bwd":
        loss = torch.ops.fresco.warp_consistency_loss_fwd_bwd(f, ff, bf, fo, bo, chunks)[0]
    else:
        loss = fk.warp_consistency_loss(f, ff, bf, fo, bo, chunks)
    (g,) = torch.autograd.grad(loss, f)
    return loss.detach(), g


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("impl", ["op", "op_fwd_bwd", "triton", "public"])
def test_matches_published_formula(impl, case):
    chunks, n, c, h, w, fscale = case
    inputs = make_inputs(chunks, n, c, h, w, fscale)
    ref_l, ref_g = loss_and_grad("reference", *inputs, chunks)
    l, g = loss_and_grad(impl, *inputs, chunks)
    assert l.shape == () and l.dtype == torch.float32
    assert not torch.isnan(g).any()
    assert abs(l.item() - ref_l.item()) <= RTOL32 * abs(ref_l.item())
    assert max_err(g, ref_g) <= RTOL32 * ref_g.abs().max().item()


def test_no_occlusion_and_all_occluded():
    feat, ff, bf, fo, bo = make_inputs(2, 3, 4, 6, 7, 2.0)
    ones = torch.ones_like(fo)
    l, g = loss_and_grad("op", feat, ff, bf, ones, ones, 2)
    assert l.item() == 0.0 and g.abs().max().item() == 0.0
    zeros = torch.zeros_like(fo)
    ref_l, ref_g = loss_and_grad("reference", feat, ff, bf, zeros, zeros, 2)
    l, g = loss_and_grad("op", feat, ff, bf, zeros, zeros, 2)
    assert abs(l.item() - ref_l.item()) <= RTOL32 * ref_l.item() and max_err(g, ref_g) < 1e-7


def test_identical_frames_zero_flow_zero_loss():
    frame = torch.randn(1, 4, 5, 6)
    feat = frame.repeat(6, 1, 1, 1)
    z = torch.zeros(3, 2, 5, 6)
    o = torch.zeros(3, 1, 5, 6)
    # not exactly 0: the normalised-grid round trip of grid_sample (which the op reproduces) is inexact in fp32
    loss = fk.warp_consistency_loss(feat, z, z, o, o, 2).item()
    assert loss < 1e-6
    assert abs(loss - fk.warp_consistency_loss_reference(feat, z, z, o, o, 2).item()) < 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["op", "triton"])
def test_low_precision(impl, dtype):
    inputs = make_inputs(2, 3, 6, 7, 8, 2.0)
    ref32 = loss_and_grad("reference", *inputs, 2)
    lp = [t.to(dtype) for t in inputs]
    ref_lp = loss_and_grad("reference", *lp, 2)
    got = loss_and_grad(impl, *lp, 2)
    assert got[1].dtype == dtype
    for name, a, r, r32 in zip(("loss", "grad"), got, ref_lp, ref32):
        assert_lowp_close(a.float(), r.float(), r32, f"{impl} {dtype} {name}")


def test_channels_last_and_permuted():
    feat, ff, bf, fo, bo = make_inputs(2, 3, 8, 6, 7, 2.0)
    ref_l, ref_g = loss_and_grad("reference", feat, ff, bf, fo, bo, 2)
    cl = feat.to(memory_format=torch.channels_last)
    ffp = ff.transpose(2, 3).contiguous().transpose(2, 3)
    for impl in ("op", "triton"):
        l, g = loss_and_grad(impl, cl, ffp, bf, fo, bo, 2)
        assert abs(l.item() - ref_l.item()) <= RTOL32 * ref_l.item() and max_err(g, ref_g) < 1e-6


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_opcheck(layout, grad):
    feat, ff, bf, fo, bo = make_inputs(2, 2, 3, 4, 5, 2.0)
    if layout == "channels_last":
        feat = feat.to(memory_format=torch.channels_last)
    feat.requires_grad_(grad)
    for op in (torch.ops.fresco.warp_consistency_loss.default, torch.ops.fresco.warp_consistency_loss_fwd_bwd.default):
        torch.library.opcheck(op, (feat, ff, bf, fo, bo, 2))


def test_gradcheck_fp64():
    feat, ff, bf, fo, bo = make_inputs(2, 2, 2, 4, 5, 1.0, dtype=torch.float64)
    # keep sample points off integer coordinates (kinks of the bilinear weights) and |d| away from 0 (kink of |.|)
    ff = torch.rand_like(ff) * 0.8 + 0.1
    bf = torch.rand_like(bf) * 0.8 + 0.1
    feat = (feat * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: fk.warp_consistency_loss(f, ff, bf, fo, bo, 2), (feat,), eps=1e-7)


def test_compile_fullgraph_fwd_bwd():
    feat, ff, bf, fo, bo = make_inputs(2, 3, 4, 5, 6, 2.0)
    feat.requires_grad_()
    fn = torch.compile(lambda f: fk.warp_consistency_loss(f, ff, bf, fo, bo, 2) * 3, fullgraph=True, backend="aot_eager")
    fn(feat).backward()
    ref_l, ref_g = loss_and_grad("reference", feat.detach(), ff, bf, fo, bo, 2)
    assert max_err(feat.grad, 3 * ref_g) <= RTOL32 * 3 * ref_g.abs().max().item()


def test_loss_only_path_without_grad():
    inputs = make_inputs(2, 3, 4, 5, 6, 2.0)
    with torch.no_grad():
        l = fk.warp_consistency_loss(*inputs, 2)
    ref_l, _ = loss_and_grad("reference", *inputs, 2)
    assert abs(l.item() - ref_l.item()) <= RTOL32 * ref_l.item()


def _bad(**over):
    feat, ff, bf, fo, bo = make_inputs(2, 3, 4, 5, 6, 2.0)
    args = dict(feat=feat, fwd_flow=ff, bwd_flow=bf, fwd_occ=fo, bwd_occ=bo, cfg_chunks=2)
    args.update(over)
    return args


@pytest.mark.parametrize("over, match", [
    (dict(feat=torch.randn(6, 4, 5)), "feat must be a 4-D tensor"),
    (dict(feat=torch.randn(5, 4, 5, 6)), r"feat's batch \(5\) must be cfg_chunks \(2\) x N"),
    (dict(feat=torch.randn(2, 4, 5, 6), fwd_flow=torch.randn(1, 2, 5, 6)), "N >= 2"),
    (dict(fwd_flow=torch.randn(3, 2, 5, 7)), r"fwd_flow must have shape \[3, 2, 5, 6\]"),
    (dict(bwd_occ=torch.rand(3, 5, 6)), "bwd_occ must be a 4-D tensor"),
    (dict(fwd_occ=torch.rand(3, 2, 5, 6)), r"fwd_occ must have shape \[3, 1, 5, 6\]"),
    (dict(cfg_chunks=0), "cfg_chunks must be a positive int"),
    (dict(feat=torch.randint(0, 2, (6, 4, 5, 6))), "feat must have dtype in"),
])
def test_bad_input(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fk.warp_consistency_loss(**_bad(**over))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [(2, 8, 640, 64, 64, 2.0), (2, 3, 40, 33, 47, 5.0), (2, 16, 1280, 8, 14, 1.0)],
                         ids=["up3-N8", "odd", "up0-N16-64x112"])
def test_cuda_matches_reference(case, dtype):
    chunks, n, c, h, w, fscale = case
    inputs = [t.cuda() for t in make_inputs(chunks, n, c, h, w, fscale)]
    ref32 = loss_and_grad("reference", *inputs, chunks)
    if dtype == torch.float32:
        l, g = loss_and_grad("op", *inputs, chunks)
        assert abs(l.item() - ref32[0].item()) <= 1e-4 * ref32[0].item()
        assert max_err(g, ref32[1]) <= 1e-4 * ref32[1].abs().max().item()
    else:
        lp = [t.to(dtype) for t in inputs]
        ref_lp = loss_and_grad("reference", *lp, chunks)
        got = loss_and_grad("op", *lp, chunks)
        for name, a, r, r32 in zip(("loss", "grad"), got, ref_lp, ref32):
            assert_lowp_close(a.float(), r.float(), r32, f"cuda {dtype} {name}")


@pytest.mark.cuda
def test_cuda_opcheck():
    feat, ff, bf, fo, bo = [t.cuda() for t in make_inputs(2, 2, 3, 4, 5, 2.0)]
    feat.requires_grad_()
    torch.library.opcheck(torch.ops.fresco.warp_consistency_loss_fwd_bwd.default, (feat, ff, bf, fo, bo, 2))


@pytest.mark.cuda
def test_cuda_first_call_while_autotuning():
    # the call that benchmarks every config must return the loss and gradient of the chosen one alone
    _warp_loss_fwd_bwd_kernel.cache.clear()
    inputs = [t.cuda() for t in make_inputs(2, 3, 40, 33, 47, 5.0)]
    ref_l, ref_g = loss_and_grad("reference", *inputs, 2)
    l, g = warp_loss_fwd_bwd(*inputs, 2)
    assert abs(l.item() - ref_l.item()) <= 1e-4 * ref_l.item()
    assert max_err(g, ref_g) <= 1e-4 * ref_g.abs().max().item()
