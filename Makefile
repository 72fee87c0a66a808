# Two set-up commands for a fresh machine (README): `make demo` and `make test`. Both create .venv and install first.
# GPU machines: `make bench-gpu` (uses the machine's own python3 + torch; writes JSON + Markdown to $(OUT)).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fresco-installed
OUT ?= benchmarks/out
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.8.0

.PHONY: install demo demo-ops bench-e2e-video bench-propagation test test-cuda bench-cpu bench-gpu bench-e2e clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==$(TORCH_VERSION) triton==$(TRITON_VERSION)
	$(BIN)/pip install -q --no-build-isolation -e '.[dev,pipeline]'
	touch $(STAMP)

install: $(STAMP)

# a short offline render: a generated 72-frame clip through the whole pipeline with the tiny random-weight model
DEMO_OUT ?= out/demo
demo: $(STAMP)
	$(BIN)/fresco make-clip $(DEMO_OUT)/clip.mp4 --frames 72 --size 128x128
	$(BIN)/fresco render $(DEMO_OUT)/clip.mp4 --prompt "a watercolor painting" --model tiny-random --size 64x64 \
		--steps 4 --warmup-steps 1 --end-opt-step 2 --opt-iters 2 --s-min 4 --s-max 12 --batch-size 4 \
		-o $(DEMO_OUT) --overwrite

# the ops alone: fused vs reference agreement and timing on a generated clip with known motion
demo-ops: $(STAMP)
	$(BIN)/python -m fresco_kernels.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench-cpu: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m pytest benchmarks -q --benchmark-json=$(OUT)/bench-cpu.json
	$(BIN)/python -m benchmarks.report $(OUT)/bench-cpu.json > $(OUT)/bench-cpu.md
	cat $(OUT)/bench-cpu.md

# On the GPU machine: no venv, the machine's torch + Triton; C++ not needed for CUDA.
test-cuda:
	PYTHONPATH=. $(PY) -m pytest tests -q -m cuda

bench-gpu:
	mkdir -p $(OUT)
	PYTHONPATH=. $(PY) -m pytest tests -q -m cuda -p no:cacheprovider | tee $(OUT)/cuda-tests.txt
	PYTHONPATH=. $(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-json=$(OUT)/bench-gpu.json
	PYTHONPATH=. $(PY) -m benchmarks.report $(OUT)/bench-gpu.json > $(OUT)/bench-gpu.md
	cat $(OUT)/bench-gpu.md

# FRESCO end to end on one batch (random SD1.5 weights, fused vs reference, time per stage + peak memory);
# needs diffusers on the machine. Split a long matrix with ARGS, e.g. ARGS="--sizes 512x896 --n 16".
bench-e2e:
	mkdir -p $(OUT)
	PYTHONPATH=. $(PY) -m benchmarks.e2e --out $(OUT) $(ARGS)

clean:
	rm -rf build *.egg-info fresco_kernels/_C*.so fresco_kernels/_C_build.json

# issue 6's GPU check: a 100-frame 512² clip through fresco.video.render, SD1.5-architecture random weights, per stage
bench-e2e-video:
	mkdir -p $(OUT)
	PYTHONPATH=. $(PY) -m benchmarks.e2e_video --out $(OUT)

# issue 13: propagation quality (nearest key / flow blend / patch synthesis) on procedural clips with a deterministic
# style, intervals 10 and 30 at 128², plus the patch method's time per in-between frame at 512² (CPU)
bench-propagation: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m benchmarks.propagation_quality --size 128 --intervals 10 30 --timing 512 --out $(OUT)/propagation
