"""One declaration per render knob (issue 22) and finite, ranged values (issue 23): a knob added to RenderConfig in
one place reaches the CLI, the YAML, the web UI, the fingerprint and docs/options.md; the committed options table is
current; the patch propagation's knobs are reachable from every front end and reach the propagation; a NaN,
infinite or out-of-range value is one line naming the key, exit 2, before any model loads."""
import dataclasses
import types

import pytest

import fresco.config
from fresco import cli, options_table
from fresco.constants import PROPAGATION_METHODS
from fresco.config import RenderConfig, fingerprint_keys, from_mapping, known_keys, load_yaml
from fresco.knobs import Range, knob
from fresco.patch_params import MAX_WEIGHT, PatchParams
from fresco.ui import form
from fresco.video import outdir, runner


@dataclasses.dataclass(init=False)
class WithKnob(RenderConfig):
    grain: float = knob(0.0, "film grain, a knob of this test", range=(0, 1), group="Frames")
    grain_label: bool = knob(False, "a switch of this test that does not change the keyframes", fingerprint=False)


def test_a_render_knob_is_one_field(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(fresco.config, "RenderConfig", WithKnob)
    # the CLI
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--grain", "0.5", "--grain-label"])
    cfg = cli._build_config(args)
    assert isinstance(cfg, WithKnob) and (cfg.grain, cfg.grain_label) == (0.5, True)
    assert cli.main(["render", "v.mp4", "--prompt", "p", "--grain", "2"]) == 2
    assert capsys.readouterr().err.strip() == "fresco: error: grain: must be in [0, 1], got 2.0"
    # the YAML, with its checks
    yml = tmp_path / "c.yaml"
    yml.write_text("prompt: x\ngrain: 0.25\ngrain_label: 'yes'\n")
    cfg = from_mapping(load_yaml(yml))
    assert (cfg.grain, cfg.grain_label) == (0.25, True) and "grain" in known_keys()
    with pytest.raises(ValueError, match="^grain: expected a number"):
        from_mapping({"grain": "much"})
    # the web UI: a widget in its group, and back
    specs = {s.name: s for s in form.settings_fields()}
    assert (specs["grain"].kind, specs["grain"].group, specs["grain"].help) == ("float", "Frames",
                                                                                "film grain, a knob of this test")
    back = form.build_config({**form.form_values(cfg), "file_path": "v.mp4", "save_path": "o"})
    assert back.grain == 0.25
    # the fingerprint: grain decides the keyframes, grain_label does not
    assert "grain" in fingerprint_keys() and "grain_label" not in fingerprint_keys()
    clip = tmp_path / "v.mp4"
    clip.write_bytes(b"x")
    info = types.SimpleNamespace(path=str(clip))
    fp = outdir.fingerprint(cfg, info, (64, 64))
    assert outdir.fingerprint(cfg.replace(grain_label=False), info, (64, 64)) == fp
    assert outdir.fingerprint(cfg.replace(grain=0.5), info, (64, 64)) != fp
    # the options table
    assert "| `grain` | `--grain` | float | `0.0` | in [0, 1]; finite | yes | Frames |" in \
        options_table.options_markdown()


def test_the_committed_options_table_is_current():
    assert options_table.PATH.read_text() == options_table.options_markdown(), \
        "docs/options.md is stale: run `python -m fresco.options_table`"


def test_the_fingerprint_keys_are_the_ones_before_issue_22():
    """Output folders rendered before the knobs carried `fingerprint` must still resume: the same keys enter it."""
    skipped = {"save_path", "output", "resume", "overwrite", "strict", "force", "crf", "device", "run_ebsynth",
               "max_process", "propagation"} | {k for k in known_keys() if k.startswith("patch_")}
    # knobs added since, that change no keyframe: the thread count (a resume keeps the recorded one), --score,
    # the propagation's deflicker
    skipped |= {"threads", "score", "deflicker"}
    assert set(fingerprint_keys()) == set(known_keys()) - skipped


def test_patch_knobs_from_every_front_end(monkeypatch, tmp_path):
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--patch-em-iters", "2",
                                          "--patch-search-radius", "16", "--no-patch-warp-candidate"])
    cfg = cli._build_config(args)
    assert cfg.patch == PatchParams(em_iters=2, search_radius=16, warp_candidate=False)
    yml = tmp_path / "c.yaml"
    yml.write_text("prompt: x\npatch_pm_iters: 2\npatch_poisson: true\n")
    assert from_mapping(load_yaml(yml)).patch == PatchParams(pm_iters=2, poisson=True)
    specs = {s.name: s for s in form.settings_fields()}
    assert specs["propagation"].kind == "choice" and specs["propagation"].choices == PROPAGATION_METHODS
    assert specs["patch_levels"].group == "Propagation" and specs["patch_size"].choices == (3, 5, 7, 9)
    back = form.build_config({**form.form_values(cfg), "patch_levels": "3", "file_path": "v", "save_path": "o"})
    assert back.patch == cfg.patch.__class__(**{**dataclasses.asdict(cfg.patch), "levels": 3})
    with pytest.raises(ValueError, match="^patch_levels: must be in \\[1, 12\\], got 0$"):
        form.build_config({**form.form_values(cfg), "patch_levels": 0, "file_path": "v", "save_path": "o"})
    # and they reach the propagation
    seen = {}
    monkeypatch.setattr(runner, "propagate", lambda *a, **kw: seen.update(kw) or iter(()))
    runner.make_propagation(cfg, flow=lambda a, b: None)(iter(()), [0], lambda k: None)
    assert seen["patch_params"] is cfg.patch and seen["method"] == "auto"  # the default method
    assert seen["deflicker"] == 0.0
    # with the render's default DIS, the propagation's flow is the finer preset; another estimator is kept
    from fresco.models.flow import PROPAGATION_DIS_PRESET, DISFlow
    flows = []
    monkeypatch.setattr(runner, "propagate", lambda *a, **kw: flows.append(a[3]) or iter(()))
    runner.make_propagation(cfg, flow=DISFlow())(iter(()), [0], lambda k: None)
    runner.make_propagation(cfg)(iter(()), [0], lambda k: None)
    assert [f.preset for f in flows] == [PROPAGATION_DIS_PRESET] * 2


def test_deflicker_from_every_front_end(monkeypatch, tmp_path, capsys):
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--deflicker", "1.5"])
    cfg = cli._build_config(args)
    assert cfg.deflicker == 1.5
    yml = tmp_path / "c.yaml"
    yml.write_text("prompt: x\ndeflicker: 0.5\n")
    assert from_mapping(load_yaml(yml)).deflicker == 0.5
    back = form.build_config({**form.form_values(cfg), "file_path": "v", "save_path": "o"})
    assert back.deflicker == 1.5
    seen = {}
    monkeypatch.setattr(runner, "propagate", lambda *a, **kw: seen.update(kw) or iter(()))
    runner.make_propagation(cfg, flow=lambda a, b: None)(iter(()), [0], lambda k: None)
    assert seen["deflicker"] == 1.5
    for bad in ("-1", "9", "nan", "x"):
        try:
            rc = cli.main(["render", "v.mp4", "--prompt", "p", "--deflicker", bad])
        except SystemExit as e:   # argparse's own type check
            rc = e.code
        assert rc == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "deflicker" in err[-1] and "Traceback" not in "".join(err)


def test_patch_params_limits_are_the_ops():
    pytest.importorskip("torch")
    from fresco_kernels.patch_synthesis import MAX_WEIGHT as OP_MAX_WEIGHT
    assert MAX_WEIGHT == OP_MAX_WEIGHT
    with pytest.raises(TypeError, match="^patch_w_edge: expected an integer"):
        PatchParams(w_edge=1.5)


@pytest.mark.parametrize("bad", [True, 2.5, "8"])
def test_one_type_check_for_every_knob(bad):
    """knobs.check_kind is the type check of RenderConfig's keys, FrescoSettings and PatchParams: the same message
    from each, a bool is never an integer, and numpy's scalars are the numbers they hold (PatchParams stores them as
    Python's, which the op takes)."""
    np = pytest.importorskip("numpy")
    from fresco.config import check_type
    from fresco.settings import FrescoSettings
    with pytest.raises(TypeError, match=f"^patch_w_edge: expected an integer, got {bad!r}$"):
        PatchParams(w_edge=bad)
    with pytest.raises(TypeError, match=f"^seed: expected an integer, got {bad!r}$"):
        FrescoSettings(seed=bad)
    with pytest.raises(ValueError, match=r"^fps: expected a number or null, got "):
        check_type("fps", True)
    p = PatchParams(w_edge=np.int64(8), warp_margin=np.float32(0.5), poisson=np.bool_(True), w_colour=np.int32(3))
    assert (p.w_edge, p.warp_margin, p.poisson, p.w_colour) == (8, 0.5, True, 3)
    assert (type(p.w_edge), type(p.warp_margin), type(p.poisson)) == (int, float, bool)
    assert type(PatchParams(warp_margin=1).warp_margin) is float
    assert FrescoSettings(seed=np.int64(3), cross_frame_attention=np.bool_(False)).seed == 3


def test_range_text():
    assert [str(r) for r in (Range(1), Range(0, 51), Range(0, 1, True), Range(0, None, True), Range(0, 0.5))] == \
        [">= 1", "in [0, 51]", "in (0, 1]", "> 0", "in [0, 0.5]"]


def _no_model(monkeypatch):
    """Any model load fails the test: the errors below must come first."""
    import fresco.models.sd as sd
    import fresco.video.stylize as stylize

    def boom(*a, **kw):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(sd, "load_components", boom)
    monkeypatch.setattr(stylize, "make_stylizer", boom)


@pytest.mark.parametrize("flags, key", [
    (["--guidance-scale", "nan"], "guidance_scale"),
    (["--guidance-scale", "inf"], "guidance_scale"),
    (["--cond-scale", "nan"], "cond_scale"),
    (["--adain-eps", "nan"], "adain_eps"),
    (["--opt-lr", "nan"], "opt_lr"),
    (["--crf", "99"], "crf"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**32)], "seed"),
    (["--patch-warp-margin=-inf"], "patch_warp_margin"),
    (["--fps", "nan"], "fps"),
])
def test_bad_numbers_exit_2_naming_the_key(flags, key, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    clip = tmp_path / "v.mp4"
    clip.write_bytes(b"not decoded: the settings are refused first")
    assert cli.main(["render", str(clip), "--prompt", "p", "--model", "tiny-random", "-o", str(tmp_path / "o"),
                     *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fresco: error: {key}: must be ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_yaml_nan_exits_2(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    yml = tmp_path / "c.yaml"
    yml.write_text(f"file_path: {tmp_path / 'v.mp4'}\nsave_path: {tmp_path / 'o'}\nprompt: p\nsd_path: tiny-random\n"
                   "guidance_scale: .nan\n")
    assert cli.main(["render", "--config", str(yml)]) == 2
    assert capsys.readouterr().err == "fresco: error: guidance_scale: must be a finite number in [0, 100], got nan\n"


def test_api_and_ui_get_the_same_checks():
    with pytest.raises(ValueError, match="^adain_eps: must be a finite number"):
        RenderConfig(adain_eps=float("nan"))
    with pytest.raises(ValueError, match="^crf: must be in \\[0, 51\\], got 52$"):
        RenderConfig(file_path="v", save_path="o", prompt="p", crf=52).validate()
    v = form.form_values(RenderConfig())
    with pytest.raises(ValueError, match="^guidance_scale: must be a finite number"):
        form.build_config({**v, "prompt": "p", "file_path": "v", "save_path": "o", "guidance_scale": "inf"})
