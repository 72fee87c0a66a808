"""`fresco make-test-models DIR`: random-weight stand-ins for every model the published FRESCO configs name, so that
`cd DIR && HF_HOME=DIR HF_HUB_OFFLINE=1 fresco render --config config_music.yaml` runs a published config unchanged
(but for file_path/save_path) offline with every stage it names:

- in the Hugging Face cache layout (DIR/hub/models--org--name/snapshots/<rev>/..., refs/main): sd_path, the
  ControlNets, the VAE and the annotators. SD1.5 folders (unet, vae, text_encoder, tokenizer, scheduler with
  SD1.5's PNDM config, as the real repositories ship it) at tiny widths (fresco.models.tiny_components), the three
  v1.0 ControlNets, sd-vae-ft-mse, and lllyasviel/Annotators' ControlNetHED.pth and dpt_hybrid-midas-501f0c75.pt
  (the published parameter names, tiny widths);
- a CLIP model for `fresco score` (openai/clip-vit-large-patch14: transformers CLIPModel, processor and the
  byte-level tokenizer, 2 layers 32 wide, 32x32 images);
- the support checkpoints the configs name relative to the working directory (`SUPPORT_FILES`):
  DIR/model/gmflow_sintel-0c07dcb3.pth (GMFlow, full size: 19 MB) and DIR/model/epoch_resnet.pth (EGNet, the
  published names at 1/16 of the widths: 1.9 MB instead of 450 MB); the loaders read the widths from the shapes;
- the ControlNet 1.1 repositories the softedge/scribble preprocessors select (fresco.models.addons), and under
  DIR/user the files users bring (fresco.models.test_addons): a single-file checkpoint, kohya and diffusers LoRAs,
  an embedding, an IP-Adapter.

The outputs are noise: they exist for tests and the offline demo."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..constants import DEFAULT_CLIP
from . import egnet, gmflow
from .annotators import ANNOTATORS_REPO, HED_FILE, hed_state_dict
from .midas import MIDAS_FILE, midas_state_dict
from .sd import CONTROLNET_IDS, PUBLISHED_VAE, SD15_SCHEDULER, tiny_components
from .sd import stand_in_seed as _seed
from .test_addons import write_user_files

# the base models of the published configs (config/*.yaml) and of the published web UI's model list
PUBLISHED_SD_MODELS = ("runwayml/stable-diffusion-v1-5", "SG161222/Realistic_Vision_V2.0",
                       "stablediffusionapi/rev-animated", "stablediffusionapi/flat-2d-animerge")
# the published configs' gmflow_path and sod_path, relative to the working directory
SUPPORT_FILES = {"gmflow": "model/gmflow_sintel-0c07dcb3.pth", "sod": "model/epoch_resnet.pth"}
SOD_WIDTH_DIV = 16


def _revision(repo: str) -> str:
    """A fixed 40-hex revision per repository (stand-ins are not real commits)."""
    return hashlib.sha1(f"fresco-stand-in:{repo}".encode()).hexdigest()


def snapshot_dir(hf_home: Union[str, Path], repo: str) -> Path:
    """DIR/hub/models--org--name/snapshots/<rev> for `repo`, with refs/main pointing at it (created)."""
    root = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    rev = _revision(repo)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(rev)
    snap = root / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_sd_model(hf_home: Union[str, Path], repo: str) -> Path:
    """A tiny SD1.5-structured diffusers folder for `repo` (the scheduler as SD1.5's PNDM config)."""
    from diffusers import PNDMScheduler
    snap = snapshot_dir(hf_home, repo)
    parts = tiny_components(seed=_seed(repo), controlnet=False)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(parts, name).save_pretrained(snap / name)
    sched = {k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "prediction_type")}
    PNDMScheduler(**sched, skip_prk_steps=True, set_alpha_to_one=False).save_pretrained(snap / "scheduler")
    (snap / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None]}, indent=1))
    return snap


def write_controlnet(hf_home: Union[str, Path], repo: str) -> Path:
    """A tiny ControlNet matching the stand-in UNets (the same block structure and widths)."""
    snap = snapshot_dir(hf_home, repo)
    tiny_components(seed=_seed(repo), controlnet=True, text_encoder=False).controlnet.save_pretrained(snap)
    return snap


def write_vae(hf_home: Union[str, Path], repo: str = PUBLISHED_VAE) -> Path:
    snap = snapshot_dir(hf_home, repo)
    tiny_components(seed=_seed(repo), controlnet=False, text_encoder=False).vae.save_pretrained(snap)
    return snap


def write_annotators(hf_home: Union[str, Path]) -> Path:
    """lllyasviel/Annotators with random-weight ControlNetHED.pth and dpt_hybrid-midas-501f0c75.pt (the published
    parameter names, tiny widths)."""
    snap = snapshot_dir(hf_home, ANNOTATORS_REPO)
    torch.save(hed_state_dict(seed=_seed(ANNOTATORS_REPO)), snap / HED_FILE)
    torch.save(midas_state_dict(seed=_seed(MIDAS_FILE)), snap / MIDAS_FILE)
    return snap


def write_clip(hf_home: Union[str, Path], repo: Optional[str] = None) -> Path:
    """A random-weight transformers CLIPModel with its processor (image processor + `tiny_tokenizer`) for `repo`
    (default fresco.constants.DEFAULT_CLIP), loadable offline by `fresco score --clip`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    from .sd import text_config, tiny_tokenizer
    repo = repo or DEFAULT_CLIP
    snap = snapshot_dir(hf_home, repo)
    tokenizer = tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    config = CLIPConfig(text_config=text_config(True, vocab_size=len(tokenizer)).to_dict(),
                        vision_config=vision.to_dict(), projection_dim=32)
    torch.manual_seed(_seed(repo))
    CLIPModel(config).save_pretrained(snap)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(snap)
    return snap


def write_support_models(root: Union[str, Path]) -> list[Path]:
    """root/model/gmflow_sintel-0c07dcb3.pth and root/model/epoch_resnet.pth (`SUPPORT_FILES`): the published
    configs' gmflow_path and sod_path resolve to them when the render runs with root as its working directory."""
    root = Path(root)
    return [Path(gmflow.write_random_checkpoint(root / SUPPORT_FILES["gmflow"], seed=_seed("gmflow"))),
            Path(egnet.write_random_checkpoint(root / SUPPORT_FILES["sod"], seed=_seed("egnet"),
                                               width_div=SOD_WIDTH_DIV))]


def write_test_models(hf_home: Union[str, Path], sd_models: Optional[Sequence[str]] = None) -> list[str]:
    """Write every stand-in under `hf_home` (the published SD models unless `sd_models`) and the support
    checkpoints under hf_home/model; returns the repo ids and the support files' paths relative to hf_home."""
    hf_home = Path(hf_home)
    written = []
    for repo in (PUBLISHED_SD_MODELS if sd_models is None else sd_models):
        write_sd_model(hf_home, repo)
        written.append(repo)
    from ..addon_specs import DEFAULT_CONTROLNETS
    for repo in dict.fromkeys([*CONTROLNET_IDS.values(), *DEFAULT_CONTROLNETS.values()]):
        write_controlnet(hf_home, repo)
        written.append(repo)
    write_vae(hf_home)
    written.append(PUBLISHED_VAE)
    write_annotators(hf_home)
    written.append(ANNOTATORS_REPO)
    write_clip(hf_home)
    written.append(DEFAULT_CLIP)
    write_support_models(hf_home)
    written.extend(SUPPORT_FILES.values())
    if sd_models is None or "runwayml/stable-diffusion-v1-5" in sd_models:
        written.extend(str(p.relative_to(hf_home)) for p in write_user_files(hf_home).values())
    return written
