#!/usr/bin/env bash
# Downloads, here (with internet), the wheels `make gpu-check` needs on the GPU machine that its image lacks
# (diffusers, transformers and their pure-Python/binary dependencies; the image has torch, Triton, pytest,
# pytest-benchmark, opencv, numpy). Pinned to the versions this checkout is tested with (the local venv), for
# CPython 3.11 on manylinux x86_64. The folder (gitignored, < 64 MiB) travels with the device run's `carry`;
# the check installs from it offline:  pip install --no-index --find-links gpu_wheels diffusers transformers
#   usage: benchmarks/prepare_gpu_check.sh [PYTHON] [DEST]     (defaults: python3, gpu_wheels)
set -euo pipefail
PY=${1:-python3}
DEST=${2:-gpu_wheels}
PKGS=(diffusers transformers huggingface_hub safetensors tokenizers hf_xet regex httpx2 httpcore2 h11 anyio idna
      truststore certifi click pyyaml packaging tqdm requests charset_normalizer urllib3 pillow importlib_metadata
      zipp lazy-importer typer pydantic pydantic_core annotated_types typing_inspection typing_extensions
      shellingham rich markdown_it_py mdurl pygments annotated-doc filelock fsspec)
mkdir -p "$DEST"
specs=()
for p in "${PKGS[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null || true)
  if [ -z "$v" ]; then echo "prepare_gpu_check: $p is not installed in $PY; skipped" >&2; continue; fi
  specs+=("$p==$v")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --dest "$DEST" --python-version 3.11 --implementation cp \
  --abi cp311 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any "${specs[@]}"
size=$(du -sm "$DEST" | cut -f1)
echo "prepare_gpu_check: ${#specs[@]} wheels in $DEST (${size} MiB)"
if [ "$size" -ge 64 ]; then echo "prepare_gpu_check: over the 64 MiB carry limit" >&2; exit 1; fi
