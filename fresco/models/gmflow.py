"""GMFlow optical flow (Xu et al., CVPR 2022) as FRESCO runs it, written for this project so that the authors'
`gmflow_sintel-0c07dcb3.pth` loads unchanged with `load_state_dict(strict=True)` (same module tree, parameter names
and shapes as haofeixu/gmflow's `GMFlow(feature_channels=128, num_scales=1, upsample_factor=8, num_head=1,
attention_type='swin', ffn_dim_expansion=4, num_transformer_layers=6)`).

The forward is the published one for FRESCO's call (`attn_splits_list=[2], corr_radius_list=[-1],
prop_radius_list=[-1], pred_bidir_flow=True`): ImageNet-normalised RGB, a CNN encoder to 1/8 scale (instance
norm), six transformer blocks (self- then cross-attention + FFN) in 2x2 windows, every second block shifted
Swin-style (the published -100 mask between regions), global matching (a softmax over all 1/8-scale positions),
flow propagation by self-attention on the features (with the published quirk key = k_proj(q_proj(x))) and convex
8x upsampling. The two hw x hw softmaxes (matching and propagation) and the window attention run in query-row
chunks so that memory stays bounded at 512x896 (`chunk_elems` score elements per chunk; the result is the same
as unchunked up to float summation order). See docs/flow_and_saliency.md.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_into, load_tensors

__all__ = ["GMFlow", "GMFlowEstimator", "load_gmflow", "write_random_checkpoint", "CHUNK_ELEMS"]

CHUNK_ELEMS = 1 << 25  # score elements per attention chunk: 128 MiB in fp32
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_SHIFT_MASK = -100.0  # the published additive mask between regions of a shifted window


class _ResidualBlock(nn.Module):
    """Two 3x3 convs with instance norm and a (strided 1x1 conv + norm) shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.norm3 = nn.InstanceNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class _Encoder(nn.Module):
    """[B, 3, H, W] -> [B, C, H/8, W/8] features."""

    def __init__(self, channels: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(_ResidualBlock(64, 64, 1), _ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(_ResidualBlock(64, 96, 2), _ResidualBlock(96, 96, 1))
        self.layer3 = nn.Sequential(_ResidualBlock(96, 128, 2), _ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(128, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: Optional[torch.Tensor] = None,
                      chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
    """softmax(q k^T / sqrt(C) + bias) v, computed over query rows in chunks of at most `chunk_elems` scores.

    q [B, L, C], k [B, S, C], v [B, S, D], bias None or broadcastable to [B, L, S] (given as [G, L, S] with B a
    multiple of G, batch b using bias[b % G]) -> [B, L, D]."""
    b, n, c = q.shape
    scale = 1.0 / math.sqrt(c)
    rows = max(1, chunk_elems // max(1, b * k.shape[1]))
    kt = k.transpose(1, 2)
    out = []
    for s in range(0, n, rows):
        scores = torch.matmul(q[:, s:s + rows], kt) * scale
        if bias is not None:  # added per group without materialising bias for all B
            g = bias.shape[0]
            scores = (scores.view(b // g, g, -1, scores.shape[-1]) + bias[:, s:s + rows]).view(scores.shape)
        out.append(torch.matmul(scores.softmax(dim=-1), v))
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, H, W, C] -> [B*k*k, H/k * W/k, C] (window-major, row-major inside)."""
    b, h, w, c = x.shape
    return x.view(b, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5).reshape(b * k * k, (h // k) * (w // k), c)


def _unwindows(x: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_windows`: [B*k*k, h/k * w/k, C] -> [B, H, W, C]."""
    c = x.shape[-1]
    b = x.shape[0] // (k * k)
    return x.view(b, k, k, h // k, w // k, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def shifted_window_bias(h: int, w: int, k: int, device: torch.device) -> torch.Tensor:
    """[k*k, L, L] additive mask of a window split shifted by half a window: 0 between positions of the same region
    of the rolled map, -100 otherwise (L = h/k * w/k)."""
    wh, ww = h // k, w // k

    def region(n: int, win: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - win).long() + (i >= n - win // 2).long()

    label = (region(h, wh)[:, None] * 3 + region(w, ww)[None, :])[None, :, :, None]
    lw = _windows(label, k)[..., 0]  # [k*k, L]
    return (lw[:, None, :] != lw[:, :, None]).float() * _SHIFT_MASK


class _AttentionLayer(nn.Module):
    """Single-head (window) attention of source to target, merge + layer norm, optionally the FFN on
    [source, message]; returns source + message. Tokens [B, H*W, C]."""

    def __init__(self, c: int, ffn: bool, expansion: int = 4):
        super().__init__()
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, c, bias=False)
        self.v_proj = nn.Linear(c, c, bias=False)
        self.merge = nn.Linear(c, c, bias=False)
        self.norm1 = nn.LayerNorm(c)
        self.ffn = ffn
        if ffn:
            self.mlp = nn.Sequential(nn.Linear(2 * c, 2 * c * expansion, bias=False), nn.GELU(),
                                     nn.Linear(2 * c * expansion, c, bias=False))
            self.norm2 = nn.LayerNorm(c)

    def forward(self, source: torch.Tensor, target: torch.Tensor, h: int, w: int, splits: int, shift: bool,
                bias: Optional[torch.Tensor], chunk_elems: int) -> torch.Tensor:
        q, k, v = self.q_proj(source), self.k_proj(target), self.v_proj(target)
        if splits > 1:
            b, _, c = q.shape
            sh, sw = (h // splits) // 2, (w // splits) // 2
            grids = []
            for t in (q, k, v):
                t = t.view(b, h, w, c)
                if shift:
                    t = torch.roll(t, shifts=(-sh, -sw), dims=(1, 2))
                grids.append(_windows(t, splits))
            msg = chunked_attention(*grids, bias=bias if shift else None, chunk_elems=chunk_elems)
            msg = _unwindows(msg, splits, h, w)
            if shift:
                msg = torch.roll(msg, shifts=(sh, sw), dims=(1, 2))
            msg = msg.reshape(b, h * w, c)
        else:
            msg = chunked_attention(q, k, v, chunk_elems=chunk_elems)
        msg = self.norm1(self.merge(msg))
        if self.ffn:
            msg = self.norm2(self.mlp(torch.cat([source, msg], dim=-1)))
        return source + msg


class _TransformerBlock(nn.Module):
    def __init__(self, c: int, expansion: int):
        super().__init__()
        self.self_attn = _AttentionLayer(c, ffn=False, expansion=expansion)
        self.cross_attn_ffn = _AttentionLayer(c, ffn=True, expansion=expansion)


class _FeatureTransformer(nn.Module):
    def __init__(self, c: int, num_layers: int, expansion: int):
        super().__init__()
        self.layers = nn.ModuleList([_TransformerBlock(c, expansion) for _ in range(num_layers)])

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, splits: int, chunk_elems: int
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """f0, f1 [B, C, h, w] -> both updated (each attends to itself, then to the other)."""
        b, c, h, w = f0.shape
        if splits > 1 and (h % splits or w % splits):
            raise ValueError(f"GMFlow: the 1/8-scale size {h}x{w} must be divisible by attn_splits={splits}")
        bias = shifted_window_bias(h, w, splits, f0.device) if splits > 1 else None
        x = torch.cat([f0, f1]).flatten(2).transpose(1, 2)  # [2B, hw, C]
        for i, blk in enumerate(self.layers):
            shift = splits > 1 and i % 2 == 1
            other = torch.cat(x.chunk(2)[::-1])
            x = blk.self_attn(x, x, h, w, splits, shift, bias, chunk_elems)
            x = blk.cross_attn_ffn(x, other, h, w, splits, shift, bias, chunk_elems)  # other: partner before block
        x = x.transpose(1, 2).reshape(2 * b, c, h, w)
        return x[:b], x[b:]


class _FlowPropagation(nn.Module):
    """Self-attention on features carrying the flow: softmax(q_proj(x) k_proj(q_proj(x))^T / sqrt(C)) flow."""

    def __init__(self, c: int):
        super().__init__()
        self.q_proj = nn.Linear(c, c)
        self.k_proj = nn.Linear(c, c)

    def forward(self, feat: torch.Tensor, flow: torch.Tensor, chunk_elems: int) -> torch.Tensor:
        b, c, h, w = feat.shape
        q = self.q_proj(feat.flatten(2).transpose(1, 2))
        out = chunked_attention(q, self.k_proj(q), flow.flatten(2).transpose(1, 2), chunk_elems=chunk_elems)
        return out.transpose(1, 2).reshape(b, 2, h, w)


def position_embedding(h: int, w: int, c: int, device: torch.device, dtype: torch.dtype = torch.float32
                       ) -> torch.Tensor:
    """[c, h, w] normalised sine embedding (DETR style, 2*pi scale, temperature 1e4): c/2 channels of y then
    c/2 of x, each alternating sin/cos of (i + 1) / (n + 1e-6) * 2 * pi over frequencies 1e4^(2*(j//2)/(c/2))."""
    npf = c // 2
    dim_t = 10000.0 ** (2 * (torch.arange(npf, device=device) // 2).to(dtype) / npf)

    def embed(n: int) -> torch.Tensor:  # [npf, n]
        pos = torch.arange(1, n + 1, device=device, dtype=dtype) / (n + 1e-6) * (2 * math.pi)
        arg = pos[None, :] / dim_t[:, None]
        even = torch.arange(npf, device=device) % 2 == 0
        return torch.where(even[:, None], arg.sin(), arg.cos())

    ey, ex = embed(h), embed(w)
    return torch.cat([ey[:, :, None].expand(npf, h, w), ex[:, None, :].expand(npf, h, w)])


class GMFlow(nn.Module):
    """The network (published module tree, 4.7M parameters). `forward(img0, img1)`: [B, 3, H, W] RGB in 0..255,
    H and W multiples of 8 * attn_splits -> flow [B, 2, H, W] img0 -> img1 in pixels, or with `bidirectional`
    [2B, 2, H, W]: the B forward flows then the B backward flows (img1 -> img0), from one pass as published."""

    def __init__(self, feature_channels: int = 128, num_transformer_layers: int = 6, ffn_dim_expansion: int = 4,
                 upsample_factor: int = 8):
        super().__init__()
        self.feature_channels = feature_channels
        self.upsample_factor = upsample_factor
        self.backbone = _Encoder(feature_channels)
        self.transformer = _FeatureTransformer(feature_channels, num_transformer_layers, ffn_dim_expansion)
        self.feature_flow_attn = _FlowPropagation(feature_channels)
        self.upsampler = nn.Sequential(nn.Conv2d(2 + feature_channels, 256, 3, 1, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(256, upsample_factor ** 2 * 9, 1))

    def _upsample(self, flow: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Convex 8x upsampling: each fine pixel is a softmax-weighted mix of the 3x3 coarse neighbours' flow."""
        b, _, h, w = flow.shape
        k = self.upsample_factor
        mask = self.upsampler(torch.cat([flow, feat], dim=1)).view(b, 1, 9, k, k, h, w).softmax(dim=2)
        nb = F.unfold(flow * k, 3, padding=1).view(b, 2, 9, 1, 1, h, w)
        up = (mask * nb).sum(dim=2)  # [b, 2, k, k, h, w]
        return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, h * k, w * k)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, *, attn_splits: int = 2, bidirectional: bool = False,
                chunk_elems: int = CHUNK_ELEMS) -> torch.Tensor:
        x = torch.cat([img0, img1])
        mean = torch.tensor(_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x / 255.0 - mean) / std
        if x.shape[2] % (8 * attn_splits) or x.shape[3] % (8 * attn_splits):
            raise ValueError(f"GMFlow: H and W must be multiples of {8 * attn_splits}, got "
                             f"{x.shape[2]}x{x.shape[3]}")
        f0, f1 = self.backbone(x).chunk(2)
        c, h, w = f0.shape[1:]
        pos = position_embedding(h // attn_splits, w // attn_splits, c, x.device, x.dtype)
        pos = pos.repeat(1, attn_splits, attn_splits)
        f0, f1 = self.transformer(f0 + pos, f1 + pos, attn_splits, chunk_elems)
        # global matching: the expected position under softmax(f0 f1^T / sqrt(C)) minus the own position
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        grid = torch.stack([xs, ys]).to(x.dtype).view(1, 2, h * w).transpose(1, 2)  # [1, hw, 2]
        t0, t1 = f0.flatten(2).transpose(1, 2), f1.flatten(2).transpose(1, 2)
        q, k, feat = (torch.cat([t0, t1]), torch.cat([t1, t0]), torch.cat([f0, f1])) if bidirectional \
            else (t0, t1, f0)
        nb = q.shape[0]
        corr = chunked_attention(q, k, grid.expand(nb, -1, -1), chunk_elems=chunk_elems) - grid
        flow = corr.transpose(1, 2).reshape(nb, 2, h, w)
        flow = self.feature_flow_attn(feat, flow, chunk_elems)
        return self._upsample(flow, feat)


def _state_dict_of(obj: object) -> dict:
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError("gmflow_path: expected a GMFlow checkpoint ({'model': state_dict} or a state_dict)")
    return obj


def load_gmflow(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> GMFlow:
    """The network with the weights at `path` (the authors' {'model': state_dict} file, e.g.
    gmflow_sintel-0c07dcb3.pth, or a bare state_dict), loaded with strict=True, eval mode, frozen."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gmflow_path: no such file '{path}' (the GMFlow checkpoint, e.g. "
                                "gmflow_sintel-0c07dcb3.pth)")
    with torch.device("meta"):  # no random init that the file replaces
        model = GMFlow()
    load_into(model, _state_dict_of(load_tensors(path, "gmflow_path")), path, "gmflow_path", strict=True,
              assign=True)
    return model.to(device).eval().requires_grad_(False)


def write_random_checkpoint(path: Union[str, os.PathLike], seed: int = 0) -> str:
    """Write a random-weight stand-in for gmflow_sintel-0c07dcb3.pth: the published names, shapes and file format
    ({'model': state_dict}, torch.save). Returns the path."""
    path = os.fspath(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GMFlow()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


class GMFlowEstimator:
    """GMFlow behind the `FlowEstimator` interface: src, dst [B, 3, H, W] RGB in 0..255 -> [B, 2, H, W] fp32 flow
    src -> dst, all B pairs in one batched pass on `device`. `bidirectional` returns both directions from one pass
    (as FRESCO computes them). Sizes that are not multiples of 8 * attn_splits are padded (replicate, centred) and
    the flow cropped back; the published code resizes frames to multiples of 64, so it never pads."""

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 attn_splits: int = 2, chunk_elems: int = CHUNK_ELEMS):
        self.model = load_gmflow(path, device)
        self.device = torch.device(device)
        self.attn_splits = attn_splits
        self.chunk_elems = chunk_elems

    @torch.no_grad()
    def _run(self, src: torch.Tensor, dst: torch.Tensor, bidirectional: bool) -> torch.Tensor:
        h, w = src.shape[2:]
        m = 8 * self.attn_splits
        ph, pw = (-h) % m, (-w) % m
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        a, c = (t.to(self.device, torch.float32) for t in (src, dst))
        if ph or pw:
            a, c = F.pad(a, pad, mode="replicate"), F.pad(c, pad, mode="replicate")
        flow = self.model(a, c, attn_splits=self.attn_splits, bidirectional=bidirectional,
                          chunk_elems=self.chunk_elems)
        return flow[:, :, pad[2]:pad[2] + h, pad[0]:pad[0] + w].to(src.device)

    def bidirectional(self, src: torch.Tensor, dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(flow src -> dst, flow dst -> src), each [B, 2, H, W] fp32 on src's device, from one pass."""
        flow = self._run(src, dst, True)
        return flow[:src.shape[0]], flow[src.shape[0]:]

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        return self._run(src, dst, False)
