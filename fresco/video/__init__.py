"""Whole videos: frame I/O (io.py), keyframe selection and batching (keyframes.py), propagation of the stylised
keyframes to the other frames (propagate.py, patch_propagation.py), the resumable renderer (render.py: the stages in
order) with where its work runs (runner.py), its input stream and key plan (source.py), its adapter to the
one-batch pipeline (stylize.py), its output folder (outdir.py: lock, state, manifest, fingerprint; pngs.py) and the
checks it runs before loading anything (preflight.py: device, model, memory). The renderer is imported on first use
(`fresco.video.render`), so the I/O helpers stay light."""
from .io import (DEFAULT_FOLDER_FPS, IMAGE_EXTS, VideoInfo, VideoWriter, list_images, make_synthetic_clip, probe,
                 processing_size, read_frames, read_timed_frames, resize_frame, synthetic_frame)
from .keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes

__all__ = ["DEFAULT_FOLDER_FPS", "IMAGE_EXTS", "VideoInfo", "VideoWriter", "list_images", "make_synthetic_clip",
           "probe", "processing_size", "read_frames", "read_timed_frames", "resize_frame", "synthetic_frame", "Batch",
           "fixed_keyframes", "frame_errors", "plan_batches", "select_keyframes"]
