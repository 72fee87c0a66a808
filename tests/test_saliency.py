"""EGNet saliency (fresco.models.egnet/saliency): the stand-in `sod_path` file has the published names/shapes/format
and loads with strict=True; the forward equals a plain-torch transcription of the published ResNet-50 EGNet
(FRESCO's src/EGNet: model.py + resnet.py) with random weights; the estimator + background rule equal the published
get_saliency (cv2sod input, sigmoid of the last fused score, 1 - dilate7); a user callable is accepted; bad
inputs are named."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresco.models.egnet import EGNet, load_egnet, write_random_checkpoint
from fresco.models.saliency import (EGNetSaliency, background_from_saliency, background_mask,
                                    get_saliency_estimator)


# ---- transcription of the published forward (src/EGNet/model.py TUN_bone('resnet'), resnet.py ResNet) ----------
def published_egnet(P, x):
    conv = lambda x, k, **kw: F.conv2d(x, P[k + ".weight"], P.get(k + ".bias"), **kw)  # noqa: E731
    bn = lambda x, k: F.batch_norm(x, P[k + ".running_mean"], P[k + ".running_var"],  # noqa: E731
                                   P[k + ".weight"], P[k + ".bias"], False, 0.1, 1e-5)
    up = lambda x, size: F.interpolate(x, size, mode="bilinear", align_corners=True)  # noqa: E731
    seq3 = lambda x, k, p: F.relu(conv(F.relu(conv(F.relu(conv(x, k + ".0", padding=p)), k + ".2", padding=p)),  # noqa
                                       k + ".4", padding=p))
    x_size = x.shape[2:]
    x = F.relu(bn(conv(x, "base.conv1", stride=2, padding=3), "base.bn1"))
    feats = [x]
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    for li, (n, stride, dil) in enumerate(((3, 1, 1), (4, 2, 1), (6, 2, 1), (3, 1, 2)), start=1):
        for bi in range(n):
            pre = f"base.layer{li}.{bi}"
            s = stride if bi == 0 else 1
            y = F.relu(bn(conv(x, pre + ".conv1", stride=s), pre + ".bn1"))
            y = F.relu(bn(conv(y, pre + ".conv2", padding=dil, dilation=dil), pre + ".bn2"))
            y = bn(conv(y, pre + ".conv3"), pre + ".bn3")
            res = bn(conv(x, pre + ".downsample.0", stride=s), pre + ".downsample.1") if bi == 0 else x
            x = F.relu(y + res)
        feats.append(x)
    lx = [F.relu(conv(f, f"convert.convert0.{i}.0")) for i, f in enumerate(feats)]
    # MergeLayer1
    pads = [1, 1, 2, 2, 3]
    up_sal, sal_feature = [], []
    tmp = seq3(lx[4], "merge1.up.4", pads[4])
    sal_feature.append(tmp)
    U = tmp
    up_sal.append(up(conv(tmp, "merge1.score.4", padding=1), x_size))
    for i in (3, 2, 1):
        if lx[i].shape[1] < U.shape[1]:
            U = lx[i] + up(F.relu(conv(U, f"merge1.trans.{i}.0")), lx[i].shape[2:])
        else:
            U = lx[i] + up(U, lx[i].shape[2:])
        tmp = seq3(U, f"merge1.up.{i}", pads[i])
        U = tmp
        sal_feature.append(tmp)
        up_sal.append(up(conv(tmp, f"merge1.score.{i}", padding=1), x_size))
    U = lx[0] + up(F.relu(conv(sal_feature[0], "merge1.trans.2.0")), lx[0].shape[2:])
    edge = seq3(U, "merge1.up.0", 1)
    up_edge = [up(conv(edge, "merge1.score.0", padding=1), x_size)]
    # MergeLayer2
    up_score, tmp_feature = [], []
    for j, y in enumerate(sal_feature[::-1]):
        t = up(F.relu(conv(y, f"merge2.trans.0.{j}.0")), edge.shape[2:]) + edge
        tf = seq3(t, f"merge2.up.0.{j}", [1, 2, 2, 3][j])
        up_score.append(up(conv(tf, f"merge2.score.0.{j}", padding=1), x_size))
        tmp_feature.append(tf)
    acc = tmp_feature[0]
    for f in tmp_feature[1:]:
        acc = F.relu(acc + up(f, tmp_feature[0].shape[2:]))
    fs = conv(F.relu(conv(acc, "merge2.final_score.0", padding=2)), "merge2.final_score.2", padding=1)
    up_score.append(up(fs, x_size))
    return up_edge, up_sal, up_score


def published_background(model, imgs):
    """utils.get_saliency(imgs, sod_model, Dilate(device)): imgs a list of HxWx3 uint8 RGB arrays."""
    def cv2sod(img):
        in_ = np.array(img, dtype=np.float32) - np.array((104.00699, 116.66877, 122.67892))
        return F.interpolate(torch.Tensor(in_.transpose((2, 0, 1))).unsqueeze(0), scale_factor=0.5, mode="bilinear")
    _, _, up_sal_f = model(torch.cat([cv2sod(im) for im in imgs]))
    x = torch.sigmoid(up_sal_f[-1]).squeeze().unsqueeze(1)
    x = F.pad(x, (3, 3, 3, 3), "replicate")
    return 1 - torch.clamp(F.conv2d(x, torch.ones(1, 1, 7, 7)), 0, 1)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sod_file(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("sod") / "epoch_resnet.pth")


@pytest.mark.slow
def test_checkpoint_has_published_layout(sod_file, tmp_path):
    sd = torch.load(sod_file, weights_only=True)
    assert isinstance(sd, dict) and "model" not in sd  # a bare state_dict, loaded as torch.load(sod_path)
    assert len(sd) == 406 and sum(v.numel() for k, v in sd.items() if "running" not in k
                                  and "num_batches" not in k) == 111_692_618  # as the published build_model("resnet")
    assert sd["base.layer4.0.conv2.weight"].shape == (512, 512, 3, 3)
    assert sd["base.layer1.0.downsample.1.running_var"].shape == (256,)
    assert sd["convert.convert0.4.0.weight"].shape == (512, 2048, 1, 1)
    assert sd["merge1.trans.2.0.weight"].shape == (128, 512, 1, 1)
    assert sd["merge1.up.4.4.weight"].shape == (512, 512, 7, 7)
    assert sd["merge2.trans.0.0.0.weight"].shape == (128, 256, 1, 1)
    assert sd["merge2.final_score.2.weight"].shape == (1, 128, 3, 3)
    model = load_egnet(sod_file)
    assert not model.training and all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    # files saved by old torch lack num_batches_tracked (accepted); a missing parameter is named
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked") and k != "merge2.final_score.0.bias"}
    torch.save(old, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "merge2.final_score.0.bias"\.\s*$'):
        load_egnet(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="sod_path"):
        load_egnet(tmp_path / "missing.pth")


def test_narrow_stand_in_loads_strictly_and_equals_published(sod_file, tmp_path):
    """width_div: the published names and structure at 1/16 of the widths (make-test-models' sod_path stand-in);
    the loader reads the divisor from the shapes; the forward still equals the transcription."""
    path = write_random_checkpoint(tmp_path / "epoch_resnet.pth", seed=1, width_div=16)
    sd = torch.load(path, weights_only=True)
    assert list(sd) == list(torch.load(sod_file, weights_only=True))
    assert sd["base.conv1.weight"].shape == (4, 3, 7, 7) and sd["merge1.up.4.4.weight"].shape == (32, 32, 7, 7)
    model = load_egnet(path)
    assert EGNet.width_div_of(model.state_dict()) == 16
    x = torch.randn(1, 3, 40, 56) * 60
    with torch.no_grad():
        got, want = model(x)[2][-1], published_egnet(sd, x)[2][-1]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with pytest.raises(ValueError, match=r"width_div: one of \(1, 2, 4, 8, 16\), got 3"):
        EGNet(3)
    torch.save({k: v for k, v in sd.items() if k != "base.conv1.weight"}, tmp_path / "headless.pth")
    with pytest.raises(ValueError, match="sod_path: .* not an EGNet ResNet-50 state dict"):
        load_egnet(tmp_path / "headless.pth")


def test_forward_equals_published():
    with torch.device("meta"):
        model = EGNet().eval()
    P = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            P[k] = torch.rand(v.shape) + 0.5
        elif v.is_floating_point():
            P[k] = torch.randn(v.shape) * 0.03
        else:
            P[k] = torch.zeros(v.shape, dtype=v.dtype)
    model.load_state_dict(P, strict=True, assign=True)
    x = torch.randn(2, 3, 40, 56) * 60
    with torch.no_grad():
        out, ref = model(x), published_egnet(P, x)
    assert [len(o) for o in out] == [1, 4, 5]
    for got, want in zip(out, ref):
        for g, w in zip(got, want):
            assert g.shape == (2, 1, 40, 56)
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())


def test_background_equals_published(sod_file):
    est = get_saliency_estimator(sod_file)
    assert isinstance(est, EGNetSaliency)
    imgs = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(2)]
    frames = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    bg = background_mask(frames, est)
    with torch.no_grad():
        ref = published_background(est.model, imgs)
    assert bg.shape == (2, 24, 32)
    torch.testing.assert_close(bg, ref[:, 0], rtol=1e-5, atol=1e-5)


def test_background_rule_and_callable():
    sal = torch.zeros(1, 20, 20)
    sal[0, 10, 10] = 1.0
    sal[0, 2, 17] = 0.25
    bg = background_from_saliency(sal)
    assert bg[0, 7:14, 7:14].eq(0).all() and bg[0, 6, 10] == 1 and bg[0, 10, 14] == 1  # dilated by 3 pixels
    assert torch.allclose(bg[0, 0:6, 14:20], torch.tensor(0.75))  # a box sum below 1 stays soft
    assert bg[0, 0, 0] == 1

    def half(frames):  # any callable frames -> [N, h, w] saliency works
        return (frames.mean(1) > 127).float()

    frames = torch.zeros(2, 3, 16, 16)
    frames[:, :, 4:8, 4:8] = 255
    bg = background_mask(frames, get_saliency_estimator(half))
    assert bg.shape == (2, 16, 16) and bg[:, 1:11, 1:11].eq(0).all() and bg[:, 12:, 12:].eq(1).all()
    with pytest.raises(RuntimeError, match=r"expected a float \[2, h, w\]"):
        background_mask(frames, lambda f: f.mean(1, keepdim=True))
    with pytest.raises(ValueError, match="saliency: a path"):
        get_saliency_estimator(3)
