"""FrescoSettings, the one set of FRESCO knobs: validation names the field, the YAML keys and `fresco render` flags
are derived from its fields (a knob added to the class appears in both with nothing else changed), RenderConfig
routes the published keys into it, and FrescoPipeline takes it whole or as keyword overrides."""
import dataclasses

import pytest

import fresco.settings
from fresco import cli
from fresco.config import RenderConfig, from_mapping, merge
from fresco.settings import FrescoSettings, knob


@pytest.mark.parametrize("kw,exc,match", [
    (dict(num_inference_steps=0), ValueError, r"num_inference_steps: must be in \[1, 1000\]"),
    (dict(num_inference_steps=2.5), TypeError, "num_inference_steps: expected an int"),
    (dict(seed=True), TypeError, "seed: expected an int"),
    (dict(cross_frame_attention="yes"), TypeError, "cross_frame_attention: expected a boolean"),
    (dict(loss_reduction="l3"), ValueError, r"loss_reduction: one of \('l1', 'l2'\)"),
    (dict(backend="fast"), ValueError, r"backend: one of \('fused', 'reference'\)"),
    (dict(strength=1.5), ValueError, r"strength: must be in \(0, 1\]"),
    (dict(strength=0.5, num_warmup_steps=2), ValueError, "pass one of them"),
    (dict(num_inference_steps=4, num_warmup_steps=4), ValueError, r"num_warmup_steps: must be < num_inference_steps"),
    (dict(num_inference_steps=1), ValueError, "num_inference_steps: leaves no denoising step"),
    (dict(num_inference_steps=2, strength=0.01), ValueError, "strength: leaves no denoising step"),
    (dict(opt_layers=(0, 7)), ValueError, "opt_layers"),
    (dict(vae_chunk=0), ValueError, "vae_chunk: must be >= 1"),
])
def test_validation_names_the_field(kw, exc, match):
    with pytest.raises(exc, match=match):
        FrescoSettings(**kw)


def test_schedule_and_replace():
    assert FrescoSettings(num_inference_steps=2, strength=0.5).warmup_steps == 1  # one step runs: accepted
    s = FrescoSettings()
    assert s.schedule() == dict(num_inference_steps=20, num_warmup_steps=5, end_opt_step=15,
                                bg_smoothing_steps=[16, 17])
    assert FrescoSettings(num_inference_steps=6).schedule() == dict(num_inference_steps=6, num_warmup_steps=2,
                                                                    end_opt_step=4, bg_smoothing_steps=[5])
    assert s.replace(seed=3).seed == 3 and s.seed == 0
    assert FrescoSettings(opt_layers=[1, 2]).opt_layers == (1, 2)
    with pytest.raises(TypeError, match="not_a_knob: not a FRESCO setting"):
        s.replace(not_a_knob=1)


def test_render_config_holds_the_settings():
    """Published keys that are FRESCO knobs route into cfg.settings (from YAML, keywords and CLI overrides); the
    config does not restate them."""
    own = {f.name for f in dataclasses.fields(RenderConfig)}
    knobs = {f.name for f in dataclasses.fields(FrescoSettings)}
    assert own & knobs == set()
    cfg = from_mapping({"num_inference_steps": 8, "num_warmup_steps": 3, "end_opt_step": 6, "seed": 4,
                        "cond_scale": 0.5, "use_freeu": "true", "prompt": "x"})
    assert cfg.settings == FrescoSettings(num_inference_steps=8, num_warmup_steps=3, end_opt_step=6, seed=4,
                                          cond_scale=0.5, use_freeu=True)
    assert cfg.seed == 4 and cfg.prompt == "x"
    cfg2 = merge(cfg, {"seed": 5, "prompt": "y", "opt_iters": None})
    assert (cfg2.settings.seed, cfg2.prompt, cfg2.settings.num_inference_steps) == (5, "y", 8)
    assert RenderConfig(seed=2).settings.seed == 2
    with pytest.raises(ValueError, match="unknown key 'sed'"):
        from_mapping({"sed": 1})


def test_cli_flags_set_the_settings():
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--steps", "6", "--no-temporal-loss",
                                          "--opt-layers", "2", "3", "--backend", "reference", "--freeu",
                                          "--loss-reduction", "l2"])
    s = cli._build_config(args).settings
    assert (s.num_inference_steps, s.temporal_loss, s.opt_layers, s.backend, s.use_freeu, s.loss_reduction) == \
        (6, False, (2, 3), "reference", True, "l2")
    # flags not given keep the defaults (None on the command line means "not set")
    assert s.spatial_loss is True and s.seed == 0


def test_new_knob_needs_only_its_field(monkeypatch, tmp_path):
    """A knob added to FrescoSettings (here by a subclass put in its place) is a `fresco render` flag and a YAML
    key, validated, and reaches the stylizer inside cfg.settings, with no other code changed."""
    @dataclasses.dataclass(frozen=True)
    class WithKnob(FrescoSettings):
        blend_power: float = knob(1.0, "a new knob for this test")
        extra_pass: bool = knob(False, "a new switch for this test")

    monkeypatch.setattr(fresco.settings, "FrescoSettings", WithKnob)
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--blend-power", "2.5",
                                          "--extra-pass"])
    cfg = cli._build_config(args)
    assert isinstance(cfg.settings, WithKnob) and cfg.settings.blend_power == 2.5 and cfg.settings.extra_pass
    yml = tmp_path / "c.yaml"
    yml.write_text("prompt: x\nblend_power: 0.5\nextra_pass: 'no'\nnum_inference_steps: 8\n")
    from fresco.config import load_yaml
    cfg = from_mapping(load_yaml(yml))
    assert (cfg.settings.blend_power, cfg.settings.extra_pass, cfg.settings.num_inference_steps) == (0.5, False, 8)
    with pytest.raises(TypeError, match="blend_power: expected a number"):
        from_mapping({"blend_power": "much"})
