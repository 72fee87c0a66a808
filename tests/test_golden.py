"""Golden outputs: a short render with the tiny random-weight model through `fresco.video.render`, and one
FrescoPipeline call with every constraint on (both backends), compared with arrays stored in tests/golden/. A
refactor that is meant to keep behaviour must keep these outputs.

They are compared with a stated tolerance, not as pinned bytes: float results depend on the vector ISA (ATen's
AVX2 / AVX-512 kernels, oneDNN, BLAS) and on the thread count, and the L1 feature optimisation amplifies rounding.
Tolerances (`_close`): images (uint8) may differ by at most IMAGE_MEAN levels on average and IMAGE_P99 levels at
the 99th percentile of pixels; float arrays by at most FLOAT_MEAN x their mean magnitude on average. What is
exact stays exact: the keyframe indices and the batch plan. Re-record (after a change meant to alter the output)
with FRESCO_GOLDEN_RECORD=1; the input clip is written as PNG frames and the render's output as a PNG folder, so no
video codec enters these arrays."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fresco.config import RenderConfig  # noqa: E402
from fresco.video import make_synthetic_clip, read_frames, synthetic_frame  # noqa: E402
from _utils import load_png as _load_png  # noqa: E402
from fresco.video.render import render  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
IMAGE_MEAN, IMAGE_P99 = 1.0, 8
FLOAT_MEAN = 0.05

# one intra-op thread (conftest): the stored arrays were recorded at one thread, so the tolerance only has to cover
# the vector ISA
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # slow: a whole render and two batches


def _close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, f"{name}: {got.shape} {got.dtype} vs {want.shape} " \
                                                                f"{want.dtype}"
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if got.dtype == np.uint8:
        mean, p99 = d.mean(), np.percentile(d, 99)
        assert mean <= IMAGE_MEAN and p99 <= IMAGE_P99, f"{name}: mean |diff| {mean:.3f} (<= {IMAGE_MEAN}), 99th " \
                                                        f"percentile {p99:.1f} (<= {IMAGE_P99}) levels"
    else:
        scale = np.abs(want).mean() + 1e-12
        assert d.mean() <= FLOAT_MEAN * scale, f"{name}: mean |diff| {d.mean():.3g} > {FLOAT_MEAN} x {scale:.3g}"


def _check(file: str, arrays: dict) -> None:
    path = GOLDEN / file
    if os.environ.get("FRESCO_GOLDEN_RECORD"):
        GOLDEN.mkdir(exist_ok=True)
        np.savez_compressed(path, **arrays)
        pytest.skip(f"recorded {path}")
    want = np.load(path)
    assert sorted(want.files) == sorted(arrays)
    for k, v in arrays.items():
        _close(f"{file}:{k}", v, want[k])


def test_golden_render(tmp_path):
    clip = make_synthetic_clip(tmp_path / "clip", 24, (64, 64), fps=24)
    cfg = RenderConfig(file_path=str(clip), save_path=str(tmp_path / "out"), prompt="a watercolor painting",
                       sd_path="tiny-random", size="64x64", num_inference_steps=4, num_warmup_steps=1,
                       end_opt_step=2, opt_iters=2, mininterv=4, maxinterv=4, batch_size=4, output="frames",
                       device="cpu", propagation="flow")
    result = render(cfg, progress=False)
    # exact: the keyframe selection and the batch plan (the published final-batch rule for N = 4)
    assert result.keys == [0, 4, 8, 12, 16, 20]
    assert [b.frames for b in result.batches] == [(0, 4, 8), (0, 8, 12, 16, 20)]
    keys = np.stack([_load_png(result.keys_dir / f"{k:05d}.png") for k in result.keys])
    frames = np.stack(list(read_frames(result.video)))
    assert frames.shape == (24, 64, 64, 3)
    _check("render.npz", {"keys": keys, "frames": frames})


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_golden_pipeline(backend):
    from fresco.pipeline import FrescoPipeline
    pipe = FrescoPipeline.tiny(seed=0)
    frames = np.stack([synthetic_frame(3 * i, size=(64, 64)) for i in range(4)])
    bg = torch.rand(4, 64, 64, generator=torch.Generator().manual_seed(3))
    out = pipe(frames, "a painting of shapes", num_inference_steps=6, opt_iters=2, seed=1, background=bg,
               backend=backend, return_anchor_record=True)
    _check(f"pipeline-{backend}.npz", {"images": out.images, "latents": out.latents.numpy(),
                                       "anchor_record": np.stack([r.numpy() for r in out.anchor_record])})
