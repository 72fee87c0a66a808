"""`fresco ui`: a Gradio web UI over the renderer (needs the `[ui]` extra). fresco.ui.form derives the settings
form from the render settings, fresco.ui.jobs runs the steps, fresco.ui.app lays out the page."""
from __future__ import annotations


def launch(*args, **kwargs):
    """Serve the web UI (see fresco.ui.app.launch); imports Gradio only when called."""
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise RuntimeError("the web UI needs Gradio: pip install 'fresco[ui]'") from e
    from .app import launch as _launch
    return _launch(*args, **kwargs)
