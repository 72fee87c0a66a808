"""MiDaS DPT-Hybrid, the depth network behind the published `controlnet_type: depth` (config_boxer), written for
this project so that the published checkpoint `dpt_hybrid-midas-501f0c75.pt` (lllyasviel/Annotators) loads
unchanged with `load_state_dict(strict=True)` and no annotator package (controlnet_aux needs timm, and timm needs
torchvision) is required.

The module tree and parameter names are those of MiDaS's `DPTDepthModel(backbone="vitb_rn50_384",
non_negative=True)` as built on timm's `vit_base_resnet50_384` (= vit_base_r50_s16_384):

    pretrained.model                      ViT-B/16 hybrid: patch_embed.backbone (ResNetV2 stem + 3 stages of
                                          bottlenecks with weight-standardised 'same'-padded convs and GroupNorm),
                                          patch_embed.proj, cls_token, pos_embed, blocks.0-11, norm, head
    pretrained.act_postprocess3/4         readout projection + 1x1 conv (+ a stride-2 3x3 conv for level 4);
                                          levels 1 and 2 are the ResNet's stage 0/1 outputs (no parameters)
    scratch.layer1..4_rn                  3x3 convs to the 256-channel decoder width
    scratch.refinenet1..4                 fusion blocks (two residual conv units, 2x upsampling, 1x1 out_conv)
    scratch.output_conv                   3x3 conv, 2x upsampling, 3x3 conv, ReLU, 1x1 conv, ReLU

Forward as FRESCO runs it (its copy of ControlNet 1.0's annotator/midas): the frame itself, any size that is a
multiple of 32, scaled to [-1, 1]; the ViT's position embedding is resized bilinearly to the frame's 1/16 grid;
the output is a [B, H, W] non-negative inverse depth. `DepthDetector` adds the published pre/post-processing.

Sizes are read from the checkpoint's shapes (`MidasConfig.from_state_dict`), so a random-weight stand-in with tiny
widths and the same names (`midas_state_dict`) loads through the same code. Two choices are not in the shapes and
follow the published model: attention heads = width / 64 (12 for 768), GroupNorm groups = 32 (gcd(32, width) for a
stand-in narrower than 32 channels). See docs/flow_and_saliency.md ("Depth")."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .annotators import annotator_file
from .checkpoint import load_tensors

__all__ = ["MIDAS_FILE", "MidasConfig", "DPTDepth", "DepthDetector", "load_midas", "midas_state_dict",
           "TINY_MIDAS"]

MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
_STD_EPS = 1e-8  # timm's ViT-hybrid ResNet: StdConv2dSame(eps=1e-8)
_GN_EPS = 1e-5
_LN_EPS = 1e-6
_HOOKS = (8, 11)  # ViT blocks whose outputs are decoder levels 3 and 4 (MiDaS hooks [0, 1, 8, 11] for vitb_rn50)


@dataclass(frozen=True)
class MidasConfig:
    """The widths of a DPT-Hybrid; the defaults are the published model's."""
    stem: int = 64
    stage_widths: Tuple[int, ...] = (256, 512, 1024)  # bottleneck outputs; the inner width is a quarter of each
    stage_mids: Tuple[int, ...] = (64, 128, 256)
    stage_depths: Tuple[int, ...] = (3, 4, 9)
    embed_dim: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    grid: int = 24  # the position embedding's grid (384 / 16)
    num_classes: int = 1000  # timm's classifier head (in the checkpoint, unused)
    reassemble: Tuple[int, int] = (768, 768)  # act_postprocess3/4 output channels
    features: int = 256
    head_mid: int = 128
    head_last: int = 32

    @classmethod
    def from_state_dict(cls, sd: Dict[str, torch.Tensor]) -> "MidasConfig":
        """The widths a DPT-Hybrid state dict was saved with (published names); a missing key is a ValueError."""
        bb = "pretrained.model.patch_embed.backbone."
        try:
            stages, s = [], 0
            while f"{bb}stages.{s}.blocks.0.conv1.weight" in sd:
                n = 0
                while f"{bb}stages.{s}.blocks.{n}.conv1.weight" in sd:
                    n += 1
                stages.append((int(sd[f"{bb}stages.{s}.blocks.0.conv3.weight"].shape[0]),
                               int(sd[f"{bb}stages.{s}.blocks.0.conv1.weight"].shape[0]), n))
                s += 1
            if len(stages) != 3:
                raise KeyError(f"{bb}stages.{len(stages)}.blocks.0.conv1.weight" if len(stages) < 3
                               else f"no more than 3 stages ({len(stages)} found)")
            depth = 0
            while f"pretrained.model.blocks.{depth}.attn.qkv.weight" in sd:
                depth += 1
            pos = sd["pretrained.model.pos_embed"]
            grid = int(round(math.sqrt(pos.shape[1] - 1)))
            return cls(stem=int(sd[f"{bb}stem.conv.weight"].shape[0]),
                       stage_widths=tuple(w for w, _, _ in stages), stage_mids=tuple(m for _, m, _ in stages),
                       stage_depths=tuple(n for _, _, n in stages), embed_dim=int(pos.shape[2]), depth=depth,
                       mlp_dim=int(sd["pretrained.model.blocks.0.mlp.fc1.weight"].shape[0]), grid=grid,
                       num_classes=int(sd["pretrained.model.head.weight"].shape[0]),
                       reassemble=(int(sd["pretrained.act_postprocess3.3.weight"].shape[0]),
                                   int(sd["pretrained.act_postprocess4.3.weight"].shape[0])),
                       features=int(sd["scratch.layer1_rn.weight"].shape[0]),
                       head_mid=int(sd["scratch.output_conv.0.weight"].shape[0]),
                       head_last=int(sd["scratch.output_conv.2.weight"].shape[0]))
        except KeyError as e:
            raise ValueError(f"not a MiDaS DPT-Hybrid state dict (missing {e.args[0]})") from None

    def check(self) -> "MidasConfig":
        if self.depth <= max(_HOOKS):
            raise ValueError(f"a DPT-Hybrid needs at least {max(_HOOKS) + 1} ViT blocks (levels 3 and 4 are the "
                             f"outputs of blocks {_HOOKS}), got {self.depth}")
        if self.grid < 1:
            raise ValueError("the position embedding has no grid")
        return self


# a stand-in: every published name, tiny widths
TINY_MIDAS = MidasConfig(stem=16, stage_widths=(16, 32, 32), stage_mids=(8, 8, 16), stage_depths=(3, 4, 9),
                         embed_dim=32, depth=12, mlp_dim=64, grid=4, num_classes=10, reassemble=(32, 32),
                         features=16, head_mid=8, head_last=8)


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding for a k x k window at stride s (the extra pixel goes right/bottom)."""
    ih, iw = x.shape[-2:]
    ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
    pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
    return x


class _StdConv(nn.Conv2d):
    """Weight-standardised conv (per output channel: zero mean, unit biased variance, eps 1e-8), no bias, 'same'
    padding: static and symmetric at stride 1, computed from the input size at stride 2."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(cin, cout, k, stride=stride, padding=(k - 1) // 2 if stride == 1 else 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            x = _same_pad(x, self.kernel_size[0], self.stride[0])
        w = self.weight.flatten(1)
        var, mean = torch.var_mean(w, dim=1, unbiased=False, keepdim=True)
        w = ((w - mean) / torch.sqrt(var + _STD_EPS)).view_as(self.weight)
        return F.conv2d(x, w, None, self.stride, self.padding)


def _group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c, eps=_GN_EPS)


class _Downsample(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = _StdConv(cin, cout, 1, stride)
        self.norm = _group_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Bottleneck(nn.Module):
    """timm's non-pre-activation ResNetV2 bottleneck: 1x1, 3x3 (stride here), 1x1, GroupNorm after each (ReLU after
    the first two), ReLU(residual + shortcut)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int, downsample: bool):
        super().__init__()
        self.downsample = _Downsample(cin, cout, stride) if downsample else None
        self.conv1 = _StdConv(cin, mid, 1)
        self.norm1 = _group_norm(mid)
        self.conv2 = _StdConv(mid, mid, 3, stride)
        self.norm2 = _group_norm(mid)
        self.conv3 = _StdConv(mid, cout, 1)
        self.norm3 = _group_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.norm3(self.conv3(y)) + shortcut)


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, mid: int, n: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[_Bottleneck(cin if i == 0 else cout, cout, mid, stride if i == 0 else 1,
                                                  downsample=i == 0) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _Stem(nn.Module):
    """7x7 stride-2 conv, GroupNorm + ReLU, 3x3 stride-2 max-pool with 'same' padding (-inf)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = _StdConv(3, c, 7, 2)
        self.norm = _group_norm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(_same_pad(x, 3, 2, value=float("-inf")), 3, 2)


class _ResNet(nn.Module):
    """The ViT-hybrid's ResNetV2 (layers 3, 4, 9): -> the three stage outputs (1/4, 1/8, 1/16)."""

    def __init__(self, cfg: MidasConfig):
        super().__init__()
        self.stem = _Stem(cfg.stem)
        cin, stages = cfg.stem, []
        for i, (w, m, n) in enumerate(zip(cfg.stage_widths, cfg.stage_mids, cfg.stage_depths)):
            stages.append(_Stage(cin, w, m, n, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: MidasConfig):
        super().__init__()
        self.backbone = _ResNet(cfg)
        self.proj = nn.Conv2d(cfg.stage_widths[-1], cfg.embed_dim, 1)


class _Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = max(1, dim // 64)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _Attention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _ViTHybrid(nn.Module):
    """pretrained.model: forward(x) -> (ResNet stage 0 and 1 outputs, outputs of blocks 8 and 11) as MiDaS's
    forward_flex with its hooks sees them (the final `norm` and `head` are in the checkpoint but unused)."""

    def __init__(self, cfg: MidasConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid ** 2 + 1, d))
        self.patch_embed = _PatchEmbed(cfg)
        self.blocks = nn.ModuleList([_Block(d, cfg.mlp_dim) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=_LN_EPS)
        self.head = nn.Linear(d, cfg.num_classes)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        tok, grid = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        g = int(round(math.sqrt(grid.shape[0])))
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear")
        return torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        b, _, h, w = x.shape
        feats = self.patch_embed.backbone(x)
        t = self.patch_embed.proj(feats[-1]).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self._pos_embed(h // 16, w // 16)
        out = feats[:2]
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in _HOOKS:
                out.append(t)
            if i == max(_HOOKS):
                break  # the rest (blocks, norm) does not reach the depth map
        return out


class _ProjectReadout(nn.Module):
    """The class token concatenated to every patch token, Linear(2C, C) + GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, 1:]
        return self.project(torch.cat([tokens, x[:, :1].expand_as(tokens)], dim=-1))


class _Pretrained(nn.Module):
    def __init__(self, cfg: MidasConfig):
        super().__init__()
        d, (r3, r4) = cfg.embed_dim, cfg.reassemble
        self.model = _ViTHybrid(cfg)
        # indices as published: 0 readout, 1 transpose, 2 unflatten (no parameters), 3 (and 4) convs
        self.act_postprocess3 = nn.Sequential(_ProjectReadout(d), nn.Identity(), nn.Identity(), nn.Conv2d(d, r3, 1))
        self.act_postprocess4 = nn.Sequential(_ProjectReadout(d), nn.Identity(), nn.Identity(), nn.Conv2d(d, r4, 1),
                                              nn.Conv2d(r4, r4, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        gh, gw = x.shape[2] // 16, x.shape[3] // 16
        l1, l2, l3, l4 = self.model(x)
        levels = [l1, l2]
        for t, post in ((l3, self.act_postprocess3), (l4, self.act_postprocess4)):
            t = post[0](t).transpose(1, 2)
            t = t.reshape(t.shape[0], t.shape[1], gh, gw)
            levels.append(post[3:](t))
        return levels


class _ResidualConvUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class _Fusion(nn.Module):
    """(coarser path [+ this level]) -> residual unit -> 2x bilinear (align_corners) -> 1x1 out_conv. refinenet4
    has a resConfUnit1 too (published), unused as it has one input."""

    def __init__(self, c: int):
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1 = _ResidualConvUnit(c)
        self.resConfUnit2 = _ResidualConvUnit(c)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Interpolate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Scratch(nn.Module):
    def __init__(self, cfg: MidasConfig):
        super().__init__()
        f = cfg.features
        for i, cin in enumerate((*cfg.stage_widths[:2], *cfg.reassemble), start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(cin, f, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", _Fusion(f))
        self.output_conv = nn.Sequential(nn.Conv2d(f, cfg.head_mid, 3, padding=1), _Interpolate(),
                                         nn.Conv2d(cfg.head_mid, cfg.head_last, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(cfg.head_last, 1, 1), nn.ReLU(), nn.Identity())


class DPTDepth(nn.Module):
    """DPT-Hybrid with the published names. forward: [B, 3, H, W] RGB in [-1, 1], H and W multiples of 32 ->
    [B, H, W] non-negative relative inverse depth (larger = nearer)."""

    def __init__(self, cfg: MidasConfig = MidasConfig()):
        super().__init__()
        self.config = cfg.check()
        self.pretrained = _Pretrained(cfg)
        self.scratch = _Scratch(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"MiDaS: expected [B, 3, H, W] with H and W multiples of 32, got {list(x.shape)}")
        s = self.scratch
        l1, l2, l3, l4 = (conv(t) for conv, t in zip((s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn),
                                                     self.pretrained(x)))
        path = s.refinenet4(l4)
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return s.output_conv(path)[:, 0]


def _state_dict_of(obj: object, path: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "optimizer" in obj and "model" in obj:  # MiDaS's BaseModel.load accepts both
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"depth checkpoint: '{path}' does not hold a MiDaS state dict")
    return obj


def load_midas(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> DPTDepth:
    """DPT-Hybrid with the weights at `path` (dpt_hybrid-midas-501f0c75.pt or a stand-in with the same names),
    strict=True, widths from the file's shapes, eval mode, frozen."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"depth checkpoint: no such file '{path}' ({MIDAS_FILE})")
    sd = _state_dict_of(load_tensors(path, "depth checkpoint"), path)
    try:
        cfg = MidasConfig.from_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"depth checkpoint: '{path}' is {e}") from None
    with torch.device("meta"):  # no random init of the 123M parameters that the file replaces
        model = DPTDepth(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.float().to(device).eval().requires_grad_(False)


class DepthDetector:
    """The published MidasDetector (FRESCO's src/ControlNet/annotator/midas, ControlNet 1.0) for ControlNet depth:
    [H, W, 3] uint8 RGB, H and W multiples of 32 -> [H, W] uint8: the network on the frame itself (no resize) scaled
    by 1/127.5 - 1, the depth map min-max normalised to 0..255 (truncated). A constant map (the published code
    divides by zero there) gives zeros."""

    def __init__(self, network: nn.Module, device: Union[str, torch.device] = "cpu"):
        self.net = network
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, annotator_path: Optional[str] = None, device: Union[str, torch.device] = "cpu"
                        ) -> "DepthDetector":
        return cls(load_midas(annotator_file(MIDAS_FILE, annotator_path), device), device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected [H, W, 3] uint8 RGB, got {image.dtype} {list(image.shape)}")
        x = torch.from_numpy(image.copy()).float().to(self.device) / 127.5 - 1.0
        depth = self.net(x.permute(2, 0, 1)[None])[0].float()
        depth = depth - depth.min()
        top = depth.max()
        if top <= 0:
            return np.zeros(image.shape[:2], np.uint8)
        return ((depth / top).cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)


def midas_state_dict(cfg: MidasConfig = TINY_MIDAS, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random weights with the published parameter names at the widths of `cfg` (a stand-in for
    dpt_hybrid-midas-501f0c75.pt): small ViT weights so the blocks stay well-conditioned, and a positive last bias
    so the non-negative output is not all zero."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DPTDepth(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if re.search(r"pos_embed|cls_token", name):
                    p.normal_(0, 0.02)
            model.scratch.output_conv[4].bias.fill_(1.0)
    return model.state_dict()
