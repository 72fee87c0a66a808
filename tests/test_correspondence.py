"""flow_correspondence: C++ (CPU op), Triton (interpreter on CPU, native on CUDA), the vectorised reference and the
public functions against the line-by-line port of the published loop, bit for bit: random, colliding, occluded,
tied and near-tied inputs, odd sizes, N = 2 and 9; permutations; segments vs the published mask; the full-resolution
wrapper vs the published get_mapping_ind; opcheck, compile, bad inputs."""
import ast
import os

import pytest
import torch
import torch.nn.functional as F

import fresco_kernels as fk
from fresco_kernels.correspondence.reference import (colour_error, correspondence_pairs_reference,
                                                     flow_correspondence_loop, single_pair_mapping_loop)
from fresco_kernels.correspondence.triton import correspondence_pairs_fwd, flow_correspondence_fwd

PUBLISHED = "/work/ref_fresco/src/flow_utils.py"

SHAPES = {"N2-7x11": (2, 7, 11), "N9-13x10": (9, 13, 10), "N3-5x5": (3, 5, 5), "N4-1x6": (4, 1, 6)}
KINDS = ["random", "collide", "half", "all_occluded", "no_occlusion", "ties", "near_ties", "far"]


def make_inputs(n, h, w, kind):
    """(bwd_flow [N-1,2,h,w] fp32, occ [N-1,h,w] bool, frames [N,3,h,w] fp32 in [-1,1]) of one pattern."""
    p = n - 1
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    flow = torch.randn(p, 2, h, w) * 2
    occ = torch.rand(p, h, w) < 0.2
    frames = torch.rand(n, 3, h, w) * 2 - 1
    if kind in ("collide", "ties", "near_ties"):
        # every source lands (within +-0.4 px) on one of at most 2x3 targets: many sources per target
        ty = torch.randint(0, min(h, 2), (p, h, w)).float()
        tx = torch.randint(0, min(w, 3), (p, h, w)).float()
        jitter = (torch.rand(p, 2, h, w) - 0.5) * 0.8
        flow = torch.stack([tx - cols, ty - rows], 1) + jitter
    if kind == "half":
        # exact .5 fractions: torch.round's ties-to-even decides the target
        flow = torch.randint(-3, 3, (p, 2, h, w)).float() + 0.5
    if kind == "all_occluded":
        occ = torch.ones(p, h, w, dtype=torch.bool)
    if kind == "no_occlusion":
        occ = torch.zeros(p, h, w, dtype=torch.bool)
    if kind == "ties":
        frames = torch.full((n, 3, h, w), 0.25)
    if kind == "near_ties":
        # colours a few ulps apart, and a few levels: many equal and adjacent colour errors
        frames = 0.3 + torch.randint(0, 4, (n, 3, h, w)).float() * 2.0**-22
        frames[:, 1] = torch.randint(-2, 3, (n, h, w)).float() * 0.125
    if kind == "far":
        flow = torch.randn(p, 2, h, w) * 3 * max(h, w)
    return flow, occ, frames


def run_impl(impl, flow, occ, frames):
    if impl == "op":
        return torch.ops.fresco.flow_correspondence(flow, occ, frames)
    if impl == "triton":
        return flow_correspondence_fwd(flow, occ, frames)
    if impl == "reference":
        return fk.flow_correspondence(flow, occ, frames, backend="reference")
    return fk.flow_correspondence(flow, occ, frames)


IMPLS = ["op", "triton", "reference", "public"]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_matches_published_loop(kind, shape):
    flow, occ, frames = make_inputs(*shape, kind)
    fwd_ref, seg_ref, mask_ref = flow_correspondence_loop(flow, occ, frames)
    for impl in IMPLS:
        fwd, seg = run_impl(impl, flow, occ, frames)
        assert fwd.dtype == torch.int64 and seg.dtype == torch.int32, impl
        assert torch.equal(fwd, fwd_ref), impl
        assert torch.equal(seg, seg_ref), impl
    # rows are permutations; segments reproduce the published [hw, 1, N, N] mask
    n, hw = fwd_ref.shape
    assert torch.equal(fwd_ref.sort(1).values, torch.arange(hw).expand(n, hw))
    assert torch.equal(fk.segment_mask(seg_ref), mask_ref)


@pytest.mark.parametrize("kind", ["random", "collide", "ties", "near_ties", "all_occluded"])
@pytest.mark.parametrize("impl", ["op", "triton", "reference", "public"])
def test_single_pair(impl, kind):
    flow, occ, frames = make_inputs(2, 9, 7, kind)
    m_ref, u_ref = single_pair_mapping_loop(flow[0], occ[0], frames[0], frames[1])
    if impl == "triton":
        maps, unl = correspondence_pairs_fwd(flow, occ, frames)
        m, u = maps[0], unl[0].bool()
    elif impl == "reference":
        maps, unl = correspondence_pairs_reference(flow, occ, frames)
        m, u = maps[0], unl[0]
    else:
        m, u = fk.correspondence_pair(flow[0], occ[0], frames[0], frames[1],
                                      backend="reference" if impl == "public" else "fused")
    assert torch.equal(m, m_ref) and torch.equal(u, u_ref)


def test_tie_rules_by_hand():
    # 1x4 frame; sources 1, 2, 3 all land on target 0 (source 0 is occluded)
    flow = torch.zeros(1, 2, 1, 4)
    flow[0, 0] = torch.tensor([0.0, -1.0, -2.0, -3.0])
    occ = torch.tensor([[[True, False, False, False]]])
    frames = torch.zeros(2, 3, 1, 4)
    # errors: source 1 -> 0.25/3, source 2 -> 0.25/3 (tie with 1), source 3 -> 0 (strictly better)
    frames[1, :, 0, 1] = 0.5
    frames[1, :, 0, 2] = -0.5
    for impl in IMPLS:
        fwd, seg = run_impl(impl, flow, occ, frames)
        # target 0 <- source 3; targets 1, 2, 3 unlinked <- unused sources 0, 1, 2 in order
        assert fwd[1].tolist() == [3, 0, 1, 2], impl
        assert seg[1].tolist() == [0, 1, 1, 1], impl
    frames[1, :, 0, 3] = 0.5
    for impl in IMPLS:
        fwd, _ = run_impl(impl, flow, occ, frames)
        # three equal errors: the lowest source index (1) keeps the target
        assert fwd[1].tolist() == [1, 0, 2, 3], impl


def designed_near_ties(k=48):
    """One pair on a 3 x k grid where every column is a close call: target (0, c) of an all-zero frame i is reached
    by sources (1, c) = A and (2, c) = B of frame i+1. Half the columns: B = A's channels reversed with
    (a0^2 + a1^2) + a2^2 != a0^2 + (a1^2 + a2^2), so summing in another order flips the winner. The other half:
    A = (nextafter(b0), 0, 0), B = (b0, 0, 0) whose squares differ but whose squares / 3 round to one float: a tie
    (A, the lower index, wins) that a missing or inexact division would break."""
    g = torch.Generator().manual_seed(1)
    trip = torch.rand(8 * k, 3, generator=g) * 2 - 1
    sq = trip ** 2
    trip = trip[((sq[:, 0] + sq[:, 1]) + sq[:, 2]) != (sq[:, 0] + (sq[:, 1] + sq[:, 2]))][: k // 2]
    b0 = torch.rand(64 * k, generator=g) * 0.5 + 0.5
    a0 = torch.nextafter(b0, torch.tensor(2.0))
    tie = ((a0 * a0) / 3 == (b0 * b0) / 3) & (a0 * a0 != b0 * b0)
    b0, a0 = b0[tie][: k - k // 2], a0[tie][: k - k // 2]
    zeros = torch.zeros_like(a0)
    a = torch.cat([trip, torch.stack([a0, zeros, zeros], 1)])
    b = torch.cat([trip[:, [2, 1, 0]], torch.stack([b0, zeros, zeros], 1)])
    assert a.shape == (k, 3) and b.shape == (k, 3)
    frames = torch.zeros(2, 3, 3, k)
    frames[1, :, 1] = a.t()
    frames[1, :, 2] = b.t()
    flow = torch.zeros(1, 2, 3, k)
    flow[0, 1] = -torch.arange(3.0).view(3, 1)
    occ = torch.zeros(1, 3, k, dtype=torch.bool)
    occ[0, 0] = True
    return (flow, occ, frames), a.t(), b.t()


def test_designed_near_ties_are_sharp():
    # the designed case tells the exact colour error from every plausible variant
    _, a, b = designed_near_ties()
    ours = colour_error(a, torch.zeros_like(a)) <= colour_error(b, torch.zeros_like(b))

    def sums(x):
        s = x ** 2
        return s, (s[0] + s[1]) + s[2]

    def fused(x):
        s, _ = sums(x)
        s01 = (x[0].double() * x[0].double() + s[1].double()).float()
        return (s01.double() + x[2].double() ** 2).float() / 3

    variants = {
        "right-assoc": lambda x: (sums(x)[0][0] + (sums(x)[0][1] + sums(x)[0][2])) / 3,
        "times 1/3": lambda x: sums(x)[1] * torch.tensor(1 / 3),
        "no division": lambda x: sums(x)[1],
        "fma": fused,
    }
    for name, err in variants.items():
        assert not torch.equal(ours, err(a) <= err(b)), name


@pytest.mark.parametrize("impl", IMPLS)
def test_designed_near_ties(impl):
    inputs, _, _ = designed_near_ties()
    fwd_ref, seg_ref, _ = flow_correspondence_loop(*inputs)
    fwd, seg = run_impl(impl, *inputs)
    assert torch.equal(fwd, fwd_ref) and torch.equal(seg, seg_ref)


def test_colour_error_is_torch_mean():
    # the loop's ((v - t) ** 2).mean() on one 3-vector, bit for bit, including near ties
    a = torch.rand(3, 3000) * 2 - 1
    b = torch.where(torch.rand(3, 3000) < 0.5, a + torch.randint(-3, 4, (3, 3000)) * 2.0**-23, torch.rand(3, 3000))
    ours = colour_error(a, b)
    theirs = torch.stack([((a[:, i] - b[:, i]) ** 2).mean() for i in range(a.shape[1])])
    assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32))


@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_strided_inputs(impl):
    flow, occ, frames = make_inputs(4, 6, 9, "collide")
    fwd_ref, seg_ref = fk.flow_correspondence_reference(flow, occ, frames)
    flow_s = flow.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    occ_s = occ.transpose(1, 2).contiguous().transpose(1, 2)
    frames_s = frames.contiguous(memory_format=torch.channels_last)
    fwd, seg = run_impl(impl, flow_s, occ_s, frames_s)
    assert torch.equal(fwd, fwd_ref) and torch.equal(seg, seg_ref)


def _published_get_mapping_ind(bwd_flows, bwd_occs, imgs, scale):
    """Port of the published get_mapping_ind with its per-pair resampling (imgs[i:i+2] interpolated per pair)."""
    n = imgs.shape[0]
    flow, occ, frames = [], [], []
    for i in range(n - 1):
        fl = F.interpolate(bwd_flows[i:i + 1], scale_factor=1. / scale, mode="bilinear")[0] / scale
        oc = F.interpolate(bwd_occs[i:i + 1][None], scale_factor=1. / scale, mode="bilinear")[0, 0] > 0.5
        fr = F.interpolate(imgs[i:i + 2], scale_factor=1. / scale, mode="bilinear")
        flow.append(fl)
        occ.append(oc)
        frames.append(fr)
    fwd = [torch.arange(flow[0].shape[1] * flow[0].shape[2])]
    for i in range(n - 1):
        m, _ = single_pair_mapping_loop(flow[i], occ[i], frames[i][0], frames[i][1])
        fwd.append(m[fwd[-1]])
    return torch.stack(fwd)


def _full_res_inputs(n, H, W):
    bwd_flows = torch.randn(n, 2, H, W) * 6
    bwd_occs = (torch.rand(n, H, W) < 0.3).float()
    imgs = torch.rand(n, 3, H, W) * 2 - 1
    return bwd_flows, bwd_occs, imgs


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_at_scale_matches_published_pipeline(backend):
    bwd_flows, bwd_occs, imgs = _full_res_inputs(4, 48, 40)
    fwd, seg = fk.flow_correspondence_at_scale(bwd_flows, bwd_occs, imgs, 8.0, backend=backend)
    assert fwd.shape == (4, 6 * 5)
    assert torch.equal(fwd, _published_get_mapping_ind(bwd_flows, bwd_occs, imgs, 8.0))


def _load_published():
    """get_single_mapping_ind / get_mapping_ind from the authors' file, without its heavy imports."""
    tree = ast.parse(open(PUBLISHED).read())
    funcs = [node for node in tree.body if isinstance(node, ast.FunctionDef)
             and node.name in ("get_single_mapping_ind", "get_mapping_ind")]
    namespace = {"torch": torch, "F": F}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), PUBLISHED, "exec"), namespace)
    return namespace["get_mapping_ind"]


@pytest.mark.skipif(not os.path.exists(PUBLISHED), reason="the authors' flow_utils.py is not on this machine")
@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_at_scale_matches_authors_code():
    get_mapping_ind = _load_published()
    bwd_flows, bwd_occs, imgs = _full_res_inputs(3, 64, 48)
    fwd_pub, bwd_pub, mask_pub = get_mapping_ind(bwd_flows, bwd_occs, imgs, scale=8.0)
    fwd, seg = fk.flow_correspondence_at_scale(bwd_flows, bwd_occs, imgs, 8.0)
    assert torch.equal(fwd, fwd_pub[:, 0])
    assert torch.equal(fk.segment_mask(seg), mask_pub)
    assert torch.equal(torch.sort(fwd, 1)[1], bwd_pub[:, 0])


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_opcheck(layout):
    flow, occ, frames = make_inputs(3, 5, 7, "random")
    if layout == "strided":
        flow = flow.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        frames = frames.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fresco.flow_correspondence.default, (flow, occ, frames))


def test_compile_fullgraph():
    flow, occ, frames = make_inputs(3, 5, 7, "collide")
    fn = torch.compile(lambda f, o, x: fk.flow_correspondence(f, o, x), fullgraph=True, backend="aot_eager")
    fwd, seg = fn(flow, occ, frames)
    fwd_ref, seg_ref = fk.flow_correspondence_reference(flow, occ, frames)
    assert torch.equal(fwd, fwd_ref) and torch.equal(seg, seg_ref)


def test_low_precision_inputs_are_computed_in_fp32():
    flow, occ, frames = make_inputs(3, 6, 6, "random")
    fwd, seg = fk.flow_correspondence(flow.half(), occ, frames.half())
    fwd_ref, seg_ref, _ = flow_correspondence_loop(flow.half().float(), occ, frames.half().float())
    assert torch.equal(fwd, fwd_ref) and torch.equal(seg, seg_ref)


def _bad(over):
    flow, occ, frames = make_inputs(3, 4, 5, "random")
    args = {"bwd_flow": flow, "occ": occ, "frames": frames}
    args.update(over)
    return args


@pytest.mark.parametrize("over, err, match", [
    ({"occ": torch.zeros(2, 4, 5)}, TypeError, "occ must have dtype in \\(bool\\)"),
    ({"occ": torch.zeros(2, 4, 6, dtype=torch.bool)}, ValueError, "occ must have shape"),
    ({"bwd_flow": torch.zeros(3, 2, 4, 5)}, ValueError, "bwd_flow must have shape \\[2, 2, 4, 5\\]"),
    ({"bwd_flow": torch.zeros(2, 3, 4, 5)}, ValueError, "bwd_flow must have shape"),
    ({"bwd_flow": torch.zeros(2, 2, 4, 5, dtype=torch.int64)}, TypeError, "bwd_flow must have dtype"),
    ({"frames": torch.zeros(3, 4, 4, 5)}, ValueError, "frames must be \\[N, 3, h, w\\]"),
    ({"frames": torch.zeros(1, 3, 4, 5), "bwd_flow": torch.zeros(0, 2, 4, 5),
      "occ": torch.zeros(0, 4, 5, dtype=torch.bool)}, ValueError, "N >= 2"),
    ({"frames": torch.zeros(3, 3, 20)}, ValueError, "frames must be a 4-D tensor"),
    ({"frames": torch.full((3, 3, 4, 5), float("nan"))}, ValueError, "frames must be finite"),
])
def test_bad_input(over, err, match):
    with pytest.raises(err, match=match):
        fk.flow_correspondence(**_bad(over))


def test_op_checks_inputs():
    flow, occ, frames = make_inputs(3, 4, 5, "random")
    with pytest.raises(RuntimeError, match="occ must be"):
        torch.ops.fresco.flow_correspondence(flow, occ.float(), frames)
    with pytest.raises(RuntimeError, match="frames must be"):
        torch.ops.fresco.flow_correspondence(flow, occ, frames.double())


def test_bad_input_pair_and_scale():
    flow, occ, frames = make_inputs(2, 4, 5, "random")
    with pytest.raises(ValueError, match="occ must have shape \\[4, 5\\]"):
        fk.correspondence_pair(flow[0], occ[0, :3], frames[0], frames[1])
    with pytest.raises(ValueError, match="frame_i1 must have shape"):
        fk.correspondence_pair(flow[0], occ[0], frames[0], frames[1, :, :3])
    with pytest.raises(ValueError, match="at least N-1"):
        fk.flow_correspondence_at_scale(flow[:0], occ[:0].float(), frames, 1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        fk.flow_correspondence_at_scale(flow, occ.float(), frames, 0.0)


# ---- CUDA (run by `make test-cuda`) ----
CUDA_SHAPES = {"N8-64x64": (8, 64, 64), "N16-32x32": (16, 32, 32), "N8-64x112": (8, 64, 112), "N9-13x10": (9, 13, 10)}


@pytest.mark.cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES.values(), ids=CUDA_SHAPES.keys())
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(kind, shape):
    flow, occ, frames = make_inputs(*shape, kind)
    fwd_ref, seg_ref = fk.flow_correspondence_reference(flow, occ, frames)
    fwd, seg = fk.flow_correspondence(flow.cuda(), occ.cuda(), frames.cuda())
    assert torch.equal(fwd.cpu(), fwd_ref) and torch.equal(seg.cpu(), seg_ref)
    fwd, seg = fk.flow_correspondence(flow.cuda(), occ.cuda(), frames.cuda(), backend="reference")
    assert torch.equal(fwd.cpu(), fwd_ref) and torch.equal(seg.cpu(), seg_ref)


@pytest.mark.cuda
def test_cuda_matches_loop():
    flow, occ, frames = make_inputs(3, 16, 16, "near_ties")
    fwd_ref, seg_ref, _ = flow_correspondence_loop(flow, occ, frames)
    fwd, seg = fk.flow_correspondence(flow.cuda(), occ.cuda(), frames.cuda())
    assert torch.equal(fwd.cpu(), fwd_ref) and torch.equal(seg.cpu(), seg_ref)


@pytest.mark.cuda
def test_cuda_designed_near_ties():
    inputs, _, _ = designed_near_ties(256)
    fwd_ref, seg_ref, _ = flow_correspondence_loop(*inputs)
    fwd, seg = fk.flow_correspondence(*(t.cuda() for t in inputs))
    assert torch.equal(fwd.cpu(), fwd_ref) and torch.equal(seg.cpu(), seg_ref)


@pytest.mark.cuda
def test_cuda_opcheck():
    flow, occ, frames = make_inputs(3, 9, 7, "random")
    torch.library.opcheck(torch.ops.fresco.flow_correspondence.default, (flow.cuda(), occ.cuda(), frames.cuda()))
