"""ControlNet condition images from the input frames, as the published run script computes them: Canny (OpenCV,
thresholds 50/100 by default), HED (fresco.models.annotators) and depth (MiDaS DPT-Hybrid, fresco.models.midas), both
with the lllyasviel/Annotators weights from a folder (`annotator_path`) or the Hugging Face cache. Nothing is
downloaded when HF_HUB_OFFLINE=1."""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from ..models.annotators import HEDDetector
from ..models.midas import DepthDetector
from ..models.sd import CONTROL_TYPES


def canny(frames: np.ndarray, low: int = 50, high: int = 100) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W] uint8 edge maps (OpenCV Canny on the RGB image, as the published
    CannyDetector does)."""
    import cv2
    return np.stack([cv2.Canny(f, low, high) for f in frames])


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
    if control_type not in CONTROL_TYPES:
        raise ValueError(f"control_type: one of {CONTROL_TYPES}, got {control_type!r}")
    if control_type == "canny":
        maps = canny(frames, *canny_thresholds)
    elif control_type == "hed":
        det = _hed(annotator_path, str(device or "cpu"))
        maps = np.stack([det(f) for f in frames])
    else:
        det = _depth(annotator_path, str(device or "cpu"))
        maps = np.stack([det(f) for f in frames])
    return np.repeat(maps[..., None], 3, axis=-1)
