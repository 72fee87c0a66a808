"""The public API's backend contract (issue 9): every public function of fresco_kernels that has a fused path takes
`backend: Optional[str] = None` (keyword-only; None = the global switch), and one constant lists the names."""
import inspect

import fresco_kernels as fk

# single-implementation helpers (plain torch, no fused path: nothing for a backend to choose) and the switch itself
NO_BACKEND = {
    "coords_grid", "resample_for_loss", "resample_for_attention", "dilate", "normalize_features", "adain",
    "segment_mask", "cross_frame_keep", "get_backend", "set_backend", "use_backend", "cpp_status", "cpu_impls",
    "flow_warp_reference", "warp_consistency_loss_reference", "gram_loss_reference", "trajectory_attention_reference",
    "cross_frame_attention_reference", "flow_correspondence_reference", "patch_synthesis_reference",
}


def test_every_public_function_with_a_fused_path_takes_backend_none():
    functions = [n for n in fk.__all__ if callable(getattr(fk, n)) and n != "BACKENDS"]
    assert set(NO_BACKEND) <= set(functions), set(NO_BACKEND) - set(functions)
    for name in functions:
        if name in NO_BACKEND:
            continue
        p = inspect.signature(getattr(fk, name)).parameters.get("backend")
        assert p is not None, f"{name} has no backend= parameter"
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None, f"{name}: backend must be kw-only, None"


def test_backend_names_are_one_constant():
    assert fk.BACKENDS == ("fused", "reference")
    before = fk.get_backend()
    for name in fk.BACKENDS:
        with fk.use_backend(name):
            assert fk.get_backend() == name
    assert fk.get_backend() == before
