"""Whole videos: frame I/O (io.py), keyframe selection and batching (keyframes.py), propagation of the stylised
keyframes to the other frames (propagate.py), the resumable renderer (render.py) and its adapter to the one-batch
pipeline (stylize.py). The renderer is imported on first use (`fresco.video.render`), so the I/O helpers stay light."""
from .io import (DEFAULT_FOLDER_FPS, IMAGE_EXTS, VideoInfo, VideoWriter, list_images, make_synthetic_clip, probe,
                 processing_size, read_frames, resize_frame, synthetic_frame)
from .keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes

__all__ = ["DEFAULT_FOLDER_FPS", "IMAGE_EXTS", "VideoInfo", "VideoWriter", "list_images", "make_synthetic_clip",
           "probe", "processing_size", "read_frames", "resize_frame", "synthetic_frame", "Batch", "fixed_keyframes",
           "frame_errors", "plan_batches", "select_keyframes"]
