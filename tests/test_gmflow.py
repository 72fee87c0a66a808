"""GMFlow (fresco.models.gmflow): the stand-in checkpoint has the published names/shapes/format and loads with
strict=True; the forward equals a plain-torch transcription of the published haofeixu/gmflow forward (FRESCO's
call: one scale, swin attention with 2 splits, global matching and propagation, bidirectional) on small random
inputs with random weights; chunked attention equals unchunked; the estimator batches, pads and returns both
directions from one pass."""
import math

import pytest
import torch
import torch.nn.functional as F

from fresco.models.gmflow import GMFlow, GMFlowEstimator, chunked_attention, load_gmflow, write_random_checkpoint


# ---- transcription of the published forward (gmflow/{gmflow,backbone,transformer,matching,utils,position}.py) ----
def _split(x, k):  # utils.split_feature, channel_last
    b, h, w, c = x.shape
    return x.view(b, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5).reshape(b * k * k, h // k, w // k, c)


def _merge(x, k):  # utils.merge_splits, channel_last
    b, h, w, c = x.shape
    return x.view(b // k // k, k, k, h, w, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(b // k // k, k * h, k * w, c)


def _pos(b, h, w, npf, dev, dt):  # position.PositionEmbeddingSine(npf, normalize=True)
    mask = torch.ones(b, h, w, device=dev, dtype=dt)
    y, x = mask.cumsum(1), mask.cumsum(2)
    y, x = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi, x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(npf, device=dev, dtype=dt) // 2) / npf)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def _shift_mask(h, w, wh, ww, sh, sw, dev, dt):  # transformer.generate_shift_window_attn_mask
    img = torch.zeros(1, h, w, 1, device=dev, dtype=dt)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    mw = _split(img, w // ww).view(-1, wh * ww)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def published_gmflow(P, img0, img1, splits=2, bidir=True):
    """FRESCO's GMFlow call on state dict P: flow_preds[-1] of forward(img0, img1, attn_splits_list=[splits],
    corr_radius_list=[-1], prop_radius_list=[-1], pred_bidir_flow=bidir)."""
    conv = lambda x, k, **kw: F.conv2d(x, P[k + ".weight"], P.get(k + ".bias"), **kw)  # noqa: E731
    lin = lambda x, k: F.linear(x, P[k + ".weight"], P.get(k + ".bias"))  # noqa: E731
    ln = lambda x, k: F.layer_norm(x, x.shape[-1:], P[k + ".weight"], P[k + ".bias"])  # noqa: E731
    dev, dt = img0.device, img0.dtype
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev, dtype=dt).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev, dtype=dt).view(1, 3, 1, 1)
    x = torch.cat(((img0 / 255. - mean) / std, (img1 / 255. - mean) / std))
    x = F.relu(F.instance_norm(conv(x, "backbone.conv1", stride=2, padding=3)))
    for layer, stride in ((1, 1), (2, 2), (3, 2)):
        for blk, s in ((0, stride), (1, 1)):
            pre = f"backbone.layer{layer}.{blk}"
            y = F.relu(F.instance_norm(conv(x, pre + ".conv1", stride=s, padding=1)))
            y = F.relu(F.instance_norm(conv(y, pre + ".conv2", padding=1)))
            if pre + ".downsample.0.weight" in P:
                x = F.instance_norm(conv(x, pre + ".downsample.0", stride=s))
            x = F.relu(x + y)
    f0, f1 = conv(x, "backbone.conv2").chunk(2)
    b, c, h, w = f0.shape
    # feature_add_position: the embedding of one window, added inside each window
    sp0, sp1 = (_split(f.permute(0, 2, 3, 1), splits).permute(0, 3, 1, 2) for f in (f0, f1))
    pos = _pos(sp0.shape[0], h // splits, w // splits, c // 2, dev, dt)
    f0, f1 = (_merge((s + pos).permute(0, 2, 3, 1), splits).permute(0, 3, 1, 2) for s in (sp0, sp1))
    # FeatureTransformer
    wh, ww = h // splits, w // splits
    amask = _shift_mask(h, w, wh, ww, wh // 2, ww // 2, dev, dt)
    c0 = torch.cat((f0, f1)).flatten(-2).permute(0, 2, 1)
    c1 = torch.cat((f1, f0)).flatten(-2).permute(0, 2, 1)

    def attn_layer(src, tgt, pre, shift, ffn):
        q, k, v = lin(src, pre + ".q_proj"), lin(tgt, pre + ".k_proj"), lin(tgt, pre + ".v_proj")
        bb = q.shape[0]
        q, k, v = (t.view(bb, h, w, c) for t in (q, k, v))
        if shift:
            q, k, v = (torch.roll(t, shifts=(-(wh // 2), -(ww // 2)), dims=(1, 2)) for t in (q, k, v))
        q, k, v = (_split(t, splits).reshape(bb * splits * splits, -1, c) for t in (q, k, v))
        scores = torch.matmul(q, k.permute(0, 2, 1)) / c ** 0.5
        if shift:
            scores += amask.repeat(bb, 1, 1)
        out = _merge(torch.matmul(torch.softmax(scores, -1), v).view(-1, wh, ww, c), splits)
        if shift:
            out = torch.roll(out, shifts=(wh // 2, ww // 2), dims=(1, 2))
        msg = ln(lin(out.reshape(bb, -1, c), pre + ".merge"), pre + ".norm1")
        if ffn:
            hid = F.gelu(lin(torch.cat([src, msg], -1), pre + ".mlp.0"))
            msg = ln(lin(hid, pre + ".mlp.2"), pre + ".norm2")
        return src + msg

    for i in range(6):
        pre = f"transformer.layers.{i}"
        c0 = attn_layer(c0, c0, pre + ".self_attn", i % 2 == 1, False)
        c0 = attn_layer(c0, c1, pre + ".cross_attn_ffn", i % 2 == 1, True)
        c1 = torch.cat(c0.chunk(2)[::-1])
    f0, f1 = (t.reshape(b, h, w, c).permute(0, 3, 1, 2) for t in c0.chunk(2))
    # global_correlation_softmax
    corr = torch.matmul(f0.reshape(b, c, -1).permute(0, 2, 1), f1.reshape(b, c, -1)) / c ** 0.5
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid0 = torch.stack([xx, yy]).to(dev, dt)[None].repeat(b, 1, 1, 1)
    grid = grid0.view(b, 2, -1).permute(0, 2, 1)
    if bidir:
        corr, grid0, grid = torch.cat((corr, corr.permute(0, 2, 1))), grid0.repeat(2, 1, 1, 1), grid.repeat(2, 1, 1)
    flow = torch.matmul(F.softmax(corr, -1), grid).view(-1, h, w, 2).permute(0, 3, 1, 2) - grid0
    feat = torch.cat((f0, f1)) if bidir else f0
    # FeatureFlowAttention (global): key = k_proj(q_proj(x))
    bb = feat.shape[0]
    query = lin(feat.view(bb, c, -1).permute(0, 2, 1), "feature_flow_attn.q_proj")
    key = lin(query, "feature_flow_attn.k_proj")
    prob = torch.softmax(torch.matmul(query, key.permute(0, 2, 1)) / c ** 0.5, -1)
    flow = torch.matmul(prob, flow.view(bb, 2, -1).permute(0, 2, 1)).view(bb, h, w, 2).permute(0, 3, 1, 2)
    # convex upsampling
    mask = conv(F.relu(conv(torch.cat((flow, feat), 1), "upsampler.0", padding=1)), "upsampler.2")
    mask = torch.softmax(mask.view(bb, 1, 9, 8, 8, h, w), dim=2)
    up = F.unfold(8 * flow, [3, 3], padding=1).view(bb, 2, 9, 1, 1, h, w)
    up = torch.sum(mask * up, dim=2).permute(0, 1, 4, 2, 5, 3)
    return up.reshape(bb, 2, 8 * h, 8 * w)
# ---------------------------------------------------------------------------------------------------------------


def _random_state(scale: float = 0.15):
    return {k: torch.randn_like(v) * scale for k, v in GMFlow().state_dict().items()}


def test_checkpoint_has_published_layout(tmp_path):
    path = write_random_checkpoint(tmp_path / "gmflow_sintel-0c07dcb3.pth")
    ck = torch.load(path, weights_only=True)
    assert set(ck) == {"model"}
    sd = ck["model"]
    assert len(sd) == 123 and sum(v.numel() for v in sd.values()) == 4_680_288  # as the published GMFlow(num_scales=1)
    assert sd["backbone.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["backbone.layer2.0.downsample.0.bias"].shape == (96,)
    assert sd["transformer.layers.5.cross_attn_ffn.mlp.0.weight"].shape == (1024, 256)
    assert sd["feature_flow_attn.k_proj.bias"].shape == (128,)
    assert sd["upsampler.2.weight"].shape == (576, 256, 1, 1)
    assert "transformer.layers.0.self_attn.norm2.weight" not in sd  # self-attention layers have no FFN
    model = load_gmflow(path)
    assert not model.training and all(torch.equal(p, sd[k]) for k, p in model.state_dict().items())
    torch.save(sd, tmp_path / "bare.pth")  # a bare state_dict loads too
    load_gmflow(tmp_path / "bare.pth")
    del sd["upsampler.0.bias"]
    torch.save({"model": sd}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="gmflow_path: .*does not hold this network's weights .*upsampler.0.bias"):
        load_gmflow(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="gmflow_path"):
        load_gmflow(tmp_path / "missing.pth")


@pytest.mark.parametrize("size", [(32, 48), (48, 32)])
def test_forward_equals_published(size):
    P = {k: v.double() for k, v in _random_state().items()}
    model = GMFlow().double().eval()
    model.load_state_dict(P, strict=True)
    img0 = torch.rand(1, 3, *size, dtype=torch.float64) * 255
    img1 = (torch.roll(img0, (8, -8), dims=(2, 3)) + torch.randn_like(img0) * 10).clamp(0, 255)
    with torch.no_grad():
        ref = published_gmflow(P, img0, img1)
        out = model(img0, img1, attn_splits=2, bidirectional=True)
        one = model(img0, img1, attn_splits=2)
    assert out.shape == (2, 2) + size
    assert ref.abs().max() > 0.5  # the flows are not trivially zero
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(one, published_gmflow(P, img0, img1, bidir=False), rtol=1e-9, atol=1e-9)


def test_chunked_equals_unchunked():
    q, k = torch.randn(3, 70, 16), torch.randn(3, 50, 16)
    v, bias = torch.randn(3, 50, 2), torch.randn(1, 70, 50)
    full = chunked_attention(q, k, v, bias=bias, chunk_elems=1 << 30)
    ref = torch.softmax(q @ k.transpose(1, 2) / 4 + bias, -1) @ v
    torch.testing.assert_close(full, ref)
    for elems in (1, 150, 151 * 3 * 50):
        torch.testing.assert_close(chunked_attention(q, k, v, bias=bias, chunk_elems=elems), full)
    model = GMFlow().double().eval()  # double: the float noise of six sharp softmax layers would hide a bug
    model.load_state_dict(_random_state(), strict=True)
    img0, img1 = (torch.rand(1, 3, 32, 48, dtype=torch.float64) * 255 for _ in range(2))
    with torch.no_grad():
        torch.testing.assert_close(model(img0, img1, bidirectional=True, chunk_elems=37),
                                   model(img0, img1, bidirectional=True, chunk_elems=1 << 30))


@pytest.mark.slow
def test_estimator_batched_bidirectional_and_padded(tmp_path):
    path = tmp_path / "g.pth"
    sd = _random_state(0.1)
    torch.save({"model": sd}, path)
    est = GMFlowEstimator(path, chunk_elems=500)
    a = torch.rand(2, 3, 24, 40) * 255  # not multiples of 16: padded to 32x48 and cropped back
    b = torch.roll(a, 2, dims=3)
    fwd, bwd = est.bidirectional(a, b)
    assert fwd.shape == bwd.shape == (2, 2, 24, 40) and fwd.dtype == torch.float32
    torch.testing.assert_close(fwd, est(a, b), rtol=1e-4, atol=1e-3)
    # the published backward flow (transposed correlation, one pass) is the flow of the swapped pair
    torch.testing.assert_close(bwd, est(b, a), rtol=1e-4, atol=1e-3)
    padded = F.pad(torch.cat([a, b]), (4, 4, 4, 4), mode="replicate")
    with torch.no_grad():
        ref = est.model(padded[:2], padded[2:], bidirectional=False)[:, :, 4:28, 4:44]
    torch.testing.assert_close(fwd, ref, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="multiples of 16"):
        est.model(a, b)
