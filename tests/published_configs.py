"""The published FRESCO configs (williamyang1991/FRESCO config/config_*.yaml), transcribed key by key with their
values; only file_path and save_path are replaced when written out. Used by tests/test_published_configs.py and by
`make demo` (`python tests/published_configs.py NAME OUT.yaml --file-path CLIP --save-path DIR`)."""
import argparse
import sys

_SUPPORT = dict(gmflow_path="./model/gmflow_sintel-0c07dcb3.pth", sod_path="./model/epoch_resnet.pth",
                use_salinecy=True)
_RUN = dict(batch_size=8, num_inference_steps=20, end_opt_step=15, run_ebsynth=False, max_process=4)

PUBLISHED_CONFIGS = {
    "boxer": dict(file_path="./data/boxer-punching-towards-camera.mp4",
                  save_path="./output/boxer-punching-towards-camera/", mininterv=2, maxinterv=2, seed=0,
                  prompt="An African American boxer wearing black boxing gloves punches towards the camera, "
                         "cartoon style",
                  sd_path="stablediffusionapi/flat-2d-animerge", use_controlnet=True, controlnet_type="depth",
                  cond_scale=0.7, use_freeu=False, num_warmup_steps=5, **_RUN, **_SUPPORT),
    "carturn": dict(file_path="./data/car-turn.mp4", save_path="./output/car-turn/", mininterv=5, maxinterv=5,
                    seed=0, prompt="a red car turns in the winter", sd_path="SG161222/Realistic_Vision_V2.0",
                    use_controlnet=True, controlnet_type="hed", cond_scale=0.7, use_freeu=False,
                    num_warmup_steps=5, **_RUN, **_SUPPORT),
    "dog": dict(file_path="./data/dog.mp4", save_path="./output/dog/", mininterv=10, maxinterv=30, seed=0,
                prompt="greetings from a fox by shaking front paws", sd_path="SG161222/Realistic_Vision_V2.0",
                use_controlnet=True, controlnet_type="hed", cond_scale=1.0, use_freeu=False, num_warmup_steps=8,
                **_RUN, **_SUPPORT),
    "music": dict(file_path="./data/music.mp4", save_path="./output/music/", mininterv=10, maxinterv=30, seed=0,
                  prompt="A beautiful woman with headphones listening to music in CG cyberpunk style, neon, "
                         "closed eyes, colorful",
                  sd_path="stablediffusionapi/rev-animated", use_controlnet=True, controlnet_type="hed",
                  cond_scale=1.0, use_freeu=False, num_warmup_steps=3, **_RUN, **_SUPPORT),
}


def write_config(name: str, path: str, file_path: str, save_path: str) -> str:
    """Write published config `name` as YAML to `path` with only the two paths replaced."""
    import yaml
    data = dict(PUBLISHED_CONFIGS[name], file_path=file_path, save_path=save_path)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name", choices=sorted(PUBLISHED_CONFIGS))
    ap.add_argument("out")
    ap.add_argument("--file-path", required=True)
    ap.add_argument("--save-path", required=True)
    a = ap.parse_args()
    print(write_config(a.name, a.out, a.file_path, a.save_path))
    sys.exit(0)
