"""ControlNet condition images from the input frames, as the published run script computes them: Canny (OpenCV,
thresholds 50/100 by default), HED (fresco.models.annotators) and depth (MiDaS DPT-Hybrid, fresco.models.midas), both
with the lllyasviel/Annotators weights from a folder (`annotator_path`) or the Hugging Face cache; and the ControlNet
1.1 inputs that need no further weights: softedge (the HED map, which the 1.1 softedge model takes) and scribble (the
HED map made into bold binary strokes, as the 1.1 scribble annotator does). Nothing is downloaded when
HF_HUB_OFFLINE=1."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from ..addon_specs import PREPROCESSORS
from ..models.annotators import HEDDetector
from ..models.midas import DepthDetector


def canny(frames: np.ndarray, low: int = 50, high: int = 100) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W] uint8 edge maps (OpenCV Canny on the RGB image, as the published
    CannyDetector does)."""
    import cv2
    return np.stack([cv2.Canny(f, low, high) for f in frames])


def scribble(edges: np.ndarray, threshold: int = 127, sigma: float = 3.0) -> np.ndarray:
    """[N, H, W] uint8 soft edge maps -> [N, H, W] uint8 binary strokes (0/255): the edges above `threshold`, blurred
    (Gaussian `sigma`) and kept wherever the blur is above 4/255, so thin edges become bold scribbles."""
    import cv2
    out = []
    for e in edges:
        strokes = np.where(e > threshold, 255, 0).astype(np.uint8)
        blurred = cv2.GaussianBlur(strokes, (0, 0), sigma)
        out.append(np.where(blurred > 4, 255, 0).astype(np.uint8))
    return np.stack(out)


@lru_cache(maxsize=4)
def _hed(annotator_path: Optional[str], device: str):
    return HEDDetector.from_pretrained(annotator_path, device=device)


@lru_cache(maxsize=4)
def _depth(annotator_path: Optional[str], device: str):
    return DepthDetector.from_pretrained(annotator_path, device=device)


def control_maps(frames: np.ndarray, control_type: str, annotator_path: Optional[str] = None,
                 canny_thresholds: Tuple[int, int] = (50, 100), device=None) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W, 3] uint8 condition images for the ControlNet of `control_type`
    (the published map replicated to three channels; the pipeline divides by 255, as published)."""
    if control_type not in PREPROCESSORS:
        raise ValueError(f"control_type: one of {PREPROCESSORS}, got {control_type!r}")
    if control_type == "canny":
        maps = canny(frames, *canny_thresholds)
    elif control_type in ("hed", "softedge", "scribble"):
        det = _hed(annotator_path, str(device or "cpu"))
        maps = np.stack([det(f) for f in frames])
        if control_type == "scribble":
            maps = scribble(maps)
    else:
        det = _depth(annotator_path, str(device or "cpu"))
        maps = np.stack([det(f) for f in frames])
    return np.repeat(maps[..., None], 3, axis=-1)
