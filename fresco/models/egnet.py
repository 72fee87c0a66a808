"""EGNet salient-object detection (Zhao et al., ICCV 2019), the ResNet-50 variant FRESCO runs for its background
mask, written for this project so that the authors' `sod_path` checkpoint (a bare state_dict, `epoch_resnet.pth`)
loads unchanged with `load_state_dict(strict=True)`: the same module tree, names and shapes as the published
`build_model('resnet')` (FRESCO ships that code under src/EGNet).

Forward (eval mode, frozen batch norm): a dilated ResNet-50 gives five feature maps (1/2, 1/4, 1/8, 1/16, 1/16),
1x1 convs bring them to 128/256/512/512/512 channels, a top-down path builds saliency features from the deepest
level, the 1/2-scale level plus the deepest saliency feature gives the edge feature, and each saliency feature is
fused with the edge feature; the final map (the last of the returned scores) is what FRESCO uses.
See docs/flow_and_saliency.md."""
from __future__ import annotations

import os
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_tensors

__all__ = ["EGNet", "load_egnet", "write_random_checkpoint", "SOD_MEAN"]

SOD_MEAN = (104.00699, 116.66877, 122.67892)  # subtracted per channel from the 0..255 input, in the given order
WIDTH_DIVS = (1, 2, 4, 8, 16)  # channel divisors of the stand-ins (every published width stays an integer >= 1)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class _Bottleneck(nn.Module):
    """ResNet bottleneck with the stride on the first 1x1 conv and an optional dilation on the 3x3."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride=stride, bias=False),
                                        nn.BatchNorm2d(planes * 4)) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet50(nn.Module):
    """[B, 3, H, W] -> five maps: 64ch 1/2, 256ch 1/4, 512ch 1/8, 1024ch 1/16, 2048ch 1/16 (dilated last stage);
    every width divided by `div`."""

    def __init__(self, div: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64 // div, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64 // div)
        cin = 64 // div
        for i, (planes, n, stride, dil) in enumerate([(64 // div, 3, 1, 1), (128 // div, 4, 2, 1),
                                                      (256 // div, 6, 2, 1), (512 // div, 3, 1, 2)]):
            blocks = [_Bottleneck(cin, planes, stride, dil, downsample=True)]
            blocks += [_Bottleneck(planes * 4, planes, 1, dil) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes * 4

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        out = [x]
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))


def _triple(cin: int, cout: int, k: int) -> nn.Sequential:
    """Three k x k convs (bias, 'same' padding) with ReLUs."""
    p = k // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, p), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, k, 1, p),
                         nn.ReLU(inplace=True), nn.Conv2d(cout, cout, k, 1, p), nn.ReLU(inplace=True))


class _Convert(nn.Module):
    def __init__(self, div: int = 1):
        super().__init__()
        self.convert0 = nn.ModuleList([_conv_relu(a // div, b // div) for a, b in zip((64, 256, 512, 1024, 2048),
                                                                                      (128, 256, 512, 512, 512))])


class _Merge1(nn.Module):
    """Top-down saliency path and the edge branch. up[i]/score[i] per level: channels 128, 256, 512, 512, 512,
    kernels 3, 3, 5, 5, 7; trans: 512->256 into level 1, 512->128 (deepest saliency -> edge); trans[0] (256->128)
    exists in the published tree but is never used."""

    def __init__(self, div: int = 1):
        super().__init__()
        chans, ks = tuple(c // div for c in (128, 256, 512, 512, 512)), (3, 3, 5, 5, 7)
        self.trans = nn.ModuleList([_conv_relu(256 // div, 128 // div), _conv_relu(512 // div, 256 // div),
                                    _conv_relu(512 // div, 128 // div)])
        self.up = nn.ModuleList([_triple(c, c, k) for c, k in zip(chans, ks)])
        self.score = nn.ModuleList([nn.Conv2d(c, 1, 3, 1, 1) for c in chans])

    def forward(self, xs: List[torch.Tensor], size) -> Tuple[List[torch.Tensor], torch.Tensor,
                                                                List[torch.Tensor], List[torch.Tensor]]:
        """-> (edge scores, edge feature, saliency scores, saliency features deepest first)."""
        u = self.up[4](xs[4])
        sal_feats, sal_scores = [u], [_up(self.score[4](u), size)]
        for i in (3, 2, 1):
            top = self.trans[i](u) if xs[i].shape[1] < u.shape[1] else u
            u = self.up[i](xs[i] + _up(top, xs[i].shape[2:]))
            sal_feats.append(u)
            sal_scores.append(_up(self.score[i](u), size))
        edge = self.up[0](xs[0] + _up(self.trans[2](sal_feats[0]), xs[0].shape[2:]))
        return [_up(self.score[0](edge), size)], edge, sal_scores, sal_feats


class _Merge2(nn.Module):
    """Fuses each saliency feature (shallowest first: 256, 512, 512, 512 channels, kernels 3, 5, 5, 7) with the
    edge feature; final_score reads the running ReLU sum of the fused features."""

    def __init__(self, div: int = 1):
        super().__init__()
        cins, ks, e = tuple(c // div for c in (256, 512, 512, 512)), (3, 5, 5, 7), 128 // div
        self.trans = nn.ModuleList([nn.ModuleList([_conv_relu(c, e) for c in cins])])
        self.up = nn.ModuleList([nn.ModuleList([_triple(e, e, k) for k in ks])])
        self.score = nn.ModuleList([nn.ModuleList([nn.Conv2d(e, 1, 3, 1, 1) for _ in cins])])
        self.final_score = nn.Sequential(nn.Conv2d(e, e, 5, 1, 2), nn.ReLU(inplace=True),
                                         nn.Conv2d(e, 1, 3, 1, 1))

    def forward(self, edge: torch.Tensor, sal_feats: List[torch.Tensor], size) -> List[torch.Tensor]:
        scores, feats = [], []
        for j, s in enumerate(sal_feats[::-1]):
            f = self.up[0][j](_up(self.trans[0][j](s), edge.shape[2:]) + edge)
            scores.append(_up(self.score[0][j](f), size))
            feats.append(f)
        acc = feats[0]
        for f in feats[1:]:
            acc = F.relu(acc + _up(f, feats[0].shape[2:]))
        scores.append(_up(self.final_score(acc), size))
        return scores


class EGNet(nn.Module):
    """forward(x): [B, 3, H, W] mean-subtracted image (`SOD_MEAN`) -> (edge scores, saliency scores, fused saliency
    scores), lists of [B, 1, H, W] logits; the last fused score is the saliency map. `width_div` > 1 divides every
    channel count (the names and the structure stay): only for random-weight stand-ins, which the loader reads
    back from the shapes (`width_div_of`)."""

    def __init__(self, width_div: int = 1):
        super().__init__()
        if width_div not in WIDTH_DIVS:
            raise ValueError(f"width_div: one of {WIDTH_DIVS}, got {width_div!r}")
        self.base = _ResNet50(width_div)
        self.convert = _Convert(width_div)
        self.merge1 = _Merge1(width_div)
        self.merge2 = _Merge2(width_div)

    @staticmethod
    def width_div_of(sd: dict) -> int:
        """The width divisor a state dict was saved with (64 / its first conv's width)."""
        w = sd.get("base.conv1.weight")
        if not isinstance(w, torch.Tensor) or w.dim() != 4 or w.shape[0] == 0 or 64 % w.shape[0] \
                or 64 // w.shape[0] not in WIDTH_DIVS:
            raise ValueError("not an EGNet ResNet-50 state dict (base.conv1.weight missing or of an unknown width)")
        return 64 // int(w.shape[0])

    def forward(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        size = x.shape[2:]
        xs = [conv(f) for conv, f in zip(self.convert.convert0, self.base(x))]
        edge_scores, edge, sal_scores, sal_feats = self.merge1(xs, size)
        return edge_scores, sal_scores, self.merge2(edge, sal_feats, size)


def load_egnet(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> EGNet:
    """EGNet with the authors' weights at `path` (a bare state_dict, as FRESCO's `sod_path`), strict=True, eval mode
    (batch norm uses its running statistics), frozen."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sod_path: no such file '{path}' (the EGNet ResNet-50 checkpoint, "
                                "epoch_resnet.pth)")
    sd = load_tensors(path, "sod_path")
    if not isinstance(sd, dict):
        raise ValueError(f"sod_path: '{path}' does not hold a state_dict")
    try:
        div = EGNet.width_div_of(sd)
    except ValueError as e:
        raise ValueError(f"sod_path: '{path}' is {e}") from None
    with torch.device("meta"):  # no random init of 112M parameters that the file replaces
        model = EGNet(div)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def write_random_checkpoint(path: Union[str, os.PathLike], seed: int = 0, width_div: int = 1) -> str:
    """Write a random-weight stand-in for the EGNet `sod_path` file: the published names and format (a bare
    state_dict, torch.save), the published shapes with every width divided by `width_div` (1: full size, 450 MB;
    16: 1.8 MB), with plausible batch-norm statistics. Returns the path."""
    path = os.fspath(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EGNet(width_div)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.0)
                m.bias.data.normal_(0, 0.1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
