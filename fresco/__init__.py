"""fresco: the FRESCO video-to-video pipeline on diffusers (the ops live in fresco_kernels).

`fresco.FrescoPipeline` (one keyframe batch, fresco.pipeline) is imported on first use, so `import fresco` (the
CLI, the video tools) does not import diffusers."""
__version__ = "0.1.0"
__all__ = ["FrescoPipeline", "FrescoOutput"]


def __getattr__(name):
    if name in __all__:
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'fresco' has no attribute {name!r}")
