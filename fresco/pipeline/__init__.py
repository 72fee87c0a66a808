"""One keyframe batch: `FrescoPipeline` (core.py) with FRESCO's attention processors (attention.py), decoder-feature
optimisation hooks (optimization.py), per-resolution batch inputs (inputs.py) and ControlNet condition maps
(control.py). Importing this package does not import diffusers (the models are loaded on demand)."""
from ..settings import FrescoSettings, scaled_schedule
from .core import FREEU, PUBLISHED_ADDED_PROMPT, PUBLISHED_NEGATIVE_PROMPT, FrescoOutput, FrescoPipeline

__all__ = ["FrescoPipeline", "FrescoOutput", "FrescoSettings", "scaled_schedule", "FREEU", "PUBLISHED_ADDED_PROMPT",
           "PUBLISHED_NEGATIVE_PROMPT"]
