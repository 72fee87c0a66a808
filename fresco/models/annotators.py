"""ControlNet annotators the published configs use, with weights from a local folder or the Hugging Face cache
(lllyasviel/Annotators): HED written here (the ControlNet 1.1 "ControlNetHED_Apache2" network the published code
runs: five VGG-style blocks, a 1x1 side projection each, the sigmoid of their mean), so no annotator package is
needed for it. Depth (MiDaS DPT-Hybrid, dpt_hybrid-midas-501f0c75.pt) is written here too: fresco.models.midas."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_tensors

ANNOTATORS_REPO = "lllyasviel/Annotators"
HED_FILE = "ControlNetHED.pth"
# ControlNetHED_Apache2's widths and convolutions per block
HED_WIDTHS = (64, 128, 256, 512, 512)
HED_LAYERS = (2, 2, 3, 3, 3)


class _HEDBlock(torch.nn.Module):
    """`layers` 3x3 conv + ReLU (after a 2x2 max-pool when `down`), and a 1x1 projection to one edge channel."""

    def __init__(self, cin: int, cout: int, layers: int):
        super().__init__()
        self.convs = torch.nn.Sequential(*[torch.nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1)
                                           for i in range(layers)])
        self.projection = torch.nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, down: bool = False) -> "tuple[torch.Tensor, torch.Tensor]":
        if down:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNetwork(torch.nn.Module):
    """ControlNetHED_Apache2 with the published parameter names (norm, block1..5.convs.i, block1..5.projection), so
    ControlNetHED.pth loads strictly; `widths` other than HED_WIDTHS only for random-weight stand-ins.
    forward: [B, 3, H, W] RGB 0..255 -> five [B, 1, H/2^i, W/2^i] edge logits."""

    def __init__(self, widths: Sequence[int] = HED_WIDTHS):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths: five block widths, got {list(widths)}")
        self.norm = torch.nn.Parameter(torch.zeros(1, 3, 1, 1))
        cin = 3
        for i, (w, n) in enumerate(zip(widths, HED_LAYERS), start=1):
            setattr(self, f"block{i}", _HEDBlock(cin, w, n))
            cin = w

    def forward(self, x: torch.Tensor) -> "list[torch.Tensor]":
        h = x - self.norm
        out = []
        for i in range(1, 6):
            h, p = getattr(self, f"block{i}")(h, down=i > 1)
            out.append(p)
        return out

    @staticmethod
    def widths_of(state: dict) -> "tuple[int, ...]":
        """The block widths a state dict was saved with."""
        try:
            return tuple(int(state[f"block{i}.convs.0.weight"].shape[0]) for i in range(1, 6))
        except KeyError as e:
            raise ValueError(f"not a ControlNetHED state dict (missing {e.args[0]})") from None


def annotator_file(name: str, annotator_path: Optional[str] = None) -> Path:
    """The path of annotator weight file `name`: in `annotator_path` (a folder) when given, else from the Hugging
    Face cache of lllyasviel/Annotators (downloaded only when online and HF_HUB_OFFLINE is not set)."""
    if annotator_path is not None:
        p = Path(annotator_path) / name
        if not p.is_file():
            raise RuntimeError(f"annotator_path: '{annotator_path}' has no {name} (a folder with the "
                               f"{ANNOTATORS_REPO} files is expected)")
        return p
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(ANNOTATORS_REPO, name))
    except Exception as e:  # offline miss, network error, missing repo: all mean "not available"
        from huggingface_hub.constants import HF_HUB_CACHE
        where = Path(HF_HUB_CACHE) / ("models--" + ANNOTATORS_REPO.replace("/", "--"))
        raise RuntimeError(f"annotator_path: {name} is not in the Hugging Face cache ({where}) and could not be "
                           f"fetched ({type(e).__name__}); pass --annotator-path (a folder with {name}, e.g. "
                           f"FRESCO's src/ControlNet/annotator/ckpts) or download it: huggingface-cli download "
                           f"{ANNOTATORS_REPO} {name}") from e


class HEDDetector:
    """The published HEDdetector: [H, W, 3] uint8 RGB -> [H, W] uint8 soft edges (five side outputs resized
    bilinearly to the frame, averaged, sigmoid, * 255)."""

    def __init__(self, network: HEDNetwork, device: Union[str, torch.device] = "cpu"):
        self.net = network.float().to(device).eval().requires_grad_(False)
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, annotator_path: Optional[str] = None, device: Union[str, torch.device] = "cpu"
                        ) -> "HEDDetector":
        path = annotator_file(HED_FILE, annotator_path)
        state = load_tensors(path, "annotator_path")
        net = HEDNetwork(HEDNetwork.widths_of(state))
        net.load_state_dict(state, strict=True)
        return cls(net, device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image: expected [H, W, 3] uint8 RGB, got {image.dtype} {list(image.shape)}")
        h, w = image.shape[:2]
        x = torch.from_numpy(image.copy()).float().to(self.device).permute(2, 0, 1)[None]
        edges = [e[0, 0].float().cpu().numpy() for e in self.net(x)]
        edges = np.stack([cv2.resize(e, (w, h), interpolation=cv2.INTER_LINEAR) for e in edges], axis=2)
        edge = 1 / (1 + np.exp(-np.mean(edges, axis=2).astype(np.float64)))
        return (edge * 255.0).clip(0, 255).astype(np.uint8)


def hed_state_dict(widths: Sequence[int] = (4, 8, 8, 8, 8), seed: int = 0) -> dict:
    """Random weights with the published parameter names (a stand-in for ControlNetHED.pth)."""
    g = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = HEDNetwork(widths)
        with torch.no_grad():
            net.norm.uniform_(100, 150)
    finally:
        torch.random.set_rng_state(g)
    return net.state_dict()
