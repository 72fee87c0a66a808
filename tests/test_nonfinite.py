"""Non-finite inputs (issue 10 items 7-8): every op's documented policy (its README's "Non-finite inputs" table),
fused == reference. The fused side runs twice: the C++ op (CPU) and the Triton launcher (interpreter on CPU).

Item 7's bug: a bilinear corner outside the image was read at a clamped offset with weight 0, so a NaN at a border
pixel leaked into outputs whose sample points lie outside the image (0 * NaN = NaN). Each bilinear op is checked with
a NaN at every border pixel, one image per pixel, against the reference."""
import pytest
import torch

import fresco_kernels as fk
from fresco_kernels.correspondence.triton import flow_correspondence_fwd
from fresco_kernels.flow_warp.triton import flow_warp_bwd, flow_warp_fwd
from fresco_kernels.gram_loss.triton import gram_loss_fwd_bwd
from fresco_kernels.trajectory_attention.triton import trajectory_attention_fwd
from fresco_kernels.warp_loss.triton import warp_loss_fwd_bwd

NAN, INF = float("nan"), float("inf")


def border(h, w):
    return [(i, j) for i in range(h) for j in range(w) if i in (0, h - 1) or j in (0, w - 1)]


def assert_same(got, ref, name, atol=2e-5):
    """Same NaN and ±inf positions, finite values close."""
    assert got.shape == ref.shape, name
    for what, f in (("NaN", torch.isnan), ("+inf", lambda t: t == INF), ("-inf", lambda t: t == -INF)):
        mism = (f(got) != f(ref)).sum().item()
        assert mism == 0, f"{name}: {mism} elements differ in {what}"
    fin = torch.isfinite(ref)
    if fin.any():
        err = (got[fin].double() - ref[fin].double()).abs().max().item()
        assert err < atol * max(1.0, ref[fin].abs().max().item()), f"{name}: max error {err}"


# ---------------------------------------------------------------- flow_warp


def flow_warp_all(x, flow, g):
    """{impl: (out, grad_x, grad_flow)} for the reference, the C++ op and the Triton launchers."""
    res = {}
    for impl, fn in (("reference", fk.flow_warp_reference), ("op", torch.ops.fresco.flow_warp)):
        xr, fr = x.clone().requires_grad_(), flow.clone().requires_grad_()
        out = fn(xr, fr)
        res[impl] = (out.detach(), *torch.autograd.grad(out, [xr, fr], g))
    res["triton"] = (flow_warp_fwd(x, flow), *flow_warp_bwd(g, x, flow))
    return res


@pytest.mark.parametrize("flow_kind", ["random", "integer"])
def test_flow_warp_nan_at_every_border_pixel(flow_kind):
    # image b has a NaN at border pixel b (channel 1); flows push many sample points outside the image
    H, W, C = 5, 6, 2
    pix = border(H, W)
    B = len(pix)
    x = torch.randn(B, C, H, W)
    for b, (i, j) in enumerate(pix):
        x[b, 1, i, j] = NAN
    flow = torch.randn(B, 2, H, W) * 3 if flow_kind == "random" else torch.randint(-3, 4, (B, 2, H, W)).float()
    g = torch.randn(B, C, H, W)
    res = flow_warp_all(x, flow, g)
    ref = res.pop("reference")
    assert torch.isnan(ref[0]).any() and not torch.isnan(ref[0]).all()
    for impl, got in res.items():
        for name, a, b in zip(("out", "grad_x", "grad_flow"), got, ref):
            if flow_kind == "integer" and name == "grad_flow":
                # one-sided at integer points (see test_flow_warp): compare where the reference is NaN only
                assert (torch.isnan(a) == torch.isnan(b)).all(), f"{impl} {name}"
                continue
            assert_same(a, b, f"{impl} {name}")


def test_flow_warp_nan_grad_out_at_every_border_pixel():
    # a NaN in the incoming gradient reaches only in-image corners (never a clamped out-of-image offset)
    H, W, C = 5, 6, 2
    pix = border(H, W)
    B = len(pix)
    x = torch.randn(B, C, H, W)
    flow = torch.randn(B, 2, H, W) * 3
    g = torch.randn(B, C, H, W)
    for b, (i, j) in enumerate(pix):
        g[b, 0, i, j] = NAN
    res = flow_warp_all(x, flow, g)
    ref = res.pop("reference")
    for impl, got in res.items():
        assert_same(got[1], ref[1], f"{impl} grad_x")


@pytest.mark.parametrize("value", [NAN, INF, -INF, 1e20])
def test_flow_warp_nonfinite_flow(value):
    # non-finite flow at a pixel: that output pixel is NaN in every channel (grid_sample's weights are NaN there);
    # a huge finite flow samples the zero padding
    x = torch.randn(2, 3, 5, 6)
    flow = torch.randn(2, 2, 5, 6)
    flow[0, 0, 1, 2] = value
    flow[1, 1, 4, 0] = value
    res = flow_warp_all(x, flow, torch.randn(2, 3, 5, 6))
    ref = res.pop("reference")
    expect_nan = value != 1e20
    assert bool(torch.isnan(ref[0][0, :, 1, 2]).all()) == expect_nan
    assert bool((ref[0][0, :, 1, 2] == 0).all()) == (not expect_nan)
    for impl, got in res.items():
        for name, a, b in zip(("out", "grad_x", "grad_flow"), got, ref):
            assert_same(a, b, f"{impl} {name}")


# ---------------------------------------------------------------- warp_consistency_loss


def warp_loss_all(feat, ff, bf, fo, bo, chunks):
    """{impl: (loss, grad)} of the reference, the C++ op and the Triton launcher."""
    f = feat.clone().requires_grad_()
    loss = fk.warp_consistency_loss_reference(f, ff, bf, fo, bo, chunks)
    (g,) = torch.autograd.grad(loss, f)
    return {"reference": (loss.detach(), g),
            "op": torch.ops.fresco.warp_consistency_loss_fwd_bwd(feat, ff, bf, fo, bo, chunks),
            "triton": warp_loss_fwd_bwd(feat, ff, bf, fo, bo, chunks)}


def _warp_inputs(n=3, c=3, h=4, w=5):
    ff, bf = torch.randn(n, 2, h, w) * 3, torch.randn(n, 2, h, w) * 3
    fo, bo = (torch.rand(n, 1, h, w) > 0.6).float(), (torch.rand(n, 1, h, w) > 0.6).float()
    return torch.randn(2 * n, c, h, w), ff, bf, fo, bo


def check_warp_loss(feat, ff, bf, fo, bo, exact=True):
    """exact: the loss is NaN in all (NaN inputs); else non-finite in all (an inf feature gives +inf or NaN, as
    it meets a 0 weight or another inf somewhere)."""
    res = warp_loss_all(feat, ff, bf, fo, bo, 2)
    ref_loss, ref_grad = res.pop("reference")
    assert not torch.isfinite(ref_loss)
    for impl, (loss, grad) in res.items():
        if exact:
            assert torch.isnan(ref_loss) and torch.isnan(loss), impl
        else:
            assert not torch.isfinite(loss), impl
        assert_same(grad, ref_grad, f"{impl} grad")


@pytest.mark.slow
@pytest.mark.parametrize("frame", [0, 4])
def test_warp_loss_nan_at_every_border_pixel(frame):
    # NaN feature: the loss is NaN (occluded pixels included); the gradient is the reference's (sign(NaN) = 0)
    feat, ff, bf, fo, bo = _warp_inputs()
    h, w = feat.shape[2:]
    fo[:, :, 0, :] = 1.0  # fully occluded border rows: NaN there must still show
    bo[:, :, -1, :] = 1.0
    for i, j in border(h, w):
        bad = feat.clone()
        bad[frame, 1, i, j] = NAN
        check_warp_loss(bad, ff, bf, fo, bo)


@pytest.mark.parametrize("value", [NAN, INF])
def test_warp_loss_nonfinite_flow_occlusion_and_inf_feature(value):
    feat, ff, bf, fo, bo = _warp_inputs()
    flow = bf.clone()
    flow[1, 0, 2, 3] = value
    bo[1, 0, 2, 3] = 1.0  # occluded: the reference's NaN·0 is still NaN
    check_warp_loss(feat, ff, flow, fo, bo)
    occ = fo.clone()
    occ[0, 0, 1, 1] = NAN
    check_warp_loss(feat, ff, bf, occ, bo)
    f = feat.clone()
    f[3, 0, 0, 0] = value
    check_warp_loss(f, ff, bf, fo, bo, exact=value != INF)


@pytest.mark.parametrize("backend", fk.BACKENDS)
def test_warp_loss_refuses_flows_that_require_grad(backend):
    feat, ff, bf, fo, bo = _warp_inputs()
    with pytest.raises(ValueError, match="bwd_flow must not require grad"):
        fk.warp_consistency_loss(feat.requires_grad_(), ff, bf.requires_grad_(), fo, bo, backend=backend)
    with torch.no_grad():  # no gradient asked for: accepted
        fk.warp_consistency_loss(feat, ff, bf, fo, bo, backend=backend)


# ---------------------------------------------------------------- trajectory_attention


@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_trajectory_attention_nonfinite_tokens(which, value):
    # non-finite values propagate as in the reference's masked SDPA (an added -inf bias; masked values weighted by 0):
    # through q to its own output, through k or v to every frame of the trajectory, other segments included
    chunks, n, h, w, heads, d = 2, 3, 3, 4, 2, 8
    hw = h * w
    fwd = torch.stack([torch.arange(hw)] + [torch.randperm(hw) for _ in range(n - 1)])
    seg = torch.tensor([[0] * hw, [0] * (hw // 2) + [1] * (hw - hw // 2), [1] * hw], dtype=torch.int32)
    qkv = {t: torch.randn(chunks * n, hw, heads * d) for t in "qkv"}
    # border tokens of several frames and chunks, one per trajectory so their effects do not overlap
    for img, (i, j) in zip((0, 1, 2, 3, 5), border(h, w)[::2]):
        qkv[which][img, i * w + j, (img * 3) % (heads * d)] = value
    q, k, v = qkv["q"], qkv["k"], qkv["v"]
    ref = fk.trajectory_attention_reference(q, k, v, fwd, seg, 0.2, heads, chunks)
    assert not torch.isfinite(ref).all()
    for impl, got in (("op", torch.ops.fresco.trajectory_attention(q, k, v, fwd, seg, 0.2, heads)),
                      ("triton", trajectory_attention_fwd(q, k, v, fwd, seg, 0.2, heads))):
        assert_same(got, ref, impl)


# ---------------------------------------------------------------- gram_loss


@pytest.mark.parametrize("reduction", ["l1", "l2"])
@pytest.mark.parametrize("value", [NAN, INF])
def test_gram_loss_nonfinite_row_is_not_hidden(reduction, value):
    B, n, C = 2, 12, 6
    ref = fk.normalize_features(torch.randn(B, n, C))
    feat = torch.randn(B, n, C)
    feat[1, 0, 2] = value
    feat[0, 5] = 0.0  # an all-zero row stays the (finite) zero row
    f = feat.clone().requires_grad_()
    loss = fk.gram_loss_reference(f, ref, reduction)
    (grad,) = torch.autograd.grad(loss, f)
    assert torch.isnan(loss)
    assert torch.isfinite(fk.normalize_features(feat)[0]).all()
    fused = {"op": torch.ops.fresco.gram_loss_fwd_bwd(feat, ref, reduction, 100.0, "ieee"),
             "triton": gram_loss_fwd_bwd(feat, ref, reduction, precision="ieee")}
    for impl, (lf, gf) in fused.items():
        assert_same(lf, loss.detach(), f"{impl} loss")
        assert_same(gf, grad, f"{impl} grad", atol=1e-4)


@pytest.mark.parametrize("backend", fk.BACKENDS)
def test_gram_loss_empty_batch_is_refused(backend):
    with pytest.raises(ValueError, match="B >= 1"):
        fk.gram_loss(torch.randn(0, 4, 3), torch.randn(0, 4, 3), backend=backend)


# ---------------------------------------------------------------- flow_correspondence


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_correspondence_nonfinite_flow_is_an_invalid_source(value):
    # a source whose flow is not finite links to no target, like a flow leaving the frame, in every implementation
    n, h, w = 3, 4, 5
    flow = torch.randn(n - 1, 2, h, w)
    for p, (i, j) in enumerate(border(h, w)):
        flow[p % (n - 1), p % 2, i, j] = value
    occ = torch.rand(n - 1, h, w) > 0.8
    frames = torch.rand(n, 3, h, w) * 2 - 1
    ref = fk.flow_correspondence_reference(flow, occ, frames)
    loop = fk.correspondence.flow_correspondence_loop(flow, occ, frames)[:2]
    for impl, got in (("loop", loop), ("op", torch.ops.fresco.flow_correspondence(flow, occ, frames)),
                      ("triton", flow_correspondence_fwd(flow, occ, frames))):
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), impl


@pytest.mark.parametrize("backend", fk.BACKENDS)
def test_correspondence_refuses_nonfinite_frames(backend):
    frames = torch.rand(2, 3, 4, 5)
    frames[1, 2, 0, 4] = NAN
    with pytest.raises(ValueError, match="frames must be finite"):
        fk.flow_correspondence(torch.zeros(1, 2, 4, 5), torch.zeros(1, 4, 5, dtype=torch.bool), frames,
                               backend=backend)


# ---------------------------------------------------------------- cross_frame_attention


def test_cross_frame_nonfinite_kv_poisons_its_chunk_in_both_backends():
    chunks, n, hw, heads, d = 2, 3, 6, 2, 4
    q, k, v = (torch.randn(chunks * n, hw, heads * d) for _ in range(3))
    keep = torch.rand(n, hw) > 0.5
    keep[0] = True
    k[0, 5, 1] = NAN  # chunk 0, frame 0, head 0
    v[n, 2, 6] = INF  # chunk 1, frame 0, head 1
    out = {b: fk.cross_frame_attention(q, *fk.cross_frame_kv(k, v, keep, chunks, backend=b), heads, chunks, backend=b)
           for b in fk.BACKENDS}
    assert torch.isnan(out["reference"][:n, :, :d]).all() and torch.isfinite(out["reference"][:n, :, d:]).all()
    assert_same(out["fused"], out["reference"], "cross_frame")
