"""The published configs run unchanged (only file_path/save_path replaced) through `fresco render --config`, offline,
against the random-weight stand-ins of `fresco make-test-models DIR`: the models resolved from the Hugging Face cache
layout (HF_HOME=DIR, HF_HUB_OFFLINE=1) and the configs' ./model/gmflow_sintel-0c07dcb3.pth and ./model/epoch_resnet.pth
from the working directory DIR. Every stage they name is honoured: the ControlNet annotator (HED, or MiDaS depth for
config_boxer), GMFlow (gmflow_path), EGNet saliency (sod_path, use_salinecy) with both background smoothings, the
published VAE. Speed overrides only: 64x64 frames, 2 diffusion steps (warm-up 0), 1 optimisation step of 1 Adam
iteration, the first 8 frames. All configs run in one subprocess (HF_HOME is read at import)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

sys.path.insert(0, str(Path(__file__).parent))
from published_configs import PUBLISHED_CONFIGS, write_config  # noqa: E402

SPEED = ["--size", "64x64", "--steps", "2", "--warmup-steps", "0", "--end-opt-step", "1", "--opt-iters", "1",
         "--max-frames", "8", "-q"]

pytestmark = pytest.mark.slow  # `pytest -m "not slow"`: the quick loop (README)

# run in the subprocess: write the stand-ins, render each config, and record per config what ran (the pipeline's
# event counts, the background maps it got, the annotator and flow calls) into record.json

_SCRIPT = '''
import functools, json, sys
from collections import Counter
from fresco.cli import main
from fresco.models import gmflow, midas, annotators
from fresco.models.test_models import write_test_models
from fresco.pipeline import FrescoPipeline

write_test_models(".", sd_models=SD_MODELS)
rec = Counter()
call = FrescoPipeline.__call__

@functools.wraps(call)  # the stylizer checks the signature
def spy_call(self, *a, **kw):
    out = call(self, *a, **kw)
    rec["batches"] += 1
    rec["background"] += kw.get("background") is not None
    rec["smooth_features"] += out.count("smooth_features")
    rec["smooth_x0"] += out.count("smooth_x0")
    return out

def counting(cls, name, key):
    f = getattr(cls, name)

    @functools.wraps(f)
    def g(*a, **kw):
        rec[key] += 1
        return f(*a, **kw)
    setattr(cls, name, g)

FrescoPipeline.__call__ = spy_call
counting(gmflow.GMFlowEstimator, "_run", "gmflow")
counting(midas.DepthDetector, "__call__", "depth")
counting(annotators.HEDDetector, "__call__", "hed")
records, rc = {}, 0
for name, argv in RUNS:
    rec.clear()
    rc = max(rc, main(argv))
    records[name] = dict(rec)
json.dump(records, open("record.json", "w"))
sys.exit(rc)
'''


def _run_configs(tmp_path, names):
    """Write the configs `names`; in a fresh folder DIR, write the stand-ins and render the configs in one offline
    subprocess (cwd DIR, HF_HOME=DIR). Returns (stderr, {config: record})."""
    from fresco.video import make_synthetic_clip
    clip = make_synthetic_clip(tmp_path / "clip.mp4", 10, (96, 64), fps=24)
    runs = []
    for name in names:
        cfg = write_config(name, str(tmp_path / f"config_{name}.yaml"), str(clip), str(tmp_path / "out" / name))
        runs.append((name, ["render", "--config", cfg, *SPEED]))
    models = sorted({PUBLISHED_CONFIGS[n]["sd_path"] for n in names})
    work = tmp_path / "hf"
    work.mkdir()
    script = _SCRIPT.replace("SD_MODELS", repr(models)).replace("RUNS", repr(runs))
    env = dict(os.environ, HF_HOME=str(work), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=work, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in names:
        out = tmp_path / "out" / name
        state = json.loads((out / "state.json").read_text())
        assert state["complete"] and state["n_frames"] == 8, name
        assert (out / "video.mp4").is_file() and sorted(os.listdir(out / "keys")), name
    # the support checkpoints are where the configs name them, relative to the working directory
    for name in names:
        for key in ("gmflow_path", "sod_path"):
            assert (work / PUBLISHED_CONFIGS[name][key]).is_file()
    return r.stderr, json.loads((work / "record.json").read_text())


def test_published_configs_run_unchanged_offline(tmp_path):
    """config_boxer (MiDaS depth), config_carturn, config_dog, config_music (HED; realistic and anime base models):
    every stage the config names runs."""
    names = sorted(PUBLISHED_CONFIGS)
    assert names == ["boxer", "carturn", "dog", "music"]
    err, records = _run_configs(tmp_path, names)
    # nothing the configs set is reported as ignored: gmflow_path, sod_path and use_salinecy are honoured
    assert "has no effect" not in err, err[-2000:]
    # the published VAE stand-in is found in the cache: no fallback note
    assert "not available locally" not in err
    for name in names:
        rec = records[name]
        assert rec["batches"] >= 1, name
        # GMFlow (gmflow_path) serves the batches and the propagation
        assert rec.get("gmflow", 0) >= rec["batches"], (name, rec)
        # EGNet (sod_path, use_salinecy): every batch gets a background map and both smoothings run
        assert rec["background"] == rec["batches"], (name, rec)
        assert rec["smooth_features"] > 0 and rec["smooth_x0"] > 0, (name, rec)
        # the config's annotator made the condition images (one map per keyframe at least)
        kind = PUBLISHED_CONFIGS[name]["controlnet_type"]
        other = {"depth": "hed", "hed": "depth"}[kind]
        assert rec.get(kind, 0) >= rec["batches"] and rec.get(other, 0) == 0, (name, rec)
