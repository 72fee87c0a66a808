"""The web UI's callbacks without a browser: the settings form derived from RenderConfig (round trips, YAML load and
save, one-line errors), the input description, step 1's keyframe plan, steps 2 and 3 through the renderer with a
stand-in stylizer (progress events, gallery filling in, outputs, cancel leaving the folder resumable), and the
`fresco ui` flags. The real tiny model in the page is exercised by test_ui_browser.py."""
import dataclasses
import zipfile
from fractions import Fraction

import pytest

from fresco.config import RenderConfig, known_keys
from fresco.settings import settings_fields
from fresco.ui import form, jobs
from fresco.video import make_synthetic_clip, probe
from test_render import StandInStylizer

gr = pytest.importorskip("gradio", reason="the web UI needs the [ui] extra")
from fresco.ui.app import UI  # noqa: E402

SETTINGS = dict(prompt="a fox", size="64x64", num_inference_steps=4, num_warmup_steps=1, batch_size=3)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 16, (96, 64), fps=Fraction(8))


def _values(**kw):
    v = form.form_values(RenderConfig(**{**SETTINGS, **kw}))
    v.update(mininterv=5, maxinterv=5, fixed_interval=False, interval=5)
    return v


def stand_in_factory(steps=3, on_each_step=None):
    """A StylizerFactory: the render tests' stand-in, reporting `steps` steps per batch through on_step."""
    def factory(cfg, on_step):
        st = StandInStylizer()

        def stylize(frames, *args, **kwargs):
            for s in range(1, steps + 1):
                on_step(s, steps)
                if on_each_step:
                    on_each_step()
            return st(frames, *args, **kwargs)
        return stylize
    return factory


def test_form_covers_every_setting_and_round_trips():
    specs = {s.key: s for s in form.settings_fields()}
    no_flag = {f.name for f in settings_fields() if f.metadata["cli"] is False}
    assert "background_smoothing" in specs  # the renderer has a background map (saliency): in the page too
    assert set(specs) | set(form.OWN_WIDGETS) | set(RenderConfig.UNUSED) | no_flag == set(known_keys())
    assert not set(specs) & no_flag
    # the FrescoSettings knobs: each constraint switch, with its help text, in its group
    for knob in ("cross_frame_attention", "spatial_attention", "temporal_attention", "feature_optimization",
                 "temporal_loss", "spatial_loss"):
        assert (specs[knob].kind, specs[knob].group) == ("bool", "FRESCO constraints") and specs[knob].help
    assert specs["loss_reduction"].choices == ("l1", "l2") and specs["opt_layers"].kind == "ints"
    cfg = RenderConfig(file_path="v.mp4", save_path="o", prompt="p", negative_prompt="n", fps=12.0, size="128x64",
                       controlnet_type="depth", use_freeu=True, seed=3, backend="reference", temporal_attention=False,
                       opt_layers=(1, 2), end_opt_step=5)
    back = form.build_config({**form.form_values(cfg), "file_path": "v.mp4", "save_path": "o"})
    assert back == cfg
    # empty optional boxes are None; numbers typed as text are parsed; a bad value is one line naming the key
    v = form.form_values(RenderConfig())
    v.update(prompt="p", negative_prompt="", fps="", file_path="v", save_path="o")
    assert form.build_config(v).negative_prompt is None and form.build_config(v).fps is None
    with pytest.raises(ValueError, match="^fps: expected a number, got 'fast'$"):
        form.build_config({**v, "fps": "fast"})
    with pytest.raises(ValueError, match="^controlnet_type: one of"):
        form.build_config({**v, "controlnet_type": "sketch"})


def test_a_new_setting_appears_without_ui_edits():
    @dataclasses.dataclass
    class More(RenderConfig):
        temporal_attention: bool = True
        opt_lr: float = 0.2
    specs = {s.name: s for s in form.settings_fields(More)}
    assert (specs["temporal_attention"].kind, specs["opt_lr"].kind) == ("bool", "float")


def test_yaml_save_load_keeps_published_keys(tmp_path):
    cfg = RenderConfig(file_path="in.mp4", save_path="o", prompt="p", mininterv=4, maxinterv=9, run_ebsynth=True)
    path = form.save_settings(cfg, tmp_path / "s.yaml")
    text = path.read_text()
    assert "file_path: in.mp4" in text and "mininterv: 4" in text and "sd_path:" in text
    back = form.load_settings(path)
    assert back == cfg and form.hidden_values(back) == {"run_ebsynth": True}
    (tmp_path / "bad.yaml").write_text("promt: x\n")
    with pytest.raises(ValueError, match="unknown key 'promt'"):
        form.load_settings(tmp_path / "bad.yaml")


def test_page_config_interval_added_prompt_and_default_folder(tmp_path):
    (tmp_path / "videos").mkdir()
    ui = UI(out_root=tmp_path / "out", inputs=[tmp_path / "videos"])
    cfg = ui.config({**_values(), "fixed_interval": True, "interval": 7.0, "added_prompt": "best quality"}, {},
                    str(tmp_path / "videos" / "dance.mp4"), "")
    # the added prompt is the render's own key, as on the CLI: it replaces the model's default added prompt
    assert (cfg.mininterv, cfg.maxinterv) == (7, 7) and (cfg.prompt, cfg.added_prompt) == ("a fox", "best quality")
    assert cfg.prompt_pair()[0] == "best quality"
    assert cfg.save_path == str(tmp_path / "out" / "dance")
    mine = tmp_path / "out" / "mine"
    assert ui.config(_values(), {"run_ebsynth": True}, str(tmp_path / "videos" / "v.mp4"),
                     f" {mine} ").save_path == str(mine)


def test_input_description_and_errors(clip, tmp_path):
    ui = UI(out_root=tmp_path, inputs=[clip.parent])
    src, text = ui.open_input(str(clip), _values(size=""), {})
    assert src == str(clip) and "16 frames, 8 fps, 96x64" in text and "processed at 768x512" in text
    _, text = ui.open_input(str(clip), _values(), {})
    assert "processed at 64x64" in text
    src, text = ui.open_input(str(tmp_path / "nope.mp4"), _values(), {})
    assert src is None and "fresco: error: input: '" in text and "does not exist" in text and "\n" not in text


def test_step1_keyframe_plan(clip, tmp_path):
    ui = UI(out_root=tmp_path, inputs=[clip.parent])
    gallery, text = ui.keyframes(_values(), {}, str(clip), "")
    assert [c for _, c in gallery] == ["key 0 · batch 1", "key 5 · batch 1", "key 10 · batch 2", "key 15 · batch 2"]
    assert gallery[0][0].shape == (64, 64, 3)
    assert "4 keyframes of 16 frames in 2 batch(es)" in text and "batch 2: 10, 15 (anchors 0, 5)" in text
    gallery, text = ui.keyframes({**_values(), "mininterv": 9, "maxinterv": 4}, {}, str(clip), "")
    assert gallery == [] and "fresco: error: mininterv/maxinterv: s_min (9) must be <= s_max (4)" in text


def test_steps_2_and_3_report_progress_and_outputs(clip, tmp_path):
    ui = UI(out_root=tmp_path / "out", make_stylizer=stand_in_factory(), inputs=[clip.parent])
    ups = list(ui.run("keyframes", "s", _values(), {}, str(clip), ""))
    steps = [u["status"] for u in ups if "progress" in u]
    assert steps == [f"batch {b}/2 · step {s}/3" for b in (1, 2) for s in (1, 2, 3)]
    galleries = [len(u["gallery"]) for u in ups if "gallery" in u]
    # published batching with N = 3: batch 1 = keys 0, 5; batch 2 = 10, 15 anchored on 0, 5
    assert galleries == [0, 2, 4, 4]  # start, after batch 1, after batch 2, done
    assert ups[-1]["status"].startswith("keyframes done: 4 keys in 2 batch(es)")
    out = tmp_path / "out" / "clip"
    assert not (out / "video.mp4").exists() and ui.jobs == {}

    ups = list(ui.run("propagate", "s", _values(), {}, str(clip), ""))
    assert not any(u.get("status", "").startswith("batch") for u in ups)  # nothing re-rendered
    assert [u["progress"][1] for u in ups if "progress" in u][-1] == "propagating frame 16/16"
    o = ups[-1]["outputs"]
    assert probe(o["video"]).n_frames == 16 and o["preview"].endswith("preview.png")
    assert sorted(zipfile.ZipFile(o["keys_zip"]).namelist()) == [f"{k:05d}.png" for k in (0, 5, 10, 15)]
    assert ups[-1]["status"].startswith("done: 16 frames, 8 fps, 64x64")
    # the result step's score panel: the figures of fresco.score and the plot, at the render's size
    text, plot = ui.score(_values(), {}, str(clip), "")
    assert "frames: 16 at 64x64" in text and "warp error (Pixel-MSE)" in text and plot.endswith("score.png")


def test_score_panel_before_a_render_is_one_line(clip, tmp_path):
    text, plot = UI(out_root=tmp_path / "out", inputs=[clip.parent]).score(_values(), {}, str(clip), "")
    assert plot is None and "fresco: error: score: no render at" in text and "\n" not in text


def test_cancel_mid_batch_leaves_the_folder_resumable(clip, tmp_path):
    ui = UI(out_root=tmp_path / "out", inputs=[clip.parent])
    count = {"steps": 0}

    def press_cancel():
        count["steps"] += 1
        if count["steps"] == 5:  # batch 2, step 2
            assert ui.cancel("s").startswith("cancelling")
    ui.make_stylizer = stand_in_factory(on_each_step=press_cancel)
    ups = list(ui.run("keyframes", "s", _values(), {}, str(clip), ""))
    assert "fresco: cancelled: cancelled during batch 2" in ups[-1]["status"] and ui.jobs == {}
    assert ui.cancel("s") == "nothing to cancel"
    ui.make_stylizer = stand_in_factory()
    ups = list(ui.run("propagate", "s", _values(), {}, str(clip), ""))
    assert [u["status"] for u in ups if "progress" in u][0] == "batch 2/2 · step 1/3"  # resumed at batch 2
    assert probe(ups[-1]["outputs"]["video"]).n_frames == 16


def test_errors_are_one_line(clip, tmp_path):
    ui = UI(out_root=tmp_path / "out", make_stylizer=stand_in_factory(), inputs=[clip.parent])
    ups = list(ui.run("keyframes", "s", _values(prompt=""), {}, str(clip), ""))
    assert ups == [{"status": '<span class="fresco-error">fresco: error: prompt: a non-empty prompt is required, '
                              "got None</span>"}]

    def broken(cfg, on_step):
        def stylize(frames, *args, **kwargs):
            raise KeyError("unet")
        return stylize
    ui.make_stylizer = broken
    last = list(ui.run("keyframes", "s", _values(), {}, str(clip), ""))[-1]["status"]
    assert "fresco: error: internal KeyError: 'unet' (traceback in the server log)" in last and "\n" not in last


def test_cli_ui_flags(monkeypatch, capsys):
    from fresco import cli
    seen = {}
    monkeypatch.setattr("fresco.ui.launch", lambda **kw: seen.update(kw))
    assert cli.main(["ui", "--model", "tiny-random"]) == 0
    assert seen == dict(model="tiny-random", host="127.0.0.1", port=None, share=False, out_root="out", root=None,
                        auth=None, inputs=[])
    assert cli.main(["ui", "--listen", "--share", "--port", "8000", "--auth", "u:p"]) == 0
    assert (seen["host"], seen["share"], seen["port"]) == ("0.0.0.0", True, 8000)
    assert cli.main(["ui", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fresco: error: --port: must be in 1..65535, got 0"


def test_one_render_at_a_time(tmp_path):
    demo = UI(out_root=tmp_path).build()
    ids = {b.elem_id: b._id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    by_trigger = {t[0]: f for f in demo.fns.values() for t in f.targets}
    render, prop = by_trigger[ids["btn-render"]], by_trigger[ids["btn-propagate"]]
    assert render.concurrency_limit == prop.concurrency_limit == 1
    assert render.concurrency_id == prop.concurrency_id == "render"
    cancel = by_trigger[ids["btn-cancel"]]
    assert not cancel.queue  # answered at once, not queued behind the render it stops


def test_ui_error_line_is_the_cli_line():
    """The page showed only the first line of a message (a newline in a file name cut it); it is now the CLI's
    line: control characters escaped, an overlong message cut in the middle."""
    from fresco.cli import error_text
    for e in (ValueError("input: 'a\nb.mp4' does not exist"), FileNotFoundError("x" * 5000)):
        line = jobs.error_line(e)
        assert line == f"fresco: error: {error_text(e)}" and "\n" not in line and len(line) < 2100
    assert "a\\nb.mp4' does not exist" in jobs.error_line(ValueError("input: 'a\nb.mp4' does not exist"))
    assert jobs.error_line(KeyError("k\nz")).startswith("fresco: error: internal KeyError: 'k\\nz'")


@pytest.mark.parametrize("text", ["loras: [1, 2]\n", "extra_prompts: {'-1': x}\n", "extra_prompts: {1: [1]}\n"])
def test_load_settings_with_values_the_form_cannot_show_is_one_line(tmp_path, text):
    """These load as a config but failed while the form was filled, outside the handler's error line."""
    demo = UI(out_root=tmp_path / "out").build()
    on_load = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "on_load")
    (tmp_path / "s.yaml").write_text("prompt: a fox\n" + text)
    status = on_load(str(tmp_path / "s.yaml"))[-1]
    assert "fresco: error:" in status and "\n" not in status


def test_one_added_prompt_box(tmp_path):
    """The page had two 'added prompt' boxes, one wired to nothing; the knob's box is the render's added_prompt."""
    demo = UI(out_root=tmp_path / "out").build()
    labels = [getattr(b, "label", None) or "" for b in demo.blocks.values()]
    assert sum(lb.startswith("added prompt") for lb in labels) == 1


@pytest.mark.parametrize("key", ["max_frames", "threads", "num_warmup_steps", "mininterv"])
@pytest.mark.parametrize("bad", ["inf", "1e400", "nan", float("inf"), float("nan")])
def test_non_finite_whole_numbers_name_their_key(tmp_path, key, bad):
    """int(inf) raised OverflowError ("internal", no key named) and int(nan) a message without the key."""
    with pytest.raises(ValueError, match=f"^{key}: (must be|expected) an integer"):
        UI(out_root=tmp_path / "out").config({**_values(), key: bad}, {}, None, "")


@pytest.mark.parametrize("folder,says", [("/", "the file system's root"), ("/etc", "a system folder"),
                                         ("/nonexistent-fresco", "is not a folder"),
                                         ("/tmp/" + "a" * 300, "is not a folder (File name too long)")])
def test_inputs_folder_is_checked(capsys, folder, says):
    """--inputs opens a folder to the page (the frames of what is typed under it are shown): not a system one."""
    from fresco import cli
    assert cli.main(["ui", "--inputs", folder]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fresco: error: --inputs: '{folder}'") and says in err and err.count("\n") == 1
