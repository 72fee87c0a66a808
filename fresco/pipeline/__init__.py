"""One keyframe batch: `FrescoPipeline` (core.py) with FRESCO's attention processors (attention.py), decoder-feature
optimisation hooks (optimization.py), per-resolution batch inputs (inputs.py), ControlNet condition maps
(control.py) and the published FreeU (freeu.py); the published prompts are fresco.prompts. Importing this package
does not import diffusers (the models are loaded on demand)."""
from ..settings import FrescoSettings, scaled_schedule
from .core import FrescoOutput, FrescoPipeline
from .freeu import PUBLISHED_FREEU

__all__ = ["FrescoPipeline", "FrescoOutput", "FrescoSettings", "scaled_schedule", "PUBLISHED_FREEU"]
