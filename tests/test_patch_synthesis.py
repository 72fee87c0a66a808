"""patch_synthesis: C++ (CPU op) and Triton (interpreter on CPU, native on CUDA) against the PyTorch reference (same
seed, same field, bit for bit), determinism, a known shift recovered exactly, opcheck, bad input; and the patch
propagation built on it (fresco.video.patch_propagation, propagate(method="patch"))."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fresco_kernels as fk
from fresco_kernels.patch_synthesis.triton import patch_synthesis_fwd


def images(seed, c, h, w, smooth=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, c, h, w, generator=g) * 255
    return F.avg_pool2d(x, smooth, 1, smooth // 2, count_include_pad=False)[0].round().to(torch.uint8)


def case(hs=17, ws=20, ht=16, wt=18, g=4, c=3, seed=0):
    guides = images(seed, g, hs, ws)
    style = (255 - guides[:c]).contiguous()
    target = images(seed + 1, g, ht, wt)
    return style, guides, target


OPTS = {
    "two-levels": dict(patch_size=3, em_iters=2, pm_iters=1),
    "init+uniformity": dict(uniformity=300, patch_size=3, style_weight=3, levels=2, em_iters=1, pm_iters=2),
    "one-level": dict(levels=1, patch_size=7, search_radius=3, em_iters=1, pm_iters=2, seed=12345),
}


def call(style, guides, target, backend, init=None, **kw):
    return fk.patch_synthesis(style, guides, target, [3, 3, 3, 1], init_nnf=init, backend=backend, **kw)


@pytest.mark.parametrize("name", list(OPTS))
def test_cpp_matches_reference(name):
    style, guides, target = case()
    init = None
    if name == "init+uniformity":  # a flow-like field, partly outside the source (clamped)
        g = torch.Generator().manual_seed(3)
        init = torch.stack([torch.randint(-4, 21, (16, 18), generator=g), torch.randint(-4, 24, (16, 18), generator=g)])
    ref = call(style, guides, target, "reference", init, **OPTS[name])
    got = call(style, guides, target, "fused", init, **OPTS[name])
    assert fk.cpu_impls()["patch_synthesis"] == "cpp"
    assert torch.equal(got[1], ref[1]), "nnf differs"
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int32 and got[2].shape == (16, 18)
    assert not torch.isnan(got[0]).any() and not torch.isnan(got[2]).any()


def test_triton_interpreter_matches_reference():
    # the interpreter runs each lane in Python: a tiny problem, one level, one pass, every candidate kind
    style, guides, target = case(hs=9, ws=10, ht=8, wt=9, g=2, c=1)
    g = torch.Generator().manual_seed(5)
    init = torch.stack([torch.randint(0, 9, (8, 9), generator=g), torch.randint(0, 10, (8, 9), generator=g)]).int()
    args = (style, guides, target, torch.tensor([2, 1], dtype=torch.int32), 2, init, 3, 1, 1, 1, 2, 50, 7)
    ref = fk.patch_synthesis_reference(*args)
    got = patch_synthesis_fwd(*args)
    assert torch.equal(got[1], ref[1]), "nnf differs"
    assert torch.equal(got[0], ref[0]) and torch.equal(got[2], ref[2])


def test_deterministic_for_a_seed():
    style, guides, target = case()
    a = call(style, guides, target, "fused", seed=9)
    b = call(style, guides, target, "fused", seed=9)
    c = call(style, guides, target, "fused", seed=10)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1]), "the seed must drive the random search"


def test_recovers_a_shift_exactly():
    # the target is the source moved by (3, -4): every interior patch has an exact match, found from a random start
    src = images(4, 3, 40, 44)
    target = torch.roll(src, (3, -4), (1, 2))
    style = torch.flip(src, (0,)).contiguous()
    out, nnf, err = fk.patch_synthesis(style, src, target, [4, 4, 4], style_weight=0, levels=3, em_iters=3,
                                       pm_iters=2)
    inner = (slice(6, -6), slice(8, -8))
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(44), indexing="ij")
    assert torch.equal(nnf[0][inner], (ys - 3)[inner]) and torch.equal(nnf[1][inner], (xs + 4)[inner])
    assert torch.equal(out[:, 8:-8, 10:-10], torch.roll(style, (3, -4), (1, 2))[:, 8:-8, 10:-10].float())
    assert err[inner].max() == 0


def test_flow_init_is_used():
    # one level, one pass, no random search: an exact initial field (the true shift) is kept where it is exact,
    # while a random start ends elsewhere
    src = images(6, 3, 24, 26)
    target = torch.roll(src, (2, -3), (1, 2))
    ys, xs = torch.meshgrid(torch.arange(24), torch.arange(26), indexing="ij")
    init = torch.stack([ys - 2, xs + 3]).int()
    kw = dict(style_weight=0, levels=1, search_radius=0, em_iters=1, pm_iters=1)
    _, nnf, err = fk.patch_synthesis(src, src, target, [1, 1, 1], init_nnf=init, **kw)
    _, nnf_random, _ = fk.patch_synthesis(src, src, target, [1, 1, 1], **kw)
    inner = (slice(5, -5), slice(6, -6))
    assert torch.equal(nnf[:, 5:-5, 6:-6], init[:, 5:-5, 6:-6]) and err[inner].max() == 0
    assert not torch.equal(nnf_random[:, 5:-5, 6:-6], init[:, 5:-5, 6:-6])


def test_opcheck():
    style, guides, target = case(hs=12, ws=13, ht=11, wt=12)
    args = (style, guides, target, torch.tensor([1, 2, 3, 4], dtype=torch.int32), 1, None, 3, 2, 1, 1, 2, 10, 3)
    torch.library.opcheck(torch.ops.fresco.patch_synthesis.default, args)


def test_float_inputs_are_rounded_like_uint8():
    style, guides, target = case()
    a = call(style, guides, target, "fused")
    b = call(style.float() + 0.3, guides.double(), target.float() - 0.2, "fused")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs, match", [
    (dict(style=torch.zeros(3, 20)), "style must be a 3-D tensor"),
    (dict(target_guide=torch.zeros(3, 20, 20, dtype=torch.uint8)), "target_guide must have the source_guide's 4"),
    (dict(source_guide=torch.zeros(4, 21, 20, dtype=torch.uint8)), r"source_guide must be \[G, 20, 20\]"),
    (dict(target_guide=torch.full((4, 20, 20), float("nan"))), "target_guide must be finite"),
    (dict(style=torch.zeros(3, 20, 20, dtype=torch.int32)), "style must be uint8"),
    (dict(weights=[1, 2, 3]), "weights must be 4 ints in"),
    (dict(weights=[1, 2, 3, 999]), "weights must be 4 ints in"),
    (dict(patch_size=4), "patch_size must be one of"),
    (dict(levels=0), r"levels must be an int in \[1, 12\]"),
    (dict(seed=-1), "seed must be an int"),
    (dict(init_nnf=torch.zeros(2, 19, 20, dtype=torch.int32)), r"init_nnf must be \[2, 20, 20\]"),
    (dict(init_nnf=torch.zeros(2, 20, 20)), "init_nnf must have dtype"),
    (dict(style=torch.zeros(3, 4, 4, dtype=torch.uint8), source_guide=torch.zeros(4, 4, 4, dtype=torch.uint8)),
     "at least patch_size=5"),
])
def test_bad_input(kwargs, match):
    args = dict(style=torch.zeros(3, 20, 20, dtype=torch.uint8), source_guide=torch.zeros(4, 20, 20, dtype=torch.uint8),
                target_guide=torch.zeros(4, 20, 20, dtype=torch.uint8), weights=[1, 1, 1, 1])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fk.patch_synthesis(**args)


@pytest.mark.cuda
def test_cuda_matches_reference():
    style, guides, target = case(hs=70, ws=90, ht=64, wt=81)
    ref = call(style, guides, target, "reference", uniformity=100)
    got = call(style.cuda(), guides.cuda(), target.cuda(), "fused", uniformity=100)
    assert all(torch.equal(x.cpu(), y) for x, y in zip(got, ref))


# ---- the propagation built on it ----

def test_histogram_blend_and_poisson():
    from fresco.video.patch_propagation import histogram_blend, poisson_fuse, _grads
    a, b = torch.rand(3, 16, 20) * 255, torch.rand(3, 16, 20) * 255
    assert torch.allclose(histogram_blend(a, b, torch.ones(16, 20)), a, atol=1e-4)
    assert torch.allclose(histogram_blend(a, b, torch.zeros(16, 20)), b, atol=1e-4)
    mix = histogram_blend(a, b, torch.full((16, 20), 0.5))
    assert mix.std() > 0.95 * 0.5 * (a.std() + b.std())  # a plain average would lose ~30% of the contrast
    # where the two agree nothing is rescaled: flat colours and edges stay as they are (no halo, no colour shift)
    flat = torch.zeros(3, 16, 20)
    flat[:, :, 8:] = 200
    ramp = torch.linspace(0, 1, 20).expand(16, 20)
    assert torch.allclose(histogram_blend(flat, flat.clone(), ramp), flat, atol=1e-3)
    assert torch.allclose(histogram_blend(a, a.clone(), torch.full((16, 20), 0.5)), a, atol=1e-2)
    gx, gy = _grads(a)
    assert torch.allclose(poisson_fuse(a, gx, gy), a, atol=1e-2)  # its own gradients and itself: a fixed point
    shifted = poisson_fuse(a + 40, gx, gy, lam=1e-3)
    assert torch.allclose(shifted, a + 40, atol=1e-2)
    # the per-pixel choice: a where its error is lower, b elsewhere (away from the softened seam; exact when hard)
    from fresco.video.patch_propagation import fuse
    err_a = torch.zeros(16, 20)
    err_a[:, 10:] = 100
    err_b = torch.full((16, 20), 50.0)
    for poisson in (False, True):
        out = fuse(a, err_a, b, err_b, 0.5, poisson, soften=5)
        assert out.shape == a.shape and torch.isfinite(out).all()
        if not poisson:
            assert torch.allclose(out[:, :, :8], a[:, :, :8], atol=1e-3)
            assert torch.allclose(out[:, :, 13:], b[:, :, 13:], atol=1e-3)
            assert not torch.allclose(out[:, :, 9:11], torch.cat([a[:, :, 9:10], b[:, :, 10:11]], 2), atol=1e-3)
    hard = fuse(a, err_a, b, err_b, 0.5, False, soften=1)
    assert torch.allclose(hard, torch.cat([a[:, :, :10], b[:, :, 10:]], 2), atol=1e-3)


def test_weighted_vote_and_colour_error():
    from fresco.video.patch_propagation import colour_error, weighted_vote
    style = torch.randint(0, 256, (3, 12, 14)).float()
    ys, xs = torch.meshgrid(torch.arange(9), torch.arange(10), indexing="ij")
    nnf = torch.stack([ys + 2, xs + 3])            # a pure shift inside the style
    even = torch.full((9, 10), 7.0)
    # a coherent field: every covering patch proposes the same pixel, whatever the weights
    assert torch.allclose(weighted_vote(style, nnf, even, 2, 0.5), style[:, 2:11, 3:13])
    # an incoherent field: equal errors give the plain (unweighted) vote; one bad patch barely counts
    rnd = torch.stack([torch.randint(2, 10, (9, 10)), torch.randint(2, 12, (9, 10))])
    plain = weighted_vote(style, rnd, even, 1, 0.5)
    ref_total = torch.zeros(3, 9, 10)
    ref_count = torch.zeros(9, 10)
    for y in range(9):
        for x in range(10):
            for oy in (-1, 0, 1):
                for ox in (-1, 0, 1):
                    qy, qx = y - oy, x - ox
                    if 0 <= qy < 9 and 0 <= qx < 10:
                        ref_total[:, y, x] += style[:, rnd[0, qy, qx] + oy, rnd[1, qy, qx] + ox]
                        ref_count[y, x] += 1
    assert torch.allclose(plain, ref_total / ref_count, atol=1e-4)
    bad = even.clone()
    bad[4, 5] = 1e4
    w = weighted_vote(style, rnd, bad, 1, 0.5)
    assert torch.allclose(w[:, 4, 5], ((ref_total[:, 4, 5] - style[:, rnd[0, 4, 5], rnd[1, 4, 5]]) / 8), atol=1e-3)
    # pixel-consistent votes: each pixel keeps the votes whose source pixel matches the frame there. With the frame
    # equal to the source at each patch's own centre, a tiny sigma gives back the frame exactly (each pixel's own
    # patch proposes it); sigma 0 is the error-weighted vote alone
    own = style[:, rnd[0], rnd[1]]
    both = weighted_vote(style, rnd, even, 1, 0.5, style, own, 1e-3)   # the style, then the source's own vote
    assert both.shape == (6, 9, 10) and torch.allclose(both[:3], own, atol=1e-3)
    assert torch.allclose(both[3:], own, atol=1e-3)
    # a vanishing sharpness or sigma (1e-320 passes the knobs' ranges) is "the best vote only", not inf / NaN
    for s, sigma in ((1e-320, 1e-3), (0.5, 1e-320), (1e-320, 1e-320)):
        tiny = weighted_vote(style, rnd, even, 1, s, style, own, sigma)
        assert torch.allclose(tiny[:3], own, atol=1e-3)
        assert torch.isfinite(weighted_vote(style, rnd, bad, 1, s, style, own, sigma)).all()
    assert not torch.allclose(plain, own, atol=1.0)
    assert torch.allclose(weighted_vote(style, rnd, even, 1, 0.5, style, own, 0.0)[:3], plain, atol=1e-4)
    # a frame far from every source pixel (a flash, a region no key saw): still the weighted mean of the votes,
    # never 0 / 0 (every raw weight exp(-|d|^2 / 20) underflows here)
    far = torch.full((3, 9, 10), 1e4)
    dark = weighted_vote(style, rnd, bad, 1, 0.5, style, far, 20.0)
    assert torch.isfinite(dark).all() and bool((dark[:3] > 0).all()) and dark[:3].max() <= 255
    frame = style[:, 2:11, 3:13]
    assert torch.equal(colour_error(frame, style, nnf[0], nnf[1], 3), torch.zeros(9, 10))
    e = colour_error(frame, style, rnd[0], rnd[1], 3)
    assert e.shape == (9, 10) and bool((e > 0).any())


def test_warp_candidate_near_a_key():
    """A sub-pixel shift one frame from the key: with the warp candidate the output is the key's bicubic warp
    wherever that warp's colour error is clearly below the synthesis's, so it is closer to the warped key."""
    from fresco.video.patch_propagation import PatchParams, _key_guides, synthesize
    g = torch.Generator().manual_seed(0)
    key_src = F.avg_pool2d(torch.rand(1, 3, 40, 40, generator=g) * 255, 3, 1, 1)
    key_out = 255 - key_src
    flow = torch.zeros(1, 2, 40, 40)
    flow[:, 0] = 0.5                               # frame pixel p sits at p + (0.5, 0) in the key
    from fresco.video.patch_propagation import sample
    frame = sample(key_src, flow)
    truth = sample(key_out, flow)[0]
    guides = _key_guides(key_src, key_out)
    off, _ = synthesize(frame, flow, key_src, key_out, guides, PatchParams(warp_candidate=False, vote_sharpness=0,
                                                                              vote_pixel_sigma=0))
    on, _ = synthesize(frame, flow, key_src, key_out, guides, PatchParams())
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert (on - truth)[inner].abs().mean() < (off - truth)[inner].abs().mean()


@pytest.mark.slow
def test_propagate_patch_method():
    from fresco.video.propagate import propagate
    rng = np.random.default_rng(0)
    base = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    base = np.asarray(F.avg_pool2d(torch.from_numpy(base).permute(2, 0, 1).float()[None], 3, 1, 1)[0]
                      .permute(1, 2, 0).round().to(torch.uint8))
    frames = [np.ascontiguousarray(base[:, i:i + 40]) for i in range(7)]  # a 1 px/frame pan
    styled = {k: 255 - frames[k] for k in (0, 4)}


    from fresco.models.flow import DISFlow
    out = list(propagate(iter(frames), [0, 4], lambda k: styled[k], DISFlow("ultrafast"), method="patch"))
    assert len(out) == 7 and np.array_equal(out[0], styled[0]) and np.array_equal(out[4], styled[4])
    for i in (1, 2, 3, 5, 6):
        err = np.abs(out[i].astype(float) - (255 - frames[i]).astype(float))[4:-4, 4:-4].mean()
        assert err < 12, (i, err)
    with pytest.raises(ValueError, match="method must be one of"):
        list(propagate(iter(frames), [0, 4], lambda k: styled[k], DISFlow("ultrafast"), method="ebsynth"))


def _pan(n, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.rand(1, 3, size, size + n, generator=g) * 255, 3, 1, 1)[0]
    return [base[:, :, i:i + size].contiguous() for i in range(n)]  # a 1 px/frame pan


FAST = dict(levels=1, em_iters=1, pm_iters=1, search_radius=1)


def test_temporal_guide_previous_is_the_previous_output_carried_one_step(monkeypatch):
    """patch_temporal_guide "previous" (Ebsynth's temporal guide): each direction's frame is guided by that
    direction's output for the frame one step nearer its key, carried one step along the frame-to-frame flow; next
    to a key that is the key itself, so a one-frame gap is the same as with "key"."""
    import fresco.video.patch_propagation as pp
    frames = _pan(6)
    styled = [255 - f for f in frames]
    src_a, out_a, src_b, out_b = frames[0], styled[0], frames[5], styled[5]
    g = torch.Generator().manual_seed(1)
    steps = torch.randn(4, 2, 24, 24, generator=g)           # any flow: the guide must follow it
    flow = lambda s, d: steps[:s.shape[0]]
    one = [list(pp.patch_gap(frames[1:2], src_a, out_a, frames[2], styled[2], flow,
                             pp.PatchParams(temporal_guide=g, **FAST))) for g in ("key", "previous")]
    assert torch.equal(one[0][0], one[1][0])

    seen = []
    real = pp.synthesize

    def spy(frame, to_key, key_src, key_out, guides, p, backend=None, with_source=False, temporal=None):
        res = real(frame, to_key, key_src, key_out, guides, p, backend, with_source, temporal)
        seen.append((torch.equal(key_out[0], out_a), temporal, res[0]))
        return res
    monkeypatch.setattr(pp, "synthesize", spy)
    calls = []

    def flow(s, d):
        calls.append(len(calls))
        return steps if len(calls) == 1 else -steps
    outs = list(pp.patch_gap(frames[1:5], src_a, out_a, src_b, out_b, flow,
                             pp.PatchParams(temporal_guide="previous", **FAST)))
    assert len(outs) == 4
    a_side = [(t, o) for is_a, t, o in seen if is_a]
    b_side = [(t, o) for is_a, t, o in seen if not is_a][::-1]  # b ran from the frame next to key b back to a
    back, fwd = steps, -steps
    for j in range(4):
        prev_a = out_a if j == 0 else a_side[j - 1][1]
        assert torch.allclose(a_side[j][0], pp.sample(prev_a[None], back[j][None]))
        prev_b = out_b if j == 3 else b_side[j + 1][1]
        assert torch.allclose(b_side[j][0], pp.sample(prev_b[None], fwd[j][None]))


def test_a_zero_weight_guide_changes_nothing_in_the_op():
    """A guide channel of weight 0 adds 0 to every patch distance, so leaving it out gives the same field, error and
    output: what lets `synthesize` pass only the guides that weigh (the position and temporal guides at weight 0)."""
    g = torch.Generator().manual_seed(3)
    style = (torch.rand(3, 20, 22, generator=g) * 255).round()
    src = (torch.rand(6, 20, 22, generator=g) * 255).round()
    tgt = (torch.rand(6, 18, 21, generator=g) * 255).round()
    weights = [5, 0, 7, 0, 3, 0]
    used = [0, 2, 4]
    kw = dict(levels=2, em_iters=2, pm_iters=2, search_radius=4, seed=9)
    full = fk.patch_synthesis(style, src, tgt, weights, **kw)
    part = fk.patch_synthesis(style, src[used], tgt[used], [weights[i] for i in used], **kw)
    for a, b in zip(full, part):
        assert torch.equal(a, b)
    moved = fk.patch_synthesis(style, src, tgt, [5, 1, 7, 0, 3, 0], **kw)   # and a weight that is not 0 counts
    assert not torch.equal(full[1], moved[1])


@pytest.mark.parametrize("w_position, w_temporal, channels", [(2, 2, 9), (0, 2, 7), (2, 0, 6), (0, 0, 4)])
def test_synthesize_passes_only_the_guides_that_weigh(monkeypatch, w_position, w_temporal, channels):
    import fresco.video.patch_propagation as pp
    seen = []
    real = pp.patch_synthesis

    def spy(style, source_guide, target_guide, weights, **kw):
        seen.append((source_guide.shape[0], target_guide.shape[0], list(weights)))
        return real(style, source_guide, target_guide, weights, **kw)
    monkeypatch.setattr(pp, "patch_synthesis", spy)
    frames = _pan(3)
    p = pp.PatchParams(w_position=w_position, w_temporal=w_temporal, **FAST)
    out = list(pp.patch_gap(frames[1:2], frames[0], 255 - frames[0], frames[2], 255 - frames[2],
                            lambda s, d: torch.zeros(s.shape[0], 2, 24, 24), p))
    assert len(out) == 1 and seen
    assert all(s == t == channels and 0 not in w for s, t, w in seen)
