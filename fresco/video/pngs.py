"""The PNG files of a render, as bytes for the output folder's one write path (fresco.video.outdir.State.write):
keyframes encoded and read back (RGB uint8), and the preview sheet (input keyframes above, their stylised versions
below)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def png_bytes(img: np.ndarray) -> bytes:
    """The RGB uint8 image `img` encoded as a PNG."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode a {img.shape} image as PNG")
    return buf.tobytes()


def decode_png(data: bytes, path: Path) -> np.ndarray:
    """The RGB uint8 image of the keyframe PNG `data` (read from `path`); an undecodable one is an error that says
    how to recover."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise FileNotFoundError(f"keyframe '{path}' is missing or unreadable; re-run with --overwrite")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def preview_png(sources: list[np.ndarray], outputs: list[np.ndarray], height: int = 160) -> bytes:
    """The preview sheet as PNG bytes: input keyframes on the top row, their stylised versions below."""
    def row(imgs):
        scaled = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height),
                             interpolation=cv2.INTER_AREA) for im in imgs]
        return np.concatenate(scaled, axis=1)
    return png_bytes(np.concatenate([row(sources), row(outputs)], axis=0))
