"""The stages around FRESCO's core as the published code runs them (issue 11): prompts (against a transcription of
run_fresco.py's prompt building), the HED annotator (against a transcription of the published HEDdetector, stand-in
weights loaded strictly), the VAE choice, the scheduler from the model's own config, pure-noise mode, the
published smoothing steps, and the web UI's toggles reaching the pipeline from config and CLI."""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from fresco import cli, config as cfgmod  # noqa: E402
from fresco.video.keyframes import plan_batches  # noqa: E402
from fresco.prompts import (ADDED_PROMPT, NEGATIVE_PROMPT, REALISTIC_ADDED_PROMPT,  # noqa: E402
                            REALISTIC_NEGATIVE_PROMPT, frame_prompts, parse_extra_prompts, published_pair)
from fresco.video.stylize import make_stylizer  # noqa: E402
from fresco.video import synthetic_frame  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread_module")  # conftest: one thread is faster for tiny models


# ---------------------------------------------------------------- prompts
def _published_prompts(config, sublists, extra_prompts):
    """run_fresco.py's prompt building per batch, transcribed: (prompts per batch, negative prompt)."""
    base_prompt = config['prompt']
    if 'Realistic' in config['sd_path'] or 'realistic' in config['sd_path']:
        a_prompt = ', RAW photo, subject, (high detailed skin:1.2), 8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3, '  # noqa: E501
        n_prompt = '(deformed iris, deformed pupils, semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, mutated hands and fingers:1.4), (deformed, distorted, disfigured:1.3), poorly drawn, bad anatomy, wrong anatomy, extra limb, missing limb, floating limbs, disconnected limbs, mutation, mutated, ugly, disgusting, amputation'  # noqa: E501
    else:
        a_prompt = ', best quality, extremely detailed, '
        n_prompt = 'longbody, lowres, bad anatomy, bad hands, missing finger, extra digit, fewer digits, cropped, worst quality, low quality'  # noqa: E501
    out = []
    for batch_ind, sub in enumerate(sublists):
        prompts = [base_prompt + a_prompt + extra_prompts[ind] for ind in sub]
        if batch_ind > 0:
            prompts = ref_prompt + prompts  # noqa: F821 (set by the previous batch, as published)
        out.append(prompts)
        ref_prompt = [prompts[0], prompts[-1]]  # noqa: F841
    return out, n_prompt


@pytest.mark.parametrize("sd_path", ["SG161222/Realistic_Vision_V2.0", "stablediffusionapi/rev-animated",
                                     "./models/realisticVision", "runwayml/stable-diffusion-v1-5"])
def test_prompts_match_published(sd_path):
    keys = list(range(0, 60, 4))
    extra = [""] * 60
    extra[8], extra[28], extra[56] = ", closed eyes", ", smiling", ", waving"
    batches = plan_batches(keys, 6)
    want, n_prompt = _published_prompts({"prompt": "a fox", "sd_path": sd_path},
                                        [list(b.new) for b in batches], extra)
    cfg = cfgmod.RenderConfig(file_path="x.mp4", save_path="o", prompt="a fox", sd_path=sd_path,
                              extra_prompts={8: ", closed eyes", 28: ", smiling", "56": ", waving"}).validate()
    added, negative = cfg.prompt_pair()
    assert negative == n_prompt
    assert [frame_prompts("a fox", b.frames, added, cfg.extra_prompts) for b in batches] == want
    realistic = "ealistic" in sd_path
    assert (added, negative) == ((REALISTIC_ADDED_PROMPT, REALISTIC_NEGATIVE_PROMPT) if realistic
                                 else (ADDED_PROMPT, NEGATIVE_PROMPT)) == published_pair(sd_path)


def test_prompt_keys_override_and_bad_extra_prompts():
    cfg = cfgmod.RenderConfig(file_path="x", save_path="o", prompt="p", added_prompt="", negative_prompt="").validate()
    assert cfg.prompt_pair() == ("", "")
    assert parse_extra_prompts("3:, a;10:, b") == {3: ", a", 10: ", b"}
    for bad in ("3 a", {"x": "a"}, {-1: "a"}, {2: 5}, ["a"]):
        with pytest.raises(ValueError, match="extra_prompts"):
            parse_extra_prompts(bad)


class _FakePipe:
    """Records what the stylizer passes to FrescoPipeline.__call__."""

    def __init__(self):
        self.calls = []

    def __call__(self, frames, prompt, **kw):
        self.calls.append(dict(kw, prompt=prompt))

        class Out:
            images = frames
        return Out()


def test_stylizer_passes_published_prompts_and_settings():
    cfg = cfgmod.RenderConfig(file_path="x", save_path="o", prompt="a fox", sd_path="SG161222/Realistic_Vision_V2.0",
                              extra_prompts={7: ", closed eyes"}, use_freeu=True, freeu_b1=1.1, freeu_s2=0.5,
                              spatial_attention=False, temporal_loss=False).validate()
    pipe = _FakePipe()
    stylize = make_stylizer(cfg, pipe=pipe)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    stylize(frames, None, frame_indices=(0, 5, 7))
    kw = pipe.calls[0]
    p = "a fox" + REALISTIC_ADDED_PROMPT
    assert kw["prompt"] == [p, p, p + ", closed eyes"]
    assert kw["negative_prompt"] == REALISTIC_NEGATIVE_PROMPT
    s = kw["settings"]
    assert s.use_freeu and s.freeu() == dict(b1=1.1, b2=1.5, s1=1.0, s2=0.5)
    assert (s.spatial_attention, s.temporal_loss) == (False, False)
    assert s.cross_frame_attention and s.temporal_attention and s.spatial_loss and s.background_smoothing


# ---------------------------------------------------------------- CLI toggles
def _cli_config(argv):
    return cli._build_config(cli.build_parser().parse_args(["render", *argv]))


def test_cli_flags_reach_the_config(tmp_path):
    """The published web UI's toggles: each constraint, FreeU b1/b2/s1/s2, Canny thresholds,
    added prompt, frame-count limit (and the VAE, annotator folder, per-keyframe prompts, pure-noise mode)."""
    cfg = _cli_config(["v.mp4", "--prompt", "p", "--vae", "own", "--annotator-path", str(tmp_path),
                       "--added-prompt", ", x", "--extra-prompts", "4:, y", "--canny-low", "20", "--canny-high",
                       "200", "--freeu-b1", "1.3", "--freeu-b2", "1.1", "--freeu-s1", "0.8", "--freeu-s2", "0.4",
                       "--no-cross-frame-attention", "--no-spatial-attention", "--no-temporal-attention",
                       "--no-spatial-loss", "--no-temporal-loss", "--max-frames", "30", "--warmup-steps", "-1"])
    assert (cfg.vae, cfg.annotator_path, cfg.added_prompt, cfg.extra_prompts) == ("own", str(tmp_path), ", x",
                                                                                   {4: ", y"})
    assert (cfg.canny_low, cfg.canny_high, cfg.max_frames, cfg.num_warmup_steps) == (20, 200, 30, -1)
    assert cfg.settings.freeu() == dict(b1=1.3, b2=1.1, s1=0.8, s2=0.4) and cfg.settings.pure_noise
    assert not any((cfg.cross_frame_attention, cfg.spatial_attention, cfg.temporal_attention,
                    cfg.spatial_loss, cfg.temporal_loss))
    # background smoothing: a YAML key only until renders have a background map (saliency, issue 12)
    assert not cfgmod.from_mapping({"background_smoothing": False}).background_smoothing
    plain = _cli_config(["v.mp4", "--prompt", "p"])
    assert plain.vae == "stabilityai/sd-vae-ft-mse" and plain.background_smoothing and plain.max_frames is None


@pytest.mark.parametrize("argv,msg", [
    (["--canny-low", "0"], "canny_low: must be in [1, 255]"),
    (["--extra-prompts", "five"], "extra_prompts: expected 'FRAME:TEXT'"),
    (["--max-frames", "1"], "max_frames: an integer >= 2"),
    (["--warmup-steps", "20"], "num_warmup_steps: must be < num_inference_steps"),
])
def test_cli_bad_values_exit_2(argv, msg, capsys, tmp_path):
    assert cli.main(["render", str(tmp_path / "v.mp4"), "--prompt", "p", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


# ---------------------------------------------------------------- HED
class _PublishedHED(torch.nn.Module):
    """ControlNetHED_Apache2 (src/ControlNet/annotator/hed), transcribed with its widths as a parameter."""

    def __init__(self, widths):
        super().__init__()

        class DoubleConvBlock(torch.nn.Module):
            def __init__(self, input_channel, output_channel, layer_number):
                super().__init__()
                self.convs = torch.nn.Sequential()
                self.convs.append(torch.nn.Conv2d(input_channel, output_channel, 3, 1, 1))
                for i in range(1, layer_number):
                    self.convs.append(torch.nn.Conv2d(output_channel, output_channel, 3, 1, 1))
                self.projection = torch.nn.Conv2d(output_channel, 1, 1, 1, 0)

            def __call__(self, x, down_sampling=False):
                h = x
                if down_sampling:
                    h = torch.nn.functional.max_pool2d(h, kernel_size=(2, 2), stride=(2, 2))
                for conv in self.convs:
                    h = torch.nn.functional.relu(conv(h))
                return h, self.projection(h)

        self.norm = torch.nn.Parameter(torch.zeros(size=(1, 3, 1, 1)))
        self.block1 = DoubleConvBlock(3, widths[0], 2)
        self.block2 = DoubleConvBlock(widths[0], widths[1], 2)
        self.block3 = DoubleConvBlock(widths[1], widths[2], 3)
        self.block4 = DoubleConvBlock(widths[2], widths[3], 3)
        self.block5 = DoubleConvBlock(widths[3], widths[4], 3)

    def __call__(self, x):
        h = x - self.norm
        h, p1 = self.block1(h)
        h, p2 = self.block2(h, down_sampling=True)
        h, p3 = self.block3(h, down_sampling=True)
        h, p4 = self.block4(h, down_sampling=True)
        h, p5 = self.block5(h, down_sampling=True)
        return p1, p2, p3, p4, p5


def _published_hed_detect(net, input_image):
    """HEDdetector.__call__, transcribed (CPU instead of .cuda())."""
    import cv2
    H, W, C = input_image.shape
    with torch.no_grad():
        image_hed = torch.from_numpy(input_image.copy()).float().permute(2, 0, 1)[None]
        edges = net(image_hed)
        edges = [e.detach().cpu().numpy().astype(np.float32)[0, 0] for e in edges]
        edges = [cv2.resize(e, (W, H), interpolation=cv2.INTER_LINEAR) for e in edges]
        edges = np.stack(edges, axis=2)
        edge = 1 / (1 + np.exp(-np.mean(edges, axis=2).astype(np.float64)))
        return (edge * 255.0).clip(0, 255).astype(np.uint8)


def test_hed_matches_published_detector(tmp_path):
    from fresco.models.annotators import HED_FILE, HEDDetector, hed_state_dict
    from fresco.pipeline.control import control_maps
    state = hed_state_dict(widths=(4, 8, 8, 16, 16), seed=3)
    torch.save(state, tmp_path / HED_FILE)
    pub = _PublishedHED((4, 8, 8, 16, 16))
    pub.load_state_dict(state, strict=True)
    ours = HEDDetector.from_pretrained(str(tmp_path))
    frames = np.stack([synthetic_frame(3 * i, size=(96, 64)) for i in range(2)])
    want = np.stack([_published_hed_detect(pub, f) for f in frames])
    got = control_maps(frames, "hed", str(tmp_path))
    assert got.shape == (2, 64, 96, 3) and (got == got[..., :1]).all()
    assert np.array_equal(got[..., 0], want)
    assert np.array_equal(ours(frames[0]), want[0])
    assert want.std() > 0
    with pytest.raises(RuntimeError, match="annotator_path: .* has no ControlNetHED.pth"):
        control_maps(frames, "hed", str(tmp_path / "missing"))


def test_canny_thresholds():
    import cv2
    from fresco.pipeline.control import control_maps
    frames = np.stack([synthetic_frame(0, size=(64, 64))] * 2)
    got = control_maps(frames, "canny", canny_thresholds=(10, 250))
    assert np.array_equal(got[0, ..., 0], cv2.Canny(frames[0], 10, 250))
    assert not np.array_equal(got, control_maps(frames, "canny"))


# ---------------------------------------------------------------- VAE and scheduler
@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A tiny SD1.5 stand-in folder (fresco.models.test_models) with a scheduler config that differs from SD1.5's."""
    import json
    from fresco.models.test_models import write_sd_model
    root = tmp_path_factory.mktemp("hf")
    snap = write_sd_model(root, "org/some-model")
    cfg_path = snap / "scheduler" / "scheduler_config.json"
    sched = json.loads(cfg_path.read_text())
    sched["beta_end"] = 0.02
    cfg_path.write_text(json.dumps(sched))
    return snap


def test_scheduler_from_the_models_config(sd_folder):
    from diffusers import DDPMScheduler, PNDMScheduler
    from fresco.models.sd import load_components
    parts = load_components(str(sd_folder), controlnet_type=None, local_files_only=True, vae="own")
    assert isinstance(parts.scheduler, DDPMScheduler)
    # the published conversion: DDPMScheduler.from_config(pipe.scheduler.config)
    want = DDPMScheduler.from_config(PNDMScheduler.from_pretrained(sd_folder / "scheduler").config)
    assert parts.scheduler.config.beta_end == 0.02
    assert torch.equal(parts.scheduler.alphas_cumprod, want.alphas_cumprod)
    parts.scheduler.set_timesteps(20)
    assert [int(t) for t in parts.scheduler.timesteps][:3] == [951, 901, 851]


def test_vae_published_when_local_else_own_with_one_note(sd_folder, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL
    from fresco.models.sd import PUBLISHED_VAE, load_components
    from fresco.models.test_models import write_vae
    vae_dir = write_vae(tmp_path, PUBLISHED_VAE)
    real = AutoencoderKL.from_pretrained.__func__
    seen = []

    def fake(cls, name, *a, **kw):
        seen.append(name)
        if name == PUBLISHED_VAE:
            if not available:
                raise OSError("not in the cache")
            name = str(vae_dir)
        return real(cls, name, *a, **kw)
    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(fake))
    notes = []
    available = True
    parts = load_components(str(sd_folder), controlnet_type=None, local_files_only=True, vae=PUBLISHED_VAE,
                            log=notes.append)
    stand_in = AutoencoderKL.from_pretrained(str(vae_dir))
    assert torch.equal(parts.vae.decoder.conv_out.weight, stand_in.decoder.conv_out.weight) and not notes
    available = False
    parts = load_components(str(sd_folder), controlnet_type=None, local_files_only=True, vae=PUBLISHED_VAE,
                            log=notes.append)
    own = AutoencoderKL.from_pretrained(str(sd_folder), subfolder="vae")
    assert torch.equal(parts.vae.decoder.conv_out.weight, own.decoder.conv_out.weight)
    assert len(notes) == 1 and "not available locally" in notes[0]
    # an explicitly named VAE that is missing is an error, not a fallback
    with pytest.raises(RuntimeError, match="vae: could not load"):
        load_components(str(sd_folder), controlnet_type=None, local_files_only=True, vae=str(tmp_path / "none"))


# ---------------------------------------------------------------- schedule edge cases
def test_published_smoothing_and_optimisation_steps_at_20():
    from fresco.pipeline import scaled_schedule
    s = scaled_schedule(20, 5, None, None)
    assert s["bg_smoothing_steps"] == [16, 17] and s["end_opt_step"] == 15


def test_pure_noise_mode():
    """num_warmup_steps < 0 as published: every step runs, starting from the seed's noise (frame 0's, repeated)."""
    from fresco.pipeline import FrescoPipeline
    pipe = FrescoPipeline.tiny(seed=0)
    frames = np.stack([synthetic_frame(3 * i, size=(64, 64)) for i in range(2)])
    out = pipe(frames, "a cat", num_inference_steps=3, num_warmup_steps=-1, opt_iters=1, seed=4,
               return_anchor_record=True)
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    assert len(out.anchor_record) == 3 and out.steps["num_warmup_steps"] == 0
    assert torch.equal(out.anchor_record[0], noise[[0, 0]])
    sdedit = pipe(frames, "a cat", num_inference_steps=3, num_warmup_steps=0, opt_iters=1, seed=4,
                  return_anchor_record=True)
    assert not torch.equal(sdedit.anchor_record[0], out.anchor_record[0])
