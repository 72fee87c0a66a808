"""fresco.memory (peak GPU memory traced on meta tensors), `fresco plan` and the render's GPU preflight on CPU."""
import pytest
import torch

from fresco import cli
from fresco import memory as M
from fresco.plan import check_plan, parse_memory
from fresco.settings import FrescoSettings


def test_tracker_counts_live_storages_once_and_frees_them():
    tr = M.StorageTracker()
    x = torch.empty(1000, device="meta")  # made before the trace: not counted, nor its views
    with M.tracing(tr):
        a = x * 2                          # 4000 B -> 4096 (512-byte blocks)
        v = a.view(10, 100).t()            # a view: the same storage
        b = a + 1
        del a, v
        c = b * 3                          # a's storage is free again: b and c live
        d = b + c                          # three live
        del b, c, d
        e = x.t()                          # a view of a storage made before the trace
    assert tr.peak == 3 * 4096 and e.shape == (1000,)
    assert tr.current == 0  # swept at the last op


def test_tracker_cuda_attention_is_not_a_dense_matrix():
    q = torch.empty(2, 8, 4096, 40, device="meta", dtype=torch.float16)
    tr = M.StorageTracker()
    with M.tracing(tr):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    # flash: the output [2, 8, 4096, 40] fp16, the fp32 log-sum-exp [2, 8, 4096] and two small RNG-state tensors;
    # no [4096, 4096] scores
    out_lse = 2 * 8 * 4096 * 40 * 2 + 2 * 8 * 4096 * 4
    assert out_lse <= tr.peak <= out_lse + 2 * M.BLOCK


OPT_ROWS = [r for r in M.MEASURED if r[1] == "optimize"]


@pytest.mark.parametrize("which", ["baseline", "reference"])
@pytest.mark.parametrize("row", [pytest.param(r, id=r[0], marks=() if i == 0 else pytest.mark.slow)
                                 for i, r in enumerate(OPT_ROWS)])
def test_predictor_within_15_percent_of_the_h100_optimisation_rows(row, which):
    """shared/GPU-BASELINE.md: optimisation of decoder layer 3 alone, reference implementation, peak allocated."""
    case, kind, n, c, size, image, sp, tp, measured = row
    pred = M.trace_optimize(n, c, size, image, spatial=sp, temporal=tp, which=which) / M.MiB
    assert 0.85 <= pred / measured <= 1.15, (case, which, pred, measured)


@pytest.mark.slow
def test_predictor_within_15_percent_of_the_h100_unet_forward():
    (row,) = [r for r in M.MEASURED if r[1] == "unet"]
    pred = M.trace_unet_forward(row[2], row[4]) / M.MiB
    assert 0.85 <= pred / row[-1] <= 1.15, pred


def test_fused_optimisation_holds_no_gram_matrix():
    # B = 16, hw = 4096: one dense fp32 Gram is 1 GiB; the fused trace stays far below it
    fused = M.trace_optimize(8, 640, (64, 64), (512, 512), which="fused")
    ref = M.trace_optimize(8, 640, (64, 64), (512, 512), which="reference")
    assert fused < 2 * M.GiB < 4 * M.GiB < ref


@pytest.fixture
def no_headroom(monkeypatch):
    monkeypatch.setattr(M, "HEADROOM_BYTES", 0)
    monkeypatch.setattr(M, "HEADROOM_FRACTION", 0.0)


# two Adam iterations: the peak of the optimisation is reached in its second iteration (Adam's state exists then)
FAST = FrescoSettings(backend="fused", opt_iters=2)


def _tiny_plan(n, chunk, backend="fused"):
    return M.plan_batch((64, 64), n, settings=FAST, backend=backend, tiny=True, vae_chunk=chunk)


@pytest.mark.slow
def test_plan_stages_grow_with_the_batch_and_the_vae_chunk():
    p4, p8 = _tiny_plan(4, 4), _tiny_plan(8, 1)
    assert set(p4.vae) == {1, 2, 4} and p4.vae_chunk == 4
    assert p4.vae[4]["decode"] > p4.vae[1]["decode"]
    for k in ("reference pass", "unet+controlnet", "optimisation"):
        assert p8.stages[k] > p4.stages[k] > 0
    assert p4.weights == p8.weights > 0 and p8.total == p8.weights + max(p8.all_stages().values())
    assert _tiny_plan(4, 1, "reference").stages["optimisation"] > p4.stages["optimisation"]


@pytest.mark.slow
def test_preflight_refuses_a_batch_that_cannot_fit_naming_one_that_does(no_headroom):
    s = FAST.replace(vae_chunk=1)
    p3, p8 = _tiny_plan(3, 1), _tiny_plan(8, 1)
    device = (p3.total + p8.total) // 2  # between the two: 8 cannot fit, some size from 3 up can
    with pytest.raises(ValueError, match=r"^batch_size: 8 keyframes at 64x64 need about .* --batch-size (\d+) fits"
                       ) as e:
        check_plan((64, 64), 8, device, settings=s, backend="fused", tiny=True, controlnet=True)
    fits = int(e.value.args[0].split("--batch-size ")[1].split()[0])
    assert 3 <= fits < 8
    assert _tiny_plan(fits, 1).fits(device) and not _tiny_plan(fits + 1, 1).fits(device)


@pytest.mark.slow
def test_preflight_picks_the_largest_vae_chunk_that_fits(no_headroom):
    s = FAST.replace(vae_chunk=8)
    assert check_plan((64, 64), 8, 10 * M.GiB, settings=s, backend="fused", tiny=True, controlnet=True) == 8
    plan = M.BatchPlan((512, 512), 8, "fused", "float16", 8, weights=100, stages={"optimisation": 50},
                       vae={1: dict(encode=10, decode=20), 2: dict(encode=20, decode=40), 4: dict(encode=40,
                            decode=80), 8: dict(encode=80, decode=160)})
    assert plan.total == 260 and plan.peak_stage == "vae decode (chunk 8)"
    assert [plan.largest_vae_chunk(d) for d in (260, 259, 180, 150, 149)] == [8, 4, 4, 2, None]
    assert plan.total_at(1) == 150


@pytest.mark.slow
def test_fresco_plan_prints_the_table(capsys):
    assert cli.main(["plan", "--size", "64x64", "--tiny", "--batch-size", "4", "--device-memory", "2GB"]) == 0
    out = capsys.readouterr().out
    for stage in ("weights", "vae encode (chunk 4)", "reference pass", "unet+controlnet", "optimisation",
                  "vae decode (chunk 4)", "total"):
        assert f"| {stage}" in out
    assert "fits: yes" in out


@pytest.mark.parametrize("argv,key", [(["--size", "65x64"], "--size"), (["--size", "512x512", "--device-memory",
                                      "24XB"], "--device-memory"), ([], "plan"), (["--size", "512x512",
                                      "--batch-size", "1"], "--batch-size"),
                                      (["--size", "512x512", "--batch-size", "2"], "--batch-size: must be in [3, 256]"),
                                      (["missing.mp4"], ""),
                                      (["--size", "64x64", "--device-memory", "9" * 400 + "GB"], "--device-memory"),
                                      (["--size", "64x64", "--device-memory", "0.0000001"], "--device-memory"),
                                      (["--size", "1048576x1048576"], "--size: both sides positive multiples of 64 "
                                                                      "up to 16384")])
def test_fresco_plan_bad_input_is_one_line_exit_2(capsys, argv, key):
    assert cli.main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fresco: error: {key}")


def test_parse_memory():
    assert parse_memory("24GB") == parse_memory("24 GiB") == 24 * 2 ** 30
    assert parse_memory("11500MiB") == 11500 * 2 ** 20


@pytest.mark.slow
def test_render_preflight_on_cuda_uses_the_plan(tmp_path, monkeypatch, no_headroom):
    """The render's preflight (check_render) with a CUDA device and its free memory injected: the plan decides, before any model."""
    from fresco.config import RenderConfig
    from fresco.video import make_synthetic_clip, probe
    from fresco.video import preflight
    clip = make_synthetic_clip(tmp_path / "clip.mp4", 6, (64, 64))
    cfg = RenderConfig(file_path=str(clip), save_path=str(tmp_path / "o"), prompt="x", size="64x64", batch_size=4,
                       sd_path="tiny-random", opt_iters=2, vae_chunk=4, backend="fused")
    info = probe(clip)
    cuda = torch.device("cuda")
    loaded = []
    monkeypatch.setattr("fresco.models.sd.load_components", lambda *a, **k: loaded.append(1))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 * M.GiB, 80 * M.GiB))
    local_only, out = preflight.check_render(cfg, info, (64, 64), cuda, True)
    assert out.vae_chunk == 4 and local_only is False
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (M.MiB, 80 * M.GiB))
    with pytest.raises(ValueError, match=r"^batch_size: 4 keyframes at 64x64 need about .* no batch size fits"):
        preflight.check_render(cfg, info, (64, 64), cuda, True)
    assert not loaded and not (tmp_path / "o").exists()
