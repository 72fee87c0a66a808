"""ControlNet condition images from the input frames: Canny (OpenCV, thresholds 50/100 as published) always; HED and
depth through the `controlnet_aux` annotators when the user has that package and its weights locally (a clear error
otherwise: nothing is downloaded here)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..models.sd import CONTROL_TYPES


def canny(frames: np.ndarray, low: int = 50, high: int = 100) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W] uint8 edge maps (OpenCV Canny on the RGB image, as ControlNet's
    CannyDetector does)."""
    import cv2
    return np.stack([cv2.Canny(f, low, high) for f in frames])


def _annotator(control_type: str, annotator_path: Optional[str]):
    try:
        import controlnet_aux
    except ImportError as e:
        raise RuntimeError(f"control_type={control_type!r} needs the annotator package controlnet_aux with its "
                           "weights available locally (pip install controlnet-aux), or pass control_images "
                           "yourself, or use control_type='canny'") from e
    if annotator_path is None:
        raise RuntimeError(f"control_type={control_type!r}: pass annotator_path (a local folder with the "
                           "lllyasviel/Annotators weights); this package does not download them")
    if control_type == "hed":
        return controlnet_aux.HEDdetector.from_pretrained(annotator_path)
    return controlnet_aux.MidasDetector.from_pretrained(annotator_path)


def control_maps(frames: np.ndarray, control_type: str, annotator_path: Optional[str] = None) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W, 3] uint8 condition images for the ControlNet of `control_type`."""
    if control_type not in CONTROL_TYPES:
        raise ValueError(f"control_type: one of {CONTROL_TYPES}, got {control_type!r}")
    if control_type == "canny":
        edges = canny(frames)
        return np.repeat(edges[..., None], 3, axis=-1)
    det = _annotator(control_type, annotator_path)
    h, w = frames.shape[1:3]
    out = []
    for f in frames:
        m = np.asarray(det(f, detect_resolution=min(h, w), image_resolution=min(h, w), output_type="np"))
        if m.ndim == 2:
            m = np.repeat(m[..., None], 3, axis=-1)
        if m.shape[:2] != (h, w):
            import cv2
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(m.astype(np.uint8))
    return np.stack(out)
