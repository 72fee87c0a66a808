"""Cross-frame attention: the shared-K/V selection, the flattened-query SDPA against the published repeat-then-SDPA
path, the published attn_mask construction, compile, bad inputs."""
import pytest
import torch
import torch.nn.functional as F

import fresco_kernels as fk

from _utils import assert_lowp_close, max_err


def make_keep(n, hw, p=0.3):
    keep = torch.rand(n, hw) < p
    keep[0] = True
    return keep


def published_attn_mask(bwd_occs, scale):
    """get_flow_and_interframe_paras, verbatim: bwd_occs [N, H, W] holds every pair including the wrap pair."""
    bwd_occs_ = F.interpolate(bwd_occs[:-1].unsqueeze(1), scale_factor=1. / scale, mode='bilinear')
    return torch.cat((bwd_occs_[0:1].reshape(1, -1) > -1, bwd_occs_.reshape(bwd_occs_.shape[0], -1) > 0.5), dim=0)


@pytest.mark.parametrize("scale, size", [(8.0, (64, 96)), (16.0, (64, 96)), (8.0, (44, 60))], ids=["s8", "s16", "s8-odd"])
def test_keep_matches_published_attn_mask(scale, size):
    n = 5
    occ = (torch.rand(n, *size) < 0.5).float()
    # blocks of occlusion so that the downsampled mask has both values
    occ = F.max_pool2d(occ.unsqueeze(1), 9, 1, 4).squeeze(1) * (torch.rand(n, 1, 1) < 0.8)
    keep = fk.cross_frame_keep(occ[:-1], scale)
    h, w = int(size[0] // scale), int(size[1] // scale)
    assert keep.shape == (n, h * w) and keep.dtype == torch.bool
    assert torch.equal(keep, published_attn_mask(occ, scale))
    assert keep[0].all()


def test_keep_extremes():
    occ = torch.ones(3, 32, 32)
    assert fk.cross_frame_keep(occ, 8).all()
    keep = fk.cross_frame_keep(torch.zeros(3, 32, 32), 8)
    assert keep[0].all() and not keep[1:].any()


@pytest.mark.parametrize("with_keep", [True, False], ids=["keep", "frame0"])
def test_kv_selection(with_keep):
    chunks, n, hw, C = 2, 4, 15, 6
    k, v = torch.randn(chunks * n, hw, C), torch.randn(chunks * n, hw, C)
    keep = make_keep(n, hw) if with_keep else None
    K, V = fk.cross_frame_kv(k, v, keep, chunks)
    for b in range(chunks):
        rows = range(b * n, (b + 1) * n)
        if with_keep:
            expect_k = torch.cat([k[r][keep[f]] for f, r in enumerate(rows)])
            expect_v = torch.cat([v[r][keep[f]] for f, r in enumerate(rows)])
        else:
            expect_k, expect_v = k[b * n], v[b * n]
        assert torch.equal(K[b], expect_k) and torch.equal(V[b], expect_v)
    assert K.shape == (chunks, int(keep.sum()) if with_keep else hw, C)


@pytest.mark.parametrize("with_keep", [True, False], ids=["keep", "frame0"])
@pytest.mark.parametrize("shape", [(2, 4, 8, 8, 8, 40), (2, 3, 5, 7, 8, 80), (1, 2, 3, 5, 3, 7)],
                         ids=["up3like-N4-8x8-D40", "up2like-N3-5x7-D80", "N2-3x5-H3-D7"])
def test_matches_published(shape, with_keep):
    chunks, n, h, w, heads, d = shape
    hw, C = h * w, heads * d
    q, k, v = (torch.randn(chunks * n, hw, C) for _ in range(3))
    keep = make_keep(n, hw) if with_keep else None
    ref = fk.cross_frame_attention_reference(q, k, v, keep, heads, chunks)
    K, V = fk.cross_frame_kv(k, v, keep, chunks)
    out = fk.cross_frame_attention(q, K, V, heads, chunks)
    assert out.shape == (chunks * n, hw, C)
    assert max_err(out, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    chunks, n, hw, heads, d = 2, 3, 20, 4, 40
    q, k, v = (torch.randn(chunks * n, hw, heads * d) for _ in range(3))
    keep = make_keep(n, hw)
    ref32 = fk.cross_frame_attention_reference(q, k, v, keep, heads, chunks)
    lp = [t.to(dtype) for t in (q, k, v)]
    ref_lp = fk.cross_frame_attention_reference(*lp, keep, heads, chunks)
    out = fk.cross_frame_attention(lp[0], *fk.cross_frame_kv(lp[1], lp[2], keep, chunks), heads, chunks)
    assert out.dtype == dtype
    assert_lowp_close(out, ref_lp, ref32, f"cross_frame {dtype}")


@pytest.mark.parametrize("with_keep", [True, False], ids=["keep", "frame0"])
def test_backends_agree_and_the_switch_routes(monkeypatch, with_keep):
    # backend=None follows the global switch; "reference" runs the published selection and the N-fold repeat
    import fresco_kernels.cross_frame as cf
    calls = []
    for name in ("cross_frame_kv_reference", "repeated_kv_attention_reference"):
        real = getattr(cf, name)
        monkeypatch.setattr(cf, name, lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw))
    chunks, n, hw, heads, d = 2, 3, 10, 2, 8
    q, k, v = (torch.randn(chunks * n, hw, heads * d) for _ in range(3))
    keep = make_keep(n, hw) if with_keep else None
    out = {}
    for backend in fk.BACKENDS:
        with fk.use_backend(backend):
            K, V = fk.cross_frame_kv(k, v, keep, chunks)
            out[backend] = (K, V, fk.cross_frame_attention(q, K, V, heads, chunks))
        assert calls == ([] if backend == "fused" else ["cross_frame_kv_reference", "repeated_kv_attention_reference"])
    assert torch.equal(out["fused"][0], out["reference"][0]) and torch.equal(out["fused"][1], out["reference"][1])
    assert max_err(out["fused"][2], out["reference"][2]) < 1e-5
    with pytest.raises(ValueError, match="backend must be one of"):
        fk.cross_frame_kv(k, v, keep, chunks, backend="xformers")


def test_compile_fullgraph():
    q, k, v = (torch.randn(6, 12, 16) for _ in range(3))
    K, V = fk.cross_frame_kv(k, v, make_keep(3, 12), 2)
    fn = torch.compile(lambda a, b, c: fk.cross_frame_attention(a, b, c, 2, 2), fullgraph=True, backend="aot_eager")
    assert max_err(fn(q, K, V), fk.cross_frame_attention(q, K, V, 2, 2)) < 1e-6


@pytest.mark.parametrize("fn, args, match", [
    ("kv", (torch.randn(6, 4, 8), torch.randn(6, 4, 8), torch.ones(3, 5, dtype=torch.bool)), r"keep must have shape \[3, 4\]"),
    ("kv", (torch.randn(6, 4, 8), torch.randn(6, 4, 8), torch.ones(3, 4)), "keep must have dtype in"),
    ("kv", (torch.randn(5, 4, 8), torch.randn(5, 4, 8), None), "not divisible by cfg_chunks=2"),
    ("kv", (torch.randn(6, 4, 8), torch.randn(6, 3, 8), None), r"v must have shape \[6, 4, \*\]"),
    ("attn", (torch.randn(6, 4, 8), torch.randn(2, 5, 8), torch.randn(2, 4, 8), 2), r"V must have shape \[2, 5, 8\]"),
    ("attn", (torch.randn(6, 4, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8), 2), r"K must have shape \[2, 5, 8\]"),
    ("attn", (torch.randn(6, 4, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8), 3), "not divisible by heads=3"),
    ("keep", (torch.zeros(0, 16, 16), 8), "N-1 >= 1"),
    ("keep", (torch.zeros(2, 16, 16), 0), "scale must be a positive number"),
])
def test_bad_input(fn, args, match):
    f = {"kv": fk.cross_frame_kv, "attn": fk.cross_frame_attention, "keep": fk.cross_frame_keep}[fn]
    with pytest.raises((ValueError, TypeError), match=match):
        f(*args)
