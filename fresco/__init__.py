"""fresco: the FRESCO video-to-video pipeline on diffusers (in progress; the ops live in fresco_kernels)."""
__version__ = "0.1.0"
