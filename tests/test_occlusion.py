"""Occlusion and resampling helpers against the published code restated (gmflow's forward-backward check, FRESCO's
photometric test and the resampling of optimize_feature / get_single_mapping_ind) and hand-worked cases."""
import pytest
import torch
import torch.nn.functional as F

import fresco_kernels as fk


def published_occlusion(fwd, bwd, images):
    """get_flow_and_interframe_paras + forward_backward_consistency_check, restated with grid_sample warps."""
    warp = fk.flow_warp_reference
    mag = torch.norm(fwd, dim=1) + torch.norm(bwd, dim=1)
    thr = 0.01 * mag + 0.5
    fwd_occ = (torch.norm(fwd + warp(bwd, fwd), dim=1) > thr).float()
    bwd_occ = (torch.norm(bwd + warp(fwd, bwd), dim=1) > thr).float()
    shuffle = list(range(1, len(images))) + [0]
    bwd_occ = torch.clamp(bwd_occ + (abs(images[shuffle] - warp(images, bwd)).mean(dim=1) > 255 * 0.25).float(), 0, 1)
    fwd_occ = torch.clamp(fwd_occ + (abs(images - warp(images[shuffle], fwd)).mean(dim=1) > 255 * 0.25).float(), 0, 1)
    return fwd_occ, bwd_occ


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_matches_published(backend):
    n, h, w = 4, 12, 15
    fwd, bwd = torch.randn(n, 2, h, w) * 3, torch.randn(n, 2, h, w) * 3
    images = torch.rand(n, 3, h, w) * 255
    exp = published_occlusion(fwd, bwd, images)
    got = fk.occlusion_from_flows(fwd, bwd, images, backend=backend)
    for a, b in zip(got, exp):
        assert a.shape == (n, h, w) and a.dtype == torch.float32
        if backend == "reference":
            assert torch.equal(a, b)
        else:
            # the fused warp may differ from grid_sample in the last bit, which can flip a pixel on the threshold
            assert (a != b).float().mean().item() < 0.01


def test_hand_worked_translation():
    # frame i+1 is frame i moved 2 px right: f = +2 x, b = -2 x. warp(b, f) samples b at p + 2: outside the image in
    # the last 2 columns -> 0 there, so |f + warp(b, f)| = 2 > 0.01 * 4 + 0.5: exactly the last 2 columns occluded
    n, h, w = 2, 5, 8
    fwd = torch.zeros(n, 2, h, w)
    fwd[:, 0] = 2.0
    bwd = -fwd
    fwd_occ, bwd_occ = fk.occlusion_from_flows(fwd, bwd)
    expected_fwd = torch.zeros(n, h, w)
    expected_fwd[..., -2:] = 1
    expected_bwd = torch.zeros(n, h, w)
    expected_bwd[..., :2] = 1
    assert torch.equal(fwd_occ, expected_fwd) and torch.equal(bwd_occ, expected_bwd)


def test_photometric_test_marks_changed_pixels():
    n, h, w = 2, 6, 6
    z = torch.zeros(n, 2, h, w)
    frames = torch.full((n, 3, h, w), 100.0)
    frames[1, :, 2, 3] = 200.0  # a pixel that changes by 100 > 63.75
    fwd_occ, bwd_occ = fk.occlusion_from_flows(z, z, frames)
    # pairs (0,1) and (1,0): the changed pixel is occluded in both directions of both pairs
    assert fwd_occ.sum().item() == 2 and bwd_occ.sum().item() == 2
    assert fwd_occ[:, 2, 3].tolist() == [1.0, 1.0]


def test_resample_for_loss_matches_published():
    n, H, W = 3, 32, 48
    flow = torch.randn(n, 2, H, W) * 4
    occ = (torch.rand(n, H, W) > 0.9).float()
    for h in (16, 8, 4):
        s = h / H
        exp_flow = F.interpolate(flow * s, scale_factor=s, mode="bilinear")
        exp_occ = F.max_pool2d(occ.unsqueeze(1), kernel_size=int(1 / s))
        f2, o2 = fk.resample_for_loss(flow, occ, (h, W * h // H))
        assert torch.equal(f2, exp_flow) and torch.equal(o2, exp_occ) and o2.shape == (n, 1, h, W * h // H)


def test_resample_for_attention_matches_published():
    n, H, W = 3, 32, 48
    flow = torch.randn(n, 2, H, W) * 4
    occ = (torch.rand(n, H, W) > 0.7).float()
    for scale in (8, 16):
        f2, o2 = fk.resample_for_attention(flow, occ, scale)
        assert torch.equal(f2, F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear") / scale)
        assert torch.equal(o2, F.interpolate(occ[:, None], scale_factor=1.0 / scale, mode="bilinear")[:, 0] > 0.5)
        assert o2.dtype == torch.bool


def test_dilate_matches_published():
    mask = (torch.rand(2, 1, 20, 24) > 0.97).float()
    ref = torch.clamp(F.conv2d(F.pad(mask, (6, 6, 6, 6), "replicate"), torch.ones(1, 1, 13, 13)), 0, 1)
    assert torch.equal(fk.dilate(mask, 13), ref)
    one = torch.zeros(1, 1, 9, 9)
    one[0, 0, 4, 4] = 1
    assert fk.dilate(one, 3).sum().item() == 9


@pytest.mark.parametrize("call, match", [
    (lambda: fk.occlusion_from_flows(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 5)), r"bwd_flow must have shape"),
    (lambda: fk.occlusion_from_flows(torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), torch.rand(2, 1, 4, 4)),
     r"frames must have shape \[2, 3, 4, 4\]"),
    (lambda: fk.resample_for_loss(torch.randn(2, 2, 32, 32), torch.rand(2, 32, 32), (10, 10)), "integer factor"),
    (lambda: fk.resample_for_loss(torch.randn(2, 2, 32, 32), torch.rand(2, 32, 32), (16, 8)), "integer factor"),
    (lambda: fk.resample_for_attention(torch.randn(2, 2, 32, 32), torch.rand(2, 32, 32), 3), "scale must be a positive int"),
    (lambda: fk.resample_for_attention(torch.randn(2, 2, 32, 32), torch.rand(3, 32, 32), 8), r"occ must have shape"),
    (lambda: fk.dilate(torch.rand(1, 1, 8, 8), 4), "kernel must be an odd positive int"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_flow_magnitude_is_torch_norm_up_to_rounding():
    """The forward-backward check's |flow| (sqrt(x^2 + y^2), fast on CPU) against torch.norm over the channel dim,
    in fp32, fp64 and fp16 (fp16 flows beyond 256 px must not overflow when squared)."""
    from fresco_kernels.occlusion import _magnitude
    g = torch.Generator().manual_seed(0)
    for dtype, scale, tol in ((torch.float32, 30.0, 1e-5), (torch.float64, 30.0, 1e-12), (torch.float16, 400.0, 0.0)):
        f = (torch.randn(3, 2, 17, 23, generator=g) * scale).to(dtype)
        ref = torch.norm(f.float() if dtype == torch.float16 else f, dim=1).to(dtype)
        got = _magnitude(f)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert torch.allclose(got.double(), ref.double(), rtol=tol, atol=tol), (dtype, (got - ref).abs().max())
