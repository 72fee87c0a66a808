"""The models users bring (fresco.models.addons) against the random-weight stand-ins of fresco.models.test_addons:
single-file checkpoints (the original key names read back through diffusers' from_single_file), LoRA (kohya and
diffusers; weight 0 = no LoRA to the byte, weight 1 changes the output, fused = unfused within tolerance),
embeddings in prompt and negative prompt, several ControlNets with their scales, the IP-Adapter composed with
FRESCO's attention processors, the 1.1 preprocessors, and the one-line errors (exit 2) for files that do not fit."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from fresco import addon_specs, cli  # noqa: E402
from fresco.models import addons  # noqa: E402
from fresco.models.test_addons import write_embedding, write_user_files  # noqa: E402
from fresco.models.test_models import _seed, write_sd_model  # noqa: E402
from fresco.video import make_synthetic_clip  # noqa: E402

SD = "runwayml/stable-diffusion-v1-5"
# small, fast calls: 2 frames, 2 steps, no decoder optimisation (its backward pass dominates on CPU)
FAST = dict(num_inference_steps=2, num_warmup_steps=0, feature_optimization=False, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    config = write_sd_model(root, SD)
    out = write_user_files(root, SD)
    out["config"] = config
    return out


@pytest.fixture(scope="module")
def frames():
    return (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)


def _pipe(**kw):
    from fresco.pipeline import FrescoPipeline
    return FrescoPipeline.from_pretrained("tiny", device="cpu", dtype=torch.float32, **kw)


def write_sdxl_lora(path, seed: int = 3):
    """A LoRA with SDXL's kohya names (input_blocks, the second text encoder): must be refused for SD1.5."""
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(seed)
    unet = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    sd = {f"{unet}.lora_down.weight": torch.randn(4, 2048, generator=g),
          f"{unet}.lora_up.weight": torch.randn(640, 4, generator=g),
          f"{te2}.lora_down.weight": torch.randn(4, 1280, generator=g),
          f"{te2}.lora_up.weight": torch.randn(1280, 4, generator=g)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


# ------------------------------------------------------------------ parsing
def test_specs_parse():
    assert addon_specs.parse_lora("a.safetensors:0.5") == addon_specs.LoraSpec("a.safetensors", 0.5)
    assert addon_specs.parse_lora("a.safetensors") == addon_specs.LoraSpec("a.safetensors", 1.0)
    assert addon_specs.parse_embedding("dir/bad-hands.pt") == addon_specs.EmbeddingSpec("dir/bad-hands.pt", "bad-hands")
    assert addon_specs.parse_embedding("e.pt:<tok>").token == "<tok>"
    nets = addon_specs.parse_controlnets("hed:0.7,depth:0.5")
    assert [(c.model, c.preprocessor, c.scale) for c in nets] == [
        ("lllyasviel/sd-controlnet-hed", "hed", 0.7), ("lllyasviel/sd-controlnet-depth", "depth", 0.5)]
    v11 = addon_specs.parse_controlnets("lllyasviel/control_v11p_sd15_softedge:0.8,scribble")
    assert [(c.model, c.preprocessor, c.scale) for c in v11] == [
        ("lllyasviel/control_v11p_sd15_softedge", "softedge", 0.8),
        ("lllyasviel/control_v11p_sd15_scribble", "scribble", None)]  # None: cond_scale
    assert addon_specs.parse_controlnets("hed=someone/my-net")[0].preprocessor == "hed"
    for bad, match in (("a.safetensors:x", "WEIGHT"), ("a.safetensors:nan", r"in \[-10, 10\]"),
                       ("a.safetensors:1e308", r"in \[-10, 10\]"), ("a.safetensors:-10.5", r"in \[-10, 10\]")):
        with pytest.raises(ValueError, match=match):
            addon_specs.parse_lora(bad)
    for bad, match in (("hed:x", "SCALE"), ("hed:0.5,", "empty item"), ("someone/net", "preprocessor"),
                       ("nothing", "neither")):
        with pytest.raises(ValueError, match=match):
            addon_specs.parse_controlnets(bad)


def test_cli_controlnet_flag_keeps_single_type_and_takes_a_list():
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--controlnet", "hed"])
    cfg = cli._build_config(args)
    assert (cfg.controlnet_type, cfg.controlnets) == ("hed", None)
    args = cli.build_parser().parse_args(["render", "v.mp4", "--prompt", "p", "--controlnet", "hed:0.7,depth:0.5",
                                          "--lora", "a.safetensors:0.3", "--lora", "b.safetensors",
                                          "--embedding", "e.safetensors:<e>"])
    cfg = cli._build_config(args)
    assert (cfg.controlnet_type, cfg.controlnets) == ("canny", "hed:0.7,depth:0.5")
    assert cfg.loras == ["a.safetensors:0.3", "b.safetensors"] and cfg.embeddings == ["e.safetensors:<e>"]


def test_yaml_keys_reach_the_loaders(tmp_path):
    from fresco import config as cfgmod
    from fresco.video.stylize import model_kwargs, pipeline_key
    yml = tmp_path / "c.yaml"
    yml.write_text("file_path: v.mp4\nsave_path: o\nprompt: p\nsd_path: m.safetensors\nmodel_config: cfgdir\n"
                   "loras: ['a.safetensors:0.5', b.safetensors]\nfuse_lora: true\nembeddings: ['e.pt:tok']\n"
                   "ip_adapter: ip.safetensors\nip_image: s.png\nip_scale: 0.4\ncontrolnets: 'hed:0.7,depth:0.5'\n")
    cfg = cfgmod.from_mapping(cfgmod.load_yaml(yml)).validate()
    kw = model_kwargs(cfg)
    assert kw["model_config"] == "cfgdir"
    assert kw["addons"].loras == [addon_specs.LoraSpec("a.safetensors", 0.5), addon_specs.LoraSpec("b.safetensors", 1.0)]
    assert kw["addons"].fuse_lora and kw["addons"].embeddings == [addon_specs.EmbeddingSpec("e.pt", "tok")]
    assert (kw["addons"].ip_adapter, kw["addons"].ip_scale) == ("ip.safetensors", 0.4)
    assert [c.scale for c in kw["controlnets"]] == [0.7, 0.5]
    assert pipeline_key(cfg) != pipeline_key(cfg.replace(loras=["a.safetensors:0.6"]))
    with pytest.raises(ValueError, match="ip_adapter/ip_image"):
        cfg.replace(ip_image=None).validate()
    with pytest.raises(ValueError, match="model_config: only for a single-file"):
        cfg.replace(sd_path="runwayml/stable-diffusion-v1-5").validate()


# ------------------------------------------------------------------ files
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_reads_back_the_same_weights(suffix, files, tmp_path):
    from safetensors.torch import load_file

    from fresco.models.sd import tiny_components
    path = files["checkpoint"]
    if suffix == ".ckpt":  # the original layout: the weights under "state_dict" in a torch pickle
        path = tmp_path / "tiny-sd15.ckpt"
        torch.save({"state_dict": load_file(str(files["checkpoint"]))}, path)
    unet, vae, text, _, _ = addons.load_single_file(str(path), str(files["config"]), torch.float32)
    ref = tiny_components(seed=_seed(SD), controlnet=False)
    for got, want in ((unet, ref.unet), (vae, ref.vae), (text, ref.text_encoder)):
        a, b = got.state_dict(), want.state_dict()
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_file_without_configs_says_how(files, monkeypatch):
    monkeypatch.setattr(addons, "_cached_snapshot", lambda repo: None)
    with pytest.raises(FileNotFoundError, match="--model-config") as e:
        addons.single_file_config(None)
    assert "\n" not in str(e.value)


def test_truncated_safetensors_is_one_line_naming_the_file(files, tmp_path):
    data = files["kohya_lora"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as e:
        addons.check_safetensors(str(cut), "lora")
    assert str(cut) in str(e.value)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("clip") / "c.mp4", 6, (64, 64), fps=24)


def _bad_files(files, tmp):
    data = files["checkpoint"].read_bytes()
    cut = tmp / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    return {
        "sdxl_lora": (["--lora", str(write_sdxl_lora(tmp / "sdxl.safetensors"))], "sdxl.safetensors",
                      "an SDXL LoRA?): key 'lora_"),
        "truncated_model": (["--model", str(cut), "--model-config", str(files["config"])], "cut.safetensors",
                            "truncated"),
        "truncated_lora": (["--lora", str(cut)], "cut.safetensors", "truncated"),
        "wide_embedding": (["--embedding", str(write_embedding(tmp / "wide.safetensors", 768))], "wide.safetensors",
                           "768-wide"),
    }


@pytest.mark.parametrize("case", ["sdxl_lora", "truncated_model", "truncated_lora", "wide_embedding"])
def test_wrong_file_exits_2_with_one_line_before_loading(case, files, clip, tmp_path, capsys, monkeypatch):
    import fresco.models.sd as sd
    args, name, match = _bad_files(files, tmp_path)[case]
    monkeypatch.setattr(sd, "load_components", lambda *a, **k: pytest.fail("the model loaded before the check"))
    rc = cli.main(["render", str(clip), "--prompt", "p", "-o", str(tmp_path / "o"), "--model", "tiny-random",
                   "--size", "64x64", "-q"] + args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    line = [x for x in err if x.startswith("fresco: error:")]
    assert len(line) == 1 and name in line[0] and match in line[0], err


@pytest.mark.parametrize("kind", ["kohya_lora", "diffusers_lora"])
def test_lora_goes_into_unet_and_text_encoder(kind, files):
    from fresco.models.sd import load_components
    parts = load_components("tiny", controlnet_type=None,
                            addons=addons.Addons(loras=[addon_specs.LoraSpec(str(files[kind]))]))
    lora = [n for n, _ in parts.text_encoder.named_modules() if n.endswith("lora_A")]
    assert len(lora) == 2 * 4  # 2 layers x q/k/v/out of the stand-in text encoder
    assert sum(n.endswith("lora_A") for n, _ in parts.unet.named_modules()) == 128  # every to_q/k/v/out of the UNet


def test_lora_of_other_widths_names_the_first_key(files, tmp_path):
    from safetensors.torch import load_file, save_file
    sd = load_file(str(files["diffusers_lora"]))
    key = sorted(k for k in sd if k.startswith("unet.") and k.endswith("lora_A.weight"))[0]
    sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 8)
    bad = tmp_path / "wide.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ValueError, match="does not fit") as e:
        _pipe(addons=addons.Addons(loras=[addon_specs.LoraSpec(str(bad))]))
    msg = str(e.value)
    assert str(bad) in msg and ("lora_A" in msg or "lora.down" in msg) and "\n" not in msg


# ------------------------------------------------------------------ renders
@pytest.mark.slow
def test_lora_weight_zero_is_no_lora_and_fused_matches(files, frames):
    base = _pipe()(frames, "a cat", **FAST)
    for kind in ("kohya_lora", "diffusers_lora"):
        zero = _pipe(addons=addons.Addons(loras=[addon_specs.LoraSpec(str(files[kind]), 0.0)]))(frames, "a cat", **FAST)
        assert np.array_equal(zero.images, base.images), kind
    one = _pipe(addons=addons.Addons(loras=[addon_specs.LoraSpec(str(files["kohya_lora"]), 1.0)]))(frames, "a cat", **FAST)
    assert np.abs(one.images.astype(int) - base.images).max() > 20
    fused = _pipe(addons=addons.Addons(loras=[addon_specs.LoraSpec(str(files["kohya_lora"]), 1.0)], fuse_lora=True))
    out = fused(frames, "a cat", **FAST)
    # fused weights W + s*B@A vs the unfused W x + s*B(A x): float32 rounding only
    assert torch.allclose(out.latents, one.latents, atol=2e-3, rtol=1e-3), \
        (out.latents - one.latents).abs().max()
    again = _pipe(addons=addons.Addons(loras=[addon_specs.LoraSpec(str(files["kohya_lora"]), 1.0)]))(frames, "a cat",
                                                                                              **FAST)
    assert np.array_equal(again.images, one.images)  # deterministic


@pytest.mark.slow
def test_embedding_in_prompt_and_negative_prompt(files, frames):
    spec = addon_specs.EmbeddingSpec(str(files["embedding"]), "<tiny-style>")
    plain, pipe = _pipe(), _pipe(addons=addons.Addons(embeddings=[spec]))
    base = plain(frames, "a cat", **FAST).images
    assert np.array_equal(pipe(frames, "a cat", **FAST).images, base)  # loaded but unused: no change
    in_prompt = pipe(frames, "a <tiny-style> cat", **FAST).images
    in_negative = pipe(frames, "a cat", "<tiny-style>", **FAST).images
    assert not np.array_equal(in_prompt, base) and not np.array_equal(in_negative, base)
    ids = pipe.tokenizer(pipe.addons.loader.maybe_convert_prompt("<tiny-style>", pipe.tokenizer)).input_ids
    assert len(ids) == 2 + 2  # the two vectors of the stand-in embedding, between start and end


@pytest.mark.slow
def test_two_controlnets_each_with_its_scale(frames):
    nets = addon_specs.parse_controlnets("canny:0.7,scribble")  # scribble at the settings' cond_scale
    pipe = _pipe(controlnets=nets)
    calls = []
    for k, net in enumerate(pipe.controlnet.nets):
        net.register_forward_hook(lambda m, a, kw, out, k=k: calls.append((k, kw["conditioning_scale"])),
                                  with_kwargs=True)
    canny = np.zeros((2, 64, 64, 3), np.uint8)
    out = pipe(frames, "a cat", control_images=[canny, canny], cond_scale=0.4, **FAST)
    assert sorted(set(calls)) == [(0, 0.7), (1, 0.4)]
    assert len(calls) == 2 * FAST["num_inference_steps"]
    with pytest.raises(ValueError, match="one entry per ControlNet"):
        pipe(frames, "a cat", control_images=canny, **FAST)
    assert out.images.shape == frames.shape


def test_scribble_and_softedge_preprocessors(monkeypatch):
    from fresco.pipeline import control
    edges = np.zeros((1, 32, 32), np.uint8)
    edges[0, 16, 4:28] = 200
    s = control.scribble(edges)
    assert set(np.unique(s)) == {0, 255} and (s > 0).sum() > (edges > 127).sum()
    monkeypatch.setattr(control, "_hed", lambda path, dev: (lambda f: edges[0]))
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    assert np.array_equal(control.control_maps(frames, "softedge")[..., 0], edges)
    assert np.array_equal(control.control_maps(frames, "scribble")[..., 0], s)


@pytest.mark.slow
def test_ip_adapter_and_fresco_processors_both_run(files, frames):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from PIL import Image
    pipe = _pipe(addons=addons.Addons(ip_adapter=str(files["ip_adapter"]), ip_scale=1.0))
    ip_calls = []

    class Counting(IPAdapterAttnProcessor2_0):  # the processor defines __call__ itself: module hooks never fire
        def __call__(self, *a, **kw):
            ip_calls.append(1)
            return super().__call__(*a, **kw)

    procs = [p for p in pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert procs
    for p in procs:
        p.__class__ = Counting
    with pytest.raises(ValueError, match="style image"):
        pipe(frames, "a cat", **FAST)
    pipe.set_ip_adapter_image(Image.fromarray(frames[0]))
    out = pipe(frames, "a cat", **FAST)
    n_steps = FAST["num_inference_steps"]
    # FRESCO's processors ran on their layers at every step, IP-Adapter's on every cross-attention call
    assert out.count("cross_frame_attention") == n_steps * 6
    assert len(ip_calls) >= n_steps * len(procs)
    pipe.addons.loader.set_ip_adapter_scale(0.0)
    assert not np.array_equal(pipe(frames, "a cat", **FAST).images, out.images)  # the style image mattered


# ------------------------------------------------------------------ the README's examples
_README_SCRIPT = r'''
import json, shlex, sys
import numpy as np
from PIL import Image
from fresco.cli import main
from fresco.models.test_models import write_test_models
from fresco.video import make_synthetic_clip

write_test_models(".", sd_models=["runwayml/stable-diffusion-v1-5"])
make_synthetic_clip("clip.mp4", 6, (64, 64), fps=24)
Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save("style.png")
rcs = []
for k, line in enumerate(json.loads(sys.argv[1])):
    args = shlex.split(line)[1:] + ["-o", f"out/{k}"] + json.loads(sys.argv[2])
    rcs.append(main(args))
# every format at once from YAML (the keys of the flags above)
with open("all.yaml", "w") as f:
    f.write("file_path: clip.mp4\nsave_path: out/yaml\nprompt: a mystyle painting\n"
            "sd_path: user/tiny-sd15.safetensors\nloras: [user/kohya-lora.safetensors:0.8, "
            "user/diffusers-lora.safetensors:0.5]\nembeddings: [user/tiny-style.safetensors:mystyle]\n"
            "ip_adapter: user/ip-adapter/ip-adapter_sd15.safetensors\nip_image: style.png\nip_scale: 0.6\n"
            "controlnets: hed:0.7,scribble:0.5\n")
rcs.append(main(["render", "--config", "all.yaml"] + json.loads(sys.argv[2])))
print("RCS", json.dumps(rcs))
'''


def readme_examples() -> list:
    """The `fresco render` lines of the README's "Your own models" section."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Your own models", 1)[1].split("\n## ", 1)[0].replace("\\\n", " ")
    return [" ".join(ln.split()) for ln in section.splitlines() if ln.strip().startswith("fresco render")]


@pytest.mark.slow
def test_readme_examples_and_yaml_run_against_the_stand_ins(tmp_path):
    import json
    import os
    import subprocess
    import sys
    lines = readme_examples()
    flags = ("--model ", "--lora ", "--embedding ", "--ip-adapter ", "--controlnet ")
    assert all(any(f in " ".join(lines) for f in flags) for f in flags) and len(lines) >= 5
    speed = ["--size", "64x64", "--steps", "2", "--warmup-steps", "0", "--no-feature-optimization", "-q"]
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _README_SCRIPT, json.dumps(lines), json.dumps(speed)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=3000)
    rcs = [ln for ln in r.stdout.splitlines() if ln.startswith("RCS ")]
    assert rcs, r.stderr[-3000:]
    assert json.loads(rcs[0][4:]) == [0] * (len(lines) + 1), r.stderr[-3000:]
    for k in [str(k) for k in range(len(lines))] + ["yaml"]:
        assert (tmp_path / "out" / k / "video.mp4").is_file()


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_style_image_is_shrunk_as_it_is_read(tmp_path, ext):
    """The image encoder sees 224x224, so a 12000x12000 style photo need not be held whole (2.9 GB before, measured
    with CLIP's processor); a small image reaches the pipeline unchanged, a large one keeps its aspect ratio."""
    from PIL import Image
    rng = np.random.default_rng(0)
    small = (rng.random((300, 200, 3)) * 255).astype(np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    assert np.array_equal(np.asarray(addons.load_style_image(str(tmp_path / "small.png"))), small)
    big = Image.fromarray(small).convert("L").resize((3000, 2000))   # grey, so the RGB conversion is exercised
    big.save(tmp_path / f"big.{ext}")
    im = addons.load_style_image(str(tmp_path / f"big.{ext}"))
    assert im.mode == "RGB" and im.size == (addons.IP_IMAGE_SIDE, round(addons.IP_IMAGE_SIDE * 2 / 3))


@pytest.mark.parametrize("given", ["/nonexistent/folder", "a/b/c", "/dev/null"])
def test_model_config_that_is_no_folder_names_the_setting(given):
    """huggingface_hub's 'Repo id must ...' named neither --model-config nor what it accepts."""
    with pytest.raises(FileNotFoundError, match=r"^model_config: .* is neither a local folder nor in the local"):
        addons.single_file_config(given)
