"""benchmarks.propagation_quality: the procedural clips move and are reproducible, the style is deterministic and
draws dark edges, the scoring is right on known inputs, and the command rejects bad arguments (exit 2)."""
import json

import numpy as np
import torch
import pytest

from benchmarks import propagation_quality as pq


@pytest.mark.parametrize("clip", pq.CLIPS)
def test_clips_are_reproducible_and_move(clip):
    a = pq.make_clip(clip, 48, n=4)
    b = pq.make_clip(clip, 48, n=4)
    assert len(a) == 4 and a[0].shape == (48, 48, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.abs(a[3].astype(int) - a[0].astype(int)).mean() > 5  # real motion between frames


def test_seed_changes_the_textures():
    a, b = pq.make_clip("crossing", 48, n=2), pq.make_clip("crossing", 48, n=2, seed=2)
    assert not np.array_equal(a[0], b[0])


@pytest.mark.slow
def test_patch_and_auto_beat_the_flow_blend_on_a_small_clip():
    """A regression guard for the propagation methods (the full benchmark runs at 128², 61 frames): at 64² over 21
    frames of the crossing clip, patch synthesis beats the flow blend and is nearly as sharp as the target,
    non-local means is not below the blend, and `auto` (patch and non-local means mixed) beats all (measured at stop 38:
    flow 22.03 dB, sharpness 0.52; patch 22.20 dB, 0.87; nlmeans 22.17 dB, 0.69; auto 22.69 dB, 0.79; stop 34's
    `auto`, with the flow blend as its second candidate, 22.51 dB. The blend of stop 33, with hard occlusion masks and
    the direct flow alone, scored 20.76 dB)."""
    by = {r["method"]: r for r in pq.evaluate("crossing", 64, 10, ["flow", "patch", "nlmeans", "auto"], n=21)}
    assert by["patch"]["psnr"] >= by["flow"]["psnr"] + 0.1
    assert by["nlmeans"]["psnr"] >= by["flow"]["psnr"] and by["nlmeans"]["sharpness"] > by["flow"]["sharpness"]
    assert by["auto"]["psnr"] >= by["patch"]["psnr"] + 0.1
    assert by["flow"]["psnr"] >= 21.5  # the error-weighted blend of both flows (20.76 dB before)
    assert 0.85 <= by["patch"]["sharpness"] <= 1.15 and by["flow"]["sharpness"] < 0.7


def test_style_is_deterministic_with_dark_edges():
    f = pq.make_clip("crossing", 64, n=1)[0]
    s = pq.stylize(f)
    assert np.array_equal(s, pq.stylize(f))
    on_levels = (s % 51 == 0).all(axis=2)  # 6 quantised levels per channel, except the darkened edge pixels
    assert 0.6 < on_levels.mean() < 0.99 and s[~on_levels].max() <= 0.15 * 255 + 1


def test_scores():
    x = np.full((8, 8, 3), 100, np.uint8)
    y = x.copy()
    y[0, 0, 0] = 110
    assert pq.psnr(x, x) == 99.0
    assert abs(pq.psnr(x, y) - 10 * np.log10(255 ** 2 / (100 / 192))) < 1e-9
    assert pq.grad_energy(x) == 0 and pq.grad_energy(y) > 0


def test_evaluate_rows_small():
    rows = pq.evaluate("pan_thin", 48, 4, ["nearest", "flow", "patch"], n=9)
    by = {r["method"]: r for r in rows}
    assert by["flow"]["worst_vs_flow_db"] == 0 and by["nearest"]["psnr"] < 60
    assert set(by["nearest"]) >= {"psnr", "sharpness", "s_per_frame", "worst_vs_flow_db", "warp_x_floor"}
    # temporal stability (fresco.score): nearest-key holds jump at every switch of key, the flow blend is smooth
    assert by["flow"]["warp_x_floor"] < by["nearest"]["warp_x_floor"] and by["target"]["warp_x_floor"] > 0
    # against the target's own changes: the target itself is exact, nearest-key holds are off by more than the blend
    assert by["target"]["temporal_vs_target"] == 0
    assert 0 < by["flow"]["temporal_vs_target"] < by["nearest"]["temporal_vs_target"]


def test_warp_stability_is_fresco_score_on_shared_flows():
    """The benchmark computes the input's flows once per clip; its warp error must stay what `fresco score` reports."""
    from fresco.score import score_frames
    frames = pq.make_clip("pan_thin", 48, n=6)
    out = [pq.stylize(f) for f in frames]
    pairs = pq.input_pairs(frames)
    r = score_frames(frames, out, flow="dis")
    floor = pq.clip_warp_error(frames, pairs)
    assert floor == pytest.approx(r.warp_error_floor_mean, rel=1e-9)
    got = pq.warp_stability(out, pairs, floor)
    assert got["warp_error"] == pytest.approx(r.warp_error_mean, rel=1e-9)
    assert got["warp_x_floor"] == pytest.approx(r.warp_error_mean / r.warp_error_floor_mean, rel=1e-9)


def test_temporal_vs_target_scale():
    """0 for the target, 1 for an output that never changes (a still camera: the flow is zero), a flicker the target
    lacks above 1, and a target that never changes has no scale."""
    rng = np.random.default_rng(0)
    still = [np.full((24, 24, 3), 128, np.uint8)] * 4
    target = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    pairs = pq.input_pairs(still)
    assert pq.temporal_vs_target(target, target, pairs) == 0
    assert pq.temporal_vs_target(still, target, pairs) == pytest.approx(1.0)
    flicker = [np.clip(t.astype(int) + (60 if i % 2 else -60), 0, 255).astype(np.uint8) for i, t in enumerate(target)]
    assert pq.temporal_vs_target(flicker, target, pairs) > 1.0
    assert np.isnan(pq.temporal_vs_target(target, still, pairs))


@pytest.mark.parametrize("argv", [["--size", "8"], ["--clips", "nope"], ["--timing", "16"], ["--style", "oil"],
                                  ["--frames", "2"], ["--windows", "0"], ["--time-methods", "8"],
                                  ["--dense", "1"], ["--intervals", "4", "10", "--dense", "4"],
                                  ["--deflicker", "-1"], ["--deflicker", "nan"], ["--deflicker", "x"],
                                  ["--flow", "raft"], ["--flow", "tvl1", "--time-methods", "64"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        pq.main(argv)
    assert e.value.code == 2


def test_flow_without_opencv_contrib_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.delattr(pq.cv2, "optflow", raising=False)
    with pytest.raises(SystemExit) as e:
        pq.main(["--size", "48", "--clips", "pan_thin", "--flow", "deepflow"])
    assert e.value.code == 2 and "--flow deepflow" in capsys.readouterr().err


def test_flow_deepflow_is_what_every_method_follows(monkeypatch, tmp_path):
    """--flow deepflow: every method of a clip follows that estimator (here a stand-in for cv2.optflow's), each pair
    computed once for all methods; a flow that points the wrong way costs the flow blend its accuracy."""
    import types
    pairs = []

    class Wrong:
        def calc(self, a, b, _):
            pairs.append((a.tobytes(), b.tobytes()))
            return np.full(a.shape + (2,), 3.0, np.float32)   # 3 px to the lower right, whatever the motion

    monkeypatch.setattr(pq.cv2, "optflow", types.SimpleNamespace(createOptFlow_DeepFlow=Wrong), raising=False)
    argv = ["--size", "48", "--clips", "pan_thin", "--intervals", "4", "--methods", "flow", "auto"]
    assert pq.main(argv + ["--flow", "deepflow", "--out", str(tmp_path / "w")]) == 0
    assert pairs and len(set(pairs)) == len(pairs)                    # no pair computed twice
    assert pq.main(argv + ["--out", str(tmp_path / "d")]) == 0
    rows = {d: {r["method"]: r for r in json.loads((tmp_path / d / "results.json").read_text())["rows"]}
            for d in ("w", "d")}
    assert rows["w"]["flow"]["flow"] == "deepflow" and rows["d"]["flow"]["flow"] == "dis"
    assert rows["w"]["flow"]["psnr"] < rows["d"]["flow"]["psnr"] - 0.5


def test_deflicker_rows_come_from_the_propagation_setting(tmp_path):
    """--deflicker S adds '<method>+d<S>' rows, run with the propagation's deflicker: steadier than without."""
    assert pq.main(["--size", "48", "--clips", "pan_thin", "--intervals", "4", "--methods", "flow", "patch",
                    "--deflicker", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by = {r["method"]: r for r in rows if r["interval"] == 4}
    assert {"flow+d2", "patch+d2"} <= set(by)
    assert by["patch+d2"]["warp_x_floor"] < by["patch"]["warp_x_floor"]
    assert by["patch+d2"]["psnr"] != by["patch"]["psnr"]


def test_pencil_style_is_deterministic_and_textured():
    f = pq.make_clip("crossing", 64, n=1)[0]
    s = pq.stylize_pencil(f)
    assert s.shape == f.shape and s.dtype == np.uint8 and np.array_equal(s, pq.stylize_pencil(f))
    assert not np.array_equal(s, f) and pq.grad_energy(s) > 0


def test_real_windows_read_a_clip_folder(tmp_path, capsys):
    import cv2
    frames = pq.make_clip("crossing", 64, n=12)
    vw = cv2.VideoWriter(str(tmp_path / "tree.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    wins = pq.real_windows(str(tmp_path), 32, 5, 2)
    assert [len(c) for _, c in wins] == [5, 5] and wins[0][0].startswith("tree@")
    assert wins[0][1][0].shape == (32, 32, 3) and wins[0][0] != wins[1][0]
    with pytest.raises(SystemExit):
        pq.real_windows(str(tmp_path), 32, 50, 1)  # no clip that long
    # a clip shorter than the window is said to be skipped (tree.avi decodes 68 of its 444 frames)
    assert "tree.avi decodes 12 frames, fewer than --frames 50: skipped" in capsys.readouterr().err


def test_cpu_timing_of_each_method():
    t = pq.cpu_time_methods(48, gap=1)
    assert t["size"] == 48 and all(t[f"cpu_s_per_frame_{m}"] > 0 for m in ("flow", "patch", "auto"))


def test_time_methods_excludes_the_flow_after_the_warm_up():
    flow = pq.CachedFlow()
    a, b = torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16) * 255
    first = flow(a, b)
    assert torch.equal(flow(a.clone(), b.clone()), first) and len(flow._seen) == 1   # the same pair: from memory
    flow(b, a)
    assert len(flow._seen) == 2
    t = pq.time_methods(32, gap=1, repeats=1)
    assert t["device"] == "cpu" and all(t[f"s_per_frame_{m}"] > 0 for m in ("flow", "patch", "auto"))
    assert all(t[f"flow_s_per_frame_{m}"] > 0 for m in ("flow", "patch", "auto"))  # each method's own flows


def test_time_methods_times_the_deflicker_rows(capsys):
    assert pq.main(["--time-methods", "32", "--methods", "flow", "--deflicker", "1"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["s_per_frame_flow+d1"] > 0 and "s_per_frame_patch" not in t


def test_reach_scores_denser_keys_on_the_shared_in_between_frames():
    """--dense: every method again with a key every N frames, scored on the frames that are in-between at both
    intervals against the flow blend at the sparse one. On a moving clip, keys every 2 frames make the flow blend
    better than keys every 6 (its margin > 0), and a method's own margin at the sparse interval is 0 for the flow
    blend by definition."""
    frames = pq.make_clip("pan_thin", 48, n=13)
    sparse = {6: {}}
    pq.evaluate("pan_thin", 48, 6, ["flow", "nearest"], frames=frames, outputs=sparse[6])
    assert set(sparse[6]) == {"flow", "nearest"} and len(sparse[6]["flow"]) == 13
    rows = pq.reach("pan_thin", frames, 48, "flat", 2, sparse, ["flow", "nearest"])
    by = {r["method"]: r for r in rows}
    assert all(r["frames"] == 6 for r in rows)  # the odd frames: in-between for keys every 2 and every 6
    assert by["flow"]["sparse_margin_db"] == 0 and by["flow"]["margin_db"] > 0.3
    assert by["nearest"]["margin_db"] > by["nearest"]["sparse_margin_db"]  # the nearest key is 1 frame away, not 3
    assert "| pan_thin | flat | 48 | 6 | nearest |" in pq.reach_markdown(rows)
