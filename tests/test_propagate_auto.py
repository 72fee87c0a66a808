"""propagation "auto" (fresco.video.propagate): per gap it keeps exactly the patch synthesis's or the flow blend's
frames, the one whose rebuilt source frames have the lower error (logged per gap), and the rebuilt-source channels
the patch method fuses alongside its style are the key's source re-assembled (zero error on a still clip)."""
import numpy as np
import torch

from fresco.video import synthetic_frame
from fresco.video.patch_propagation import PatchParams, patch_gap
from fresco.video.propagate import PROPAGATION_METHODS, choose_by_rebuild, propagate, rebuild_error

H = W = 32
SMALL = PatchParams(levels=2, em_iters=1)


def zero_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return torch.zeros(src.shape[0], 2, *src.shape[2:])


def run(frames, keys, stylised, method, log=None):
    return list(propagate(iter(frames), keys, lambda k: stylised[k], zero_flow, method=method, patch_params=SMALL,
                          auto_log=log))


def test_auto_is_declared_and_chooses_by_the_lower_error():
    assert "auto" in PROPAGATION_METHODS
    assert choose_by_rebuild(1.0, 2.0) == "patch" and choose_by_rebuild(3.0, 2.0) == "flow"
    assert choose_by_rebuild(2.0, 2.0) == "patch"  # a tie keeps patch synthesis
    x = torch.zeros(3, 4, 4)
    assert rebuild_error(x, x) == 0 and rebuild_error(x + 2, x) == 12.0  # summed over RGB, mean over pixels


def test_auto_keeps_one_method_per_gap_as_logged():
    frames = [synthetic_frame(i * 3, size=(W, H)) for i in range(9)]  # a moving texture: the zero flow is wrong
    rng = np.random.default_rng(0)
    stylised = {k: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for k in (0, 4, 8)}
    log: list = []
    auto = run(frames, [0, 4, 8], stylised, "auto", log)
    patch = run(frames, [0, 4, 8], stylised, "patch")
    flow = run(frames, [0, 4, 8], stylised, "flow")
    assert [g[0] for g in log] == [0, 4] and len(auto) == 9
    for a, choice, err_p, err_f in log:
        assert choice == choose_by_rebuild(err_p, err_f) and err_p >= 0 and err_f > 0
        ref = patch if choice == "patch" else flow
        for i in range(a + 1, a + 4):
            assert np.array_equal(auto[i], ref[i])
    for k in stylised:
        assert np.array_equal(auto[k], stylised[k])


def test_patch_rebuilt_source_of_a_still_clip_is_exact():
    src = torch.from_numpy(synthetic_frame(0, size=(W, H))).permute(2, 0, 1).float()
    style = torch.rand(3, H, W) * 255
    outs = list(patch_gap([src, src], src, style, src, style, zero_flow, SMALL, with_source=True))
    assert len(outs) == 2 and outs[0].shape == (6, H, W)
    for o in outs:
        assert rebuild_error(o[3:], src) < 1.0
