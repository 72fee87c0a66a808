"""fresco_kernels: FRESCO's hot spots as torch ops in namespace `fresco` (Triton on CUDA, C++ on CPU), each with a
plain-PyTorch reference selectable by `backend="reference"` or `set_backend("reference")`."""
from __future__ import annotations

from ._config import BACKENDS, get_backend, set_backend, use_backend
from ._library import CPU_IMPL, cpp_status
# --- ops (one import line per op folder) ---
from .flow_warp import coords_grid, flow_warp, flow_warp_reference
from .warp_loss import warp_consistency_loss, warp_consistency_loss_reference
from .occlusion import dilate, forward_backward_check, occlusion_from_flows, resample_for_attention, resample_for_loss
from .gram_loss import gram_loss, gram_loss_reference, normalize_features
from .optimize import adain, optimize_features
from .trajectory_attention import segment_mask, trajectory_attention, trajectory_attention_reference
from .cross_frame import cross_frame_attention, cross_frame_attention_reference, cross_frame_keep, cross_frame_kv
from .correspondence import (correspondence_pair, flow_correspondence, flow_correspondence_at_scale,
                             flow_correspondence_reference)
from .patch_synthesis import patch_synthesis, patch_synthesis_reference

__version__ = "0.1.0"


def cpu_impls() -> dict:
    """Which implementation serves each `fresco::` op on CPU: "cpp" (compiled) or "reference" (Python)."""
    return dict(CPU_IMPL)


__all__ = [
    "BACKENDS", "get_backend", "set_backend", "use_backend", "cpp_status", "cpu_impls",
    "flow_warp", "flow_warp_reference", "coords_grid",
    "warp_consistency_loss", "warp_consistency_loss_reference",
    "forward_backward_check", "occlusion_from_flows", "resample_for_loss", "resample_for_attention", "dilate",
    "gram_loss", "gram_loss_reference", "normalize_features",
    "optimize_features", "adain",
    "trajectory_attention", "trajectory_attention_reference", "segment_mask",
    "cross_frame_keep", "cross_frame_kv", "cross_frame_attention", "cross_frame_attention_reference",
    "flow_correspondence", "flow_correspondence_reference", "correspondence_pair", "flow_correspondence_at_scale",
    "patch_synthesis", "patch_synthesis_reference",
]
