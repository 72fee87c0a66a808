"""Rendering beyond one process on Ray: fleets of videos (`render_many`), one long video across several actors by a
step wavefront (`render_wavefront`), and propagation fanned out over key gaps. Needs the `ray` extra
(`pip install 'fresco[ray]'`); `import fresco.distributed` itself does not import Ray."""
from __future__ import annotations

__all__ = ["Job", "JobResult", "load_jobs", "render_many", "render_wavefront", "connect"]


def __getattr__(name):
    if name in ("Job", "JobResult", "load_jobs", "render_many"):
        from . import fleet
        return getattr(fleet, name)
    if name == "render_wavefront":
        from .wavefront import render_wavefront
        return render_wavefront
    if name == "connect":
        from .cluster import connect
        return connect
    raise AttributeError(f"module 'fresco.distributed' has no attribute {name!r}")
