"""MiDaS DPT-Hybrid (fresco.models.midas), the published depth annotator: the full-size module tree has the names and
shapes of the published checkpoint dpt_hybrid-midas-501f0c75.pt (transcribed here from MiDaS's DPTDepthModel on
timm's vit_base_resnet50_384); a stand-in with tiny widths loads strictly through the same loader, widths read from
its shapes; the forward equals a plain-torch transcription of the published one (timm's ResNetV2 with StdConv2dSame +
GroupNorm, the ViT blocks, MiDaS's forward_flex/forward_vit and the DPT decoder); the detector equals a transcription
of the published MidasDetector (FRESCO's ControlNet 1.0 annotator) and reaches control_maps / the depth ControlNet;
bad inputs are named."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresco.models.midas import (MIDAS_FILE, TINY_MIDAS, DepthDetector, DPTDepth, MidasConfig, load_midas,
                                 midas_state_dict)


# ---- the published checkpoint's layout, transcribed from MiDaS (dpt_depth.py, blocks.py, vit.py) + timm -----------
def published_layout():
    """{name: shape} of DPTDepthModel(backbone="vitb_rn50_384", non_negative=True).state_dict()."""
    sd = {}
    m = "pretrained.model."
    sd[m + "cls_token"] = (1, 1, 768)
    sd[m + "pos_embed"] = (1, 24 * 24 + 1, 768)
    bb = m + "patch_embed.backbone."
    sd[bb + "stem.conv.weight"] = (64, 3, 7, 7)
    sd[bb + "stem.norm.weight"] = sd[bb + "stem.norm.bias"] = (64,)
    cin = 64
    for s, (depth, out) in enumerate(zip((3, 4, 9), (256, 512, 1024))):
        mid = out // 4
        for b in range(depth):
            p = f"{bb}stages.{s}.blocks.{b}."
            if b == 0:
                sd[p + "downsample.conv.weight"] = (out, cin, 1, 1)
                sd[p + "downsample.norm.weight"] = sd[p + "downsample.norm.bias"] = (out,)
            sd[p + "conv1.weight"] = (mid, cin if b == 0 else out, 1, 1)
            sd[p + "norm1.weight"] = sd[p + "norm1.bias"] = (mid,)
            sd[p + "conv2.weight"] = (mid, mid, 3, 3)
            sd[p + "norm2.weight"] = sd[p + "norm2.bias"] = (mid,)
            sd[p + "conv3.weight"] = (out, mid, 1, 1)
            sd[p + "norm3.weight"] = sd[p + "norm3.bias"] = (out,)
        cin = out
    sd[m + "patch_embed.proj.weight"], sd[m + "patch_embed.proj.bias"] = (768, 1024, 1, 1), (768,)
    for i in range(12):
        p = f"{m}blocks.{i}."
        sd[p + "norm1.weight"] = sd[p + "norm1.bias"] = (768,)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = (2304, 768), (2304,)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = (768, 768), (768,)
        sd[p + "norm2.weight"] = sd[p + "norm2.bias"] = (768,)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = (3072, 768), (3072,)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = (768, 3072), (768,)
    sd[m + "norm.weight"] = sd[m + "norm.bias"] = (768,)
    sd[m + "head.weight"], sd[m + "head.bias"] = (1000, 768), (1000,)
    # act_postprocess1/2 are Identity for the hybrid (levels 1-2 come from the ResNet); 3/4: readout + convs
    for lvl in (3, 4):
        p = f"pretrained.act_postprocess{lvl}."
        sd[p + "0.project.0.weight"], sd[p + "0.project.0.bias"] = (768, 1536), (768,)
        sd[p + "3.weight"], sd[p + "3.bias"] = (768, 768, 1, 1), (768,)
        if lvl == 4:
            sd[p + "4.weight"], sd[p + "4.bias"] = (768, 768, 3, 3), (768,)
    for i, cin in enumerate((256, 512, 768, 768), start=1):
        sd[f"scratch.layer{i}_rn.weight"] = (256, cin, 3, 3)
    for i in range(1, 5):
        p = f"scratch.refinenet{i}."
        sd[p + "out_conv.weight"], sd[p + "out_conv.bias"] = (256, 256, 1, 1), (256,)
        for u in (1, 2):
            for c in (1, 2):
                sd[f"{p}resConfUnit{u}.conv{c}.weight"], sd[f"{p}resConfUnit{u}.conv{c}.bias"] = (256, 256, 3, 3), \
                    (256,)
    sd["scratch.output_conv.0.weight"], sd["scratch.output_conv.0.bias"] = (128, 256, 3, 3), (128,)
    sd["scratch.output_conv.2.weight"], sd["scratch.output_conv.2.bias"] = (32, 128, 3, 3), (32,)
    sd["scratch.output_conv.4.weight"], sd["scratch.output_conv.4.bias"] = (1, 32, 1, 1), (1,)
    return sd


def test_full_size_has_the_published_names_and_shapes():
    with torch.device("meta"):
        model = DPTDepth()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = published_layout()
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert sum(math.prod(s) for s in want.values()) == 123_146_985
    assert MidasConfig.from_state_dict(model.state_dict()) == MidasConfig()


# ---- the published forward, transcribed (timm ResNetV2/ViT as vit_base_resnet50_384 builds them, MiDaS vit.py) ----
def published_dpt(P, x, heads):
    def std_conv_same(x, k, stride):
        w = P[k]
        kh = w.shape[-1]
        if stride > 1:  # timm's pad_same (dynamic); static symmetric padding at stride 1
            ih, iw = x.shape[-2:]
            ph = max((math.ceil(ih / stride) - 1) * stride + kh - ih, 0)
            pw = max((math.ceil(iw / stride) - 1) * stride + kh - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            pad = 0
        else:
            pad = (kh - 1) // 2
        w = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.,
                         eps=1e-8).reshape_as(w)
        return F.conv2d(x, w, None, stride, pad)

    def gn(x, k, act=True):
        y = F.group_norm(x, 32, P[k + ".weight"], P[k + ".bias"], 1e-5)
        return F.relu(y) if act else y

    bb = "pretrained.model.patch_embed.backbone."
    # ResNetV2 stem ('same'): conv, GroupNormAct, MaxPool2dSame
    y = gn(std_conv_same(x, bb + "stem.conv.weight", 2), bb + "stem.norm")
    ih, iw = y.shape[-2:]
    ph, pw = max((math.ceil(ih / 2) - 1) * 2 + 3 - ih, 0), max((math.ceil(iw / 2) - 1) * 2 + 3 - iw, 0)
    y = F.max_pool2d(F.pad(y, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=-float("inf")), 3, 2)
    activations = {}
    s = 0
    while f"{bb}stages.{s}.blocks.0.conv1.weight" in P:
        b = 0
        while f"{bb}stages.{s}.blocks.{b}.conv1.weight" in P:
            p = f"{bb}stages.{s}.blocks.{b}."
            stride = 2 if (s > 0 and b == 0) else 1
            shortcut = y
            if b == 0:
                shortcut = gn(std_conv_same(y, p + "downsample.conv.weight", stride), p + "downsample.norm", False)
            h = gn(std_conv_same(y, p + "conv1.weight", 1), p + "norm1")
            h = gn(std_conv_same(h, p + "conv2.weight", stride), p + "norm2")
            h = gn(std_conv_same(h, p + "conv3.weight", 1), p + "norm3", False)
            y = F.relu(h + shortcut)
            b += 1
        activations[str(s + 1)] = y  # hooks on stages[0] and stages[1] give "1" and "2"
        s += 1
    # forward_flex
    b, c, h, w = x.shape
    posemb = P["pretrained.model.pos_embed"]
    posemb_tok, posemb_grid = posemb[:, :1], posemb[0, 1:]
    gs_old = int(math.sqrt(len(posemb_grid)))
    posemb_grid = posemb_grid.reshape(1, gs_old, gs_old, -1).permute(0, 3, 1, 2)
    posemb_grid = F.interpolate(posemb_grid, size=(h // 16, w // 16), mode="bilinear")
    posemb_grid = posemb_grid.permute(0, 2, 3, 1).reshape(1, (h // 16) * (w // 16), -1)
    pos_embed = torch.cat([posemb_tok, posemb_grid], dim=1)
    t = F.conv2d(y, P["pretrained.model.patch_embed.proj.weight"], P["pretrained.model.patch_embed.proj.bias"])
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat((P["pretrained.model.cls_token"].expand(b, -1, -1), t), dim=1) + pos_embed
    d = t.shape[-1]
    i = 0
    while f"pretrained.model.blocks.{i}.attn.qkv.weight" in P:
        p = f"pretrained.model.blocks.{i}."
        ln = lambda z, k: F.layer_norm(z, (d,), P[k + ".weight"], P[k + ".bias"], 1e-6)  # noqa: E731
        lin = lambda z, k: F.linear(z, P[k + ".weight"], P[k + ".bias"])  # noqa: E731
        B, N, C = t.shape
        qkv = lin(ln(t, p + "norm1"), p + "attn.qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        t = t + lin((attn @ v).transpose(1, 2).reshape(B, N, C), p + "attn.proj")
        t = t + lin(F.gelu(lin(ln(t, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")
        if i == 8:
            activations["3"] = t
        if i == 11:
            activations["4"] = t
        i += 1
    # forward_vit: readout 'project', Transpose, unflatten to the frame's grid, the convs
    layers = [activations["1"], activations["2"]]
    for lvl in ("3", "4"):
        p = f"pretrained.act_postprocess{lvl}."
        z = activations[lvl]
        readout = z[:, 0].unsqueeze(1).expand_as(z[:, 1:])
        z = F.gelu(F.linear(torch.cat((z[:, 1:], readout), -1), P[p + "0.project.0.weight"],
                            P[p + "0.project.0.bias"]))
        z = z.transpose(1, 2).unflatten(2, (h // 16, w // 16))
        z = F.conv2d(z, P[p + "3.weight"], P[p + "3.bias"])
        if lvl == "4":
            z = F.conv2d(z, P[p + "4.weight"], P[p + "4.bias"], stride=2, padding=1)
        layers.append(z)
    rn = [F.conv2d(z, P[f"scratch.layer{j + 1}_rn.weight"], None, padding=1) for j, z in enumerate(layers)]

    def rcu(z, k):
        out = F.relu(z)
        out = F.conv2d(out, P[k + ".conv1.weight"], P[k + ".conv1.bias"], padding=1)
        out = F.relu(out)
        out = F.conv2d(out, P[k + ".conv2.weight"], P[k + ".conv2.bias"], padding=1)
        return out + z

    def fusion(k, *xs):
        output = xs[0]
        if len(xs) == 2:
            output = output + rcu(xs[1], k + ".resConfUnit1")
        output = rcu(output, k + ".resConfUnit2")
        output = F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)
        return F.conv2d(output, P[k + ".out_conv.weight"], P[k + ".out_conv.bias"])

    path_4 = fusion("scratch.refinenet4", rn[3])
    path_3 = fusion("scratch.refinenet3", path_4, rn[2])
    path_2 = fusion("scratch.refinenet2", path_3, rn[1])
    path_1 = fusion("scratch.refinenet1", path_2, rn[0])
    o = F.conv2d(path_1, P["scratch.output_conv.0.weight"], P["scratch.output_conv.0.bias"], padding=1)
    o = F.interpolate(o, scale_factor=2, mode="bilinear", align_corners=True)
    o = F.relu(F.conv2d(o, P["scratch.output_conv.2.weight"], P["scratch.output_conv.2.bias"], padding=1))
    o = F.relu(F.conv2d(o, P["scratch.output_conv.4.weight"], P["scratch.output_conv.4.bias"]))
    return o.squeeze(dim=1)


def published_midas_detector(model, input_image, a=np.pi * 2.0, bg_th=0.1):
    """MidasDetector.__call__ (FRESCO's src/ControlNet/annotator/midas), transcribed (CPU instead of .cuda());
    apply_control keeps the first output."""
    assert input_image.ndim == 3
    image_depth = input_image
    with torch.no_grad():
        image_depth = torch.from_numpy(image_depth).float()
        image_depth = image_depth / 127.5 - 1.0
        image_depth = image_depth.permute(2, 0, 1)[None]  # rearrange(image_depth, 'h w c -> 1 c h w')
        depth = model(image_depth)[0]
        depth_pt = depth.clone()
        depth_pt -= torch.min(depth_pt)
        depth_pt /= torch.max(depth_pt)
        depth_pt = depth_pt.cpu().numpy()
        depth_image = (depth_pt * 255.0).clip(0, 255).astype(np.uint8)
        return depth_image
# ---------------------------------------------------------------------------------------------------------------


# 128-wide ViT (2 heads, as width / 64), ResNet widths that are multiples of 32 (GroupNorm's 32 groups, as published)
FWD_CFG = MidasConfig(stem=32, stage_widths=(64, 64, 96), stage_mids=(32, 32, 32), stage_depths=(2, 1, 2),
                      embed_dim=128, depth=12, mlp_dim=96, grid=5, num_classes=7, reassemble=(48, 40), features=32,
                      head_mid=16, head_last=8)


def _random_params(cfg, seed=0):
    sd = midas_state_dict(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():  # non-trivial norms too
        if k.endswith("norm.weight") or ".norm" in k and k.endswith(".weight"):
            out[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif k.endswith(".bias"):
            out[k] = v + 0.05 * torch.randn(v.shape, generator=g)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_forward_equals_published(size):
    P = _random_params(FWD_CFG, seed=1)
    model = DPTDepth(FWD_CFG).eval()
    model.load_state_dict(P, strict=True)
    x = torch.rand(2, 3, *size) * 2 - 1
    with torch.no_grad():
        got, want = model(x), published_dpt(P, x, heads=2)
    assert got.shape == (2, *size) and (got >= 0).all()
    assert want.abs().max() > 0 and want.std() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_stand_in_loads_strictly_with_widths_from_its_shapes(tmp_path):
    sd = midas_state_dict(seed=2)
    assert set(sd) == set(published_layout())  # the same names as the published file, tiny widths
    path = tmp_path / MIDAS_FILE
    torch.save(sd, path)
    model = load_midas(path)
    assert model.config == TINY_MIDAS and not model.training
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    # MiDaS's BaseModel.load accepts {"model": ..., "optimizer": ...} too
    torch.save({"model": sd, "optimizer": {}}, tmp_path / "wrapped.pt")
    assert load_midas(tmp_path / "wrapped.pt").config == TINY_MIDAS
    broken = {k: v for k, v in sd.items() if k != "scratch.refinenet2.out_conv.bias"}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "scratch.refinenet2.out_conv.bias"'):
        load_midas(tmp_path / "broken.pt")
    torch.save({k: v for k, v in sd.items() if "pos_embed" not in k}, tmp_path / "nopos.pt")
    with pytest.raises(ValueError, match=r"depth checkpoint: .* \(missing pretrained.model.pos_embed\)"):
        load_midas(tmp_path / "nopos.pt")
    with pytest.raises(FileNotFoundError, match="depth checkpoint: no such file"):
        load_midas(tmp_path / "missing.pt")


def test_detector_equals_published_and_reaches_control_maps(tmp_path):
    from fresco.pipeline.control import control_maps
    from fresco.video import synthetic_frame
    torch.save(_random_params(TINY_MIDAS, seed=3), tmp_path / MIDAS_FILE)
    model = load_midas(tmp_path / MIDAS_FILE)
    frames = np.stack([synthetic_frame(3 * i, size=(96, 64)) for i in range(2)])
    want = np.stack([published_midas_detector(model, f) for f in frames])
    assert want.min() == 0 and want.max() == 255 and want.std() > 10
    got = control_maps(frames, "depth", str(tmp_path))
    assert got.shape == (2, 64, 96, 3) and got.dtype == np.uint8 and (got == got[..., :1]).all()
    assert np.array_equal(got[..., 0], want)
    det = DepthDetector(model)
    assert np.array_equal(det(frames[1]), want[1])
    # a constant depth map: zeros (the published code divides by zero there)
    flat = DepthDetector(lambda x: torch.ones(1, *x.shape[2:]))
    assert not flat(frames[0]).any()


def test_bad_inputs_are_named(tmp_path, monkeypatch):
    from fresco.pipeline.control import control_maps
    torch.save(midas_state_dict(), tmp_path / MIDAS_FILE)
    det = DepthDetector.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=r"image: expected \[H, W, 3\] uint8"):
        det(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="MiDaS: expected .* multiples of 32"):
        det(np.zeros((48, 64, 3), np.uint8))
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(RuntimeError, match=f"annotator_path: .* has no {MIDAS_FILE}"):
        control_maps(frames, "depth", str(tmp_path / "missing"))
    # not in the (empty, offline) Hugging Face cache: where it looked and how to provide it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from fresco.models import annotators
    with pytest.raises(RuntimeError, match=rf"annotator_path: {MIDAS_FILE} is not in the Hugging Face cache "
                                           rf"\(.*models--lllyasviel--Annotators\).*--annotator-path"):
        annotators.annotator_file(MIDAS_FILE)
