"""Numerics helpers shared by the op tests."""
import torch


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_lowp_close(fused_lp: torch.Tensor, ref_lp: torch.Tensor, ref_fp32: torch.Tensor, name: str, atol: float = 1e-6):
    """Low precision rule: the fused result's error vs the fp32 reference is at most 2x the reference's own
    low-precision error (+ a tiny atol for the case where the reference happens to be exact)."""
    assert not torch.isnan(fused_lp).any(), f"{name}: NaN in the fused output"
    e_fused = max_err(fused_lp, ref_fp32)
    e_ref = max_err(ref_lp, ref_fp32)
    assert e_fused <= 2 * e_ref + atol, f"{name}: fused low-precision error {e_fused:.3g} > 2 x reference's {e_ref:.3g}"


def load_png(path):
    """A keyframe PNG the renderer wrote, as RGB uint8 (the renderer reads its own through fresco.video.safe_fs)."""
    from fresco.video.pngs import decode_png
    return decode_png(path.read_bytes(), path)
