"""trajectory_attention: C++ (CPU op), Triton (interpreter on CPU, native on CUDA) and the public function against the
published gather -> masked SDPA -> argsort-scatter reference: trajectory/segment patterns, odd shapes, low precision,
strided inputs, opcheck (inference op), compile, the inference-only guard and bad inputs."""
import pytest
import torch

import fresco_kernels as fk
from fresco_kernels.trajectory_attention.triton import trajectory_attention_fwd

from _utils import assert_lowp_close, max_err

# fp32: same products as SDPA, another summation order and an online softmax (Triton) -> errors ~1e-6 at |out| ~ 1
ATOL32 = 2e-5

# (chunks, N, h, w, heads, D); hw kept small for the Triton interpreter
SHAPES = {
    "up3like-N3-8x8-H8-D40": (2, 3, 8, 8, 8, 40),
    "up2like-N4-5x7-H8-D80": (2, 4, 5, 7, 8, 80),
    "N2-5x7-H2-D40": (2, 2, 5, 7, 2, 40),
    "N5-3x5-H3-D24": (2, 5, 3, 5, 3, 24),
    "N17-3x3-H1-D7-chunks1": (1, 17, 3, 3, 1, 7),
}
SEGMENTS = ["equal", "mixed", "broken", "alone"]


def make_mapping(n, hw, kind="random"):
    """[N, hw] int64, row 0 the identity, each row a permutation."""
    if kind == "identity":
        return torch.arange(hw).expand(n, hw).contiguous()
    return torch.stack([torch.arange(hw)] + [torch.randperm(hw) for _ in range(n - 1)])


def make_segment(n, hw, kind):
    """[N, hw] int32, non-decreasing in the frame, starting at 0 (as flow_correspondence builds them)."""
    if kind == "equal":
        return torch.zeros(n, hw, dtype=torch.int32)
    if kind == "alone":
        return torch.arange(n, dtype=torch.int32)[:, None].expand(n, hw).contiguous()
    p_break = {"mixed": 0.2, "broken": 0.6}[kind]
    breaks = (torch.rand(n, hw) < p_break).int()
    breaks[0] = 0
    return torch.cumsum(breaks, 0).int()


def make_inputs(chunks, n, h, w, heads, d, seg="mixed", dtype=torch.float32):
    hw, C = h * w, heads * d
    q, k, v = (torch.randn(chunks * n, hw, C).to(dtype) for _ in range(3))
    return q, k, v, make_mapping(n, hw), make_segment(n, hw, seg)


def run_impl(impl, q, k, v, fwd, seg, heads, chunks, scale_k=0.2):
    if impl == "op":
        return torch.ops.fresco.trajectory_attention(q, k, v, fwd, seg, scale_k, heads)
    if impl == "triton":
        return trajectory_attention_fwd(q, k, v, fwd, seg, scale_k, heads)
    if impl == "public":
        return fk.trajectory_attention(q, k, v, fwd, seg, scale_k, heads, chunks)
    return fk.trajectory_attention_reference(q, k, v, fwd, seg, scale_k, heads, chunks)


def loop_oracle(q, k, v, fwd, seg, heads, chunks, scale_k):
    """The definition, one trajectory at a time (fp64): independent of the reference's rearranges."""
    n, hw = fwd.shape
    B, _, C = q.shape
    D = C // heads
    out = torch.full((B, hw, C), float("nan"), dtype=torch.float64)
    for b in range(chunks):
        for p in range(hw):
            rows = [b * n + f for f in range(n)]
            pix = fwd[:, p]
            for h in range(heads):
                sl = slice(h * D, (h + 1) * D)
                qs = torch.stack([q[r, t, sl] for r, t in zip(rows, pix)]).double()
                ks = torch.stack([k[r, t, sl] for r, t in zip(rows, pix)]).double()
                vs = torch.stack([v[r, t, sl] for r, t in zip(rows, pix)]).double()
                s = qs @ (scale_k * ks).T / D ** 0.5
                s = s.masked_fill(seg[:, p][:, None] != seg[:, p][None, :], float("-inf"))
                o = torch.softmax(s, -1) @ vs
                for i, (r, t) in enumerate(zip(rows, pix)):
                    out[r, t, sl] = o[i]
    return out


@pytest.mark.parametrize("seg", ["mixed", "alone"])
def test_reference_matches_definition(seg):
    chunks, n, heads = 2, 4, 2
    q, k, v, fwd, segment = make_inputs(chunks, n, 3, 4, heads, 5, seg)
    ref = fk.trajectory_attention_reference(q, k, v, fwd, segment, 0.2, heads, chunks)
    assert max_err(ref, loop_oracle(q, k, v, fwd, segment, heads, chunks, 0.2)) < 1e-5


def test_segment_mask_is_the_published_block_mask():
    # published get_mapping_ind: for every broken link (i -> i+1) of trajectory p, frames <= i and > i are cut apart
    n, hw = 6, 10
    breaks = torch.rand(n - 1, hw) < 0.4
    expected = torch.ones(hw, n, n, dtype=torch.bool)
    for i in range(n - 1):
        one = torch.ones(n, n, dtype=torch.bool)
        one[:i + 1, i + 1:] = False
        one[i + 1:, :i + 1] = False
        expected[breaks[i]] &= one
    segment = torch.cat([torch.zeros(1, hw, dtype=torch.int32), torch.cumsum(breaks.int(), 0).int()])
    assert torch.equal(fk.segment_mask(segment), expected.unsqueeze(1))


@pytest.mark.parametrize("seg", SEGMENTS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_matches_reference_fp32(impl, shape, seg):
    chunks, n, h, w, heads, d = shape
    q, k, v, fwd, segment = make_inputs(*shape, seg=seg)
    ref = run_impl("reference", q, k, v, fwd, segment, heads, chunks)
    out = run_impl(impl, q, k, v, fwd, segment, heads, chunks)
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    assert not torch.isnan(out).any(), "NaN: a token never written"
    assert max_err(out, ref) < ATOL32, max_err(out, ref)


@pytest.mark.parametrize("impl", ["op", "triton"])
def test_special_cases_are_exact(impl):
    chunks, n, h, w, heads, d = 2, 4, 4, 5, 2, 8
    q, k, v, fwd, _ = make_inputs(chunks, n, h, w, heads, d)
    # every frame in its own segment: each token attends only itself
    alone = make_segment(n, h * w, "alone")
    assert max_err(run_impl(impl, q, k, v, fwd, alone, heads, chunks), v) < 1e-6
    # identical keys along every trajectory: uniform weights over the segment -> mean of its values
    k_same = k[:1].expand_as(k).contiguous()
    ident = make_mapping(n, h * w, "identity")
    equal = make_segment(n, h * w, "equal")
    mean = v.reshape(chunks, n, h * w, heads * d).mean(1, keepdim=True).expand(-1, n, -1, -1).reshape_as(v)
    assert max_err(run_impl(impl, q, k_same, v, ident, equal, heads, chunks), mean) < 1e-5


@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_single_frame_returns_v(impl):
    q, k, v, fwd, segment = make_inputs(2, 1, 3, 4, 2, 8)
    assert max_err(run_impl(impl, q, k, v, fwd, segment, 2, 2), v) < 1e-6


@pytest.mark.parametrize("scale_k", [0.2, 1.0, 3.0])
def test_scale_k(scale_k):
    shape = (2, 3, 4, 4, 2, 40)
    q, k, v, fwd, segment = make_inputs(*shape)
    ref = run_impl("reference", q, k, v, fwd, segment, 2, 2, scale_k)
    for impl in ("op", "triton"):
        assert max_err(run_impl(impl, q, k, v, fwd, segment, 2, 2, scale_k), ref) < ATOL32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES["up3like-N3-8x8-H8-D40"], SHAPES["N5-3x5-H3-D24"]], ids=["D40", "D24"])
@pytest.mark.parametrize("impl", ["op", "triton"])
def test_low_precision(impl, shape, dtype):
    chunks, n, h, w, heads, d = shape
    q, k, v, fwd, segment = make_inputs(*shape)
    ref32 = run_impl("reference", q, k, v, fwd, segment, heads, chunks)
    lp = [t.to(dtype) for t in (q, k, v)]
    ref_lp = run_impl("reference", *lp, fwd, segment, heads, chunks)
    out = run_impl(impl, *lp, fwd, segment, heads, chunks)
    assert out.dtype == dtype
    assert_lowp_close(out, ref_lp, ref32, f"{impl} {dtype}")


def test_fp64_op():
    q, k, v, fwd, segment = make_inputs(2, 3, 3, 4, 2, 6, dtype=torch.float64)
    out = torch.ops.fresco.trajectory_attention(q, k, v, fwd, segment, 0.2, 2)
    assert out.dtype == torch.float64
    assert max_err(out, loop_oracle(q, k, v, fwd, segment, 2, 2, 0.2)) < 1e-12


@pytest.mark.parametrize("impl", ["op", "triton", "public"])
def test_strided_inputs(impl):
    # q, k, v as channel slices of one fused projection, v from SDPA's [B, heads, hw, D] layout
    chunks, n, h, w, heads, d = 2, 3, 4, 5, 2, 40
    hw, C = h * w, heads * d
    qkv = torch.randn(chunks * n, hw, 3 * C)
    q, k = qkv[..., :C], qkv[..., C:2 * C]
    hidden = torch.randn(chunks * n, heads, hw, d)
    v = hidden.transpose(1, 2).reshape(chunks * n, hw, C)
    fwd = make_mapping(n, hw).t().contiguous().t()
    segment = make_segment(n, hw, "mixed").t().contiguous().t()
    ref = run_impl("reference", q.contiguous(), k.contiguous(), v, fwd.contiguous(), segment.contiguous(), heads, chunks)
    assert max_err(run_impl(impl, q, k, v, fwd, segment, heads, chunks), ref) < ATOL32


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_opcheck(layout):
    q, k, v, fwd, segment = make_inputs(2, 3, 3, 4, 2, 8)
    if layout == "strided":
        q = torch.randn(6, 12, 32)[..., ::2]
        k = k.transpose(0, 1).contiguous().transpose(0, 1)
        fwd = fwd.t().contiguous().t()
    # inference-only op: no autograd formula to check
    torch.library.opcheck(torch.ops.fresco.trajectory_attention.default, (q, k, v, fwd, segment, 0.2, 2),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph():
    shape = (2, 3, 4, 4, 2, 40)
    q, k, v, fwd, segment = make_inputs(*shape)
    fn = torch.compile(lambda a, b, c, f, s: fk.trajectory_attention(a, b, c, f, s, 0.2, 2, 2) * 2,
                       fullgraph=True, backend="aot_eager")
    ref = fk.trajectory_attention_reference(q, k, v, fwd, segment, 0.2, 2, 2) * 2
    assert max_err(fn(q, k, v, fwd, segment), ref) < 2 * ATOL32


def test_backend_switch():
    q, k, v, fwd, segment = make_inputs(2, 3, 3, 3, 2, 8)
    with fk.use_backend("reference"):
        a = fk.trajectory_attention(q, k, v, fwd, segment, heads=2)
    assert max_err(a, fk.trajectory_attention(q, k, v, fwd, segment, heads=2, backend="fused")) < ATOL32


def test_refuses_grad():
    q, k, v, fwd, segment = make_inputs(2, 3, 3, 3, 2, 8)
    qg = q.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="inference-only"):
        fk.trajectory_attention(qg, k, v, fwd, segment, heads=2)
    with pytest.raises(RuntimeError, match="inference-only"):
        torch.ops.fresco.trajectory_attention(q, k, v.clone().requires_grad_(), fwd, segment, 0.2, 2)
    with torch.no_grad():
        out = fk.trajectory_attention(qg, k, v, fwd, segment, heads=2)
    assert not out.requires_grad


def _bad(**over):
    q, k, v, fwd, segment = make_inputs(2, 3, 2, 3, 2, 4)
    args = dict(q=q, k=k, v=v, fwd_mapping=fwd, segment=segment, heads=2, cfg_chunks=2)
    args.update(over)
    return args


@pytest.mark.parametrize("over, match", [
    (dict(q=torch.randn(6, 6)), "q must be a 3-D tensor"),
    (dict(k=torch.randn(6, 6, 7)), r"k must have shape \[6, 6, 8\]"),
    (dict(v=torch.randn(6, 5, 8)), r"v must have shape \[6, 6, 8\]"),
    (dict(q=torch.randint(0, 2, (6, 6, 8))), "q must have dtype in"),
    (dict(k=torch.randn(6, 6, 8, dtype=torch.float64)), "k has dtype"),
    (dict(heads=3), "not divisible by heads=3"),
    (dict(heads=0), "heads must be a positive int"),
    (dict(cfg_chunks=3), r"cfg_chunks\*N = 3\*3"),
    (dict(fwd_mapping=torch.zeros(3, 6, dtype=torch.int32)), "fwd_mapping must have dtype in"),
    (dict(fwd_mapping=torch.arange(5).expand(3, 5).contiguous()), r"fwd_mapping must have shape \[3, 6\]"),
    (dict(fwd_mapping=torch.zeros(3, 6, dtype=torch.int64)), "permutation"),
    (dict(fwd_mapping=torch.arange(6).expand(3, 6) + 1), "permutation"),
    (dict(segment=torch.zeros(3, 6, dtype=torch.int64)), "segment must have dtype in"),
    (dict(segment=torch.zeros(2, 6, dtype=torch.int32)), r"segment must have shape \[3, 6\]"),
])
def test_bad_input(over, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fk.trajectory_attention(**_bad(**over))


def test_op_checks_mapping_range():
    a = _bad()
    fwd = a["fwd_mapping"].clone()
    fwd[1, 2] = 99
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.fresco.trajectory_attention(a["q"], a["k"], a["v"], fwd, a["segment"], 0.2, 2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 64, 64, 8, 40), (2, 8, 32, 32, 8, 80), (2, 16, 8, 14, 8, 160),
                                   (2, 5, 13, 7, 3, 24)], ids=["up3-N8", "up2-N8", "N16-D160", "odd"])
def test_cuda_matches_reference(shape, dtype):
    chunks, n, h, w, heads, d = shape
    q, k, v, fwd, segment = (t.cuda() for t in make_inputs(*shape))
    ref32 = run_impl("reference", q, k, v, fwd, segment, heads, chunks)
    lp = [t.to(dtype) for t in (q, k, v)]
    out = run_impl("public", *lp, fwd, segment, heads, chunks)
    if dtype == torch.float32:
        # the reference's SDPA may use TF32-free math kernels; the fused kernel is full fp32
        assert max_err(out, ref32) < 1e-4
    else:
        assert_lowp_close(out, run_impl("reference", *lp, fwd, segment, heads, chunks), ref32, f"cuda {dtype}")


@pytest.mark.cuda
def test_cuda_opcheck():
    q, k, v, fwd, segment = (t.cuda() for t in make_inputs(2, 3, 3, 4, 2, 8))
    torch.library.opcheck(torch.ops.fresco.trajectory_attention.default, (q, k, v, fwd, segment, 0.2, 2),
                          test_utils=("test_schema", "test_faketensor"))
