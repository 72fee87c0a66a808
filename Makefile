# Two set-up commands for a fresh machine (README): `make demo` and `make test`. Both create .venv and install first.
# GPU machines: `make bench-gpu` (uses the machine's own python3 + torch; writes JSON + Markdown to $(OUT)).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fresco-installed
OUT ?= benchmarks/out
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.8.0

.PHONY: real-clips real-clips-extract install demo ui demo-ops bench-e2e-video bench-propagation bench-propagation-real test test-cuda bench-cpu bench-gpu bench-e2e clean aot-check gpu-check sanitize

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==$(TORCH_VERSION) triton==$(TRITON_VERSION)
	$(BIN)/pip install -q --no-build-isolation -e '.[dev,pipeline,ui,ray]'
	touch $(STAMP)

install: $(STAMP)

# a short offline render of the published config_music.yaml, unchanged but for its two paths, against random-weight
# stand-ins of every model it names (fresco make-test-models: the Hugging Face cache layout, and the config's
# ./model/gmflow_sintel-0c07dcb3.pth and ./model/epoch_resnet.pth, so the render runs in that folder) on a generated
# 72-frame clip; speed flags only: 64x64 frames, 4 steps. The output is noise: the point is that the published
# config runs with every stage it names (HED, GMFlow, EGNet saliency). DEMO_CONFIG=boxer runs the depth one.
DEMO_OUT ?= out/demo
DEMO_CONFIG ?= music
DEMO_ABS = $(abspath $(DEMO_OUT))
demo: $(STAMP)
	$(BIN)/fresco make-clip $(DEMO_OUT)/clip.mp4 --frames 72 --size 128x128 --overwrite
	$(BIN)/fresco make-test-models $(DEMO_OUT)/hf
	$(BIN)/python tests/published_configs.py $(DEMO_CONFIG) $(DEMO_OUT)/config_$(DEMO_CONFIG).yaml \
		--file-path $(DEMO_ABS)/clip.mp4 --save-path $(DEMO_ABS)/$(DEMO_CONFIG)
	cd $(DEMO_OUT)/hf && HF_HOME=$(DEMO_ABS)/hf HF_HUB_OFFLINE=1 $(abspath $(BIN))/fresco render \
		--config $(DEMO_ABS)/config_$(DEMO_CONFIG).yaml \
		--size 64x64 --steps 4 --warmup-steps 1 --end-opt-step 2 --opt-iters 2 --overwrite

# the web UI on http://127.0.0.1:7860 with the offline tiny model preselected (README "Web UI")
ui: $(STAMP)
	$(BIN)/fresco ui --model tiny-random --out out/ui

# the ops alone: fused vs reference agreement and timing on a generated clip with known motion
demo-ops: $(STAMP)
	$(BIN)/python -m fresco_kernels.demo

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench-cpu: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m pytest benchmarks -q --benchmark-json=$(OUT)/bench-cpu.json
	$(BIN)/python -m benchmarks.report $(OUT)/bench-cpu.json --plots $(OUT)/plots-cpu --label CPU > $(OUT)/bench-cpu.md
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

# Offline, no GPU: compile every Triton kernel x autotune config for sm_80 and sm_90 (registers, spills, shared
# memory; fails on compile errors, hot-kernel spills, unpruned configs over a target's shared memory). Writes
# $(OUT)/aot-triton-<version>.json/.md. A second Triton too: make aot-check TRITON36=/path/to/venv/bin/python
AOT_PY ?= $(BIN)/python
aot-check: $(if $(filter $(BIN)/python,$(AOT_PY)),$(STAMP))
	mkdir -p $(OUT)
	status=0; \
	PYTHONPATH=. $(AOT_PY) -m benchmarks.aot_check --out $(OUT) || status=1; \
	$(if $(TRITON36),PYTHONPATH=. $(TRITON36) -m benchmarks.aot_check --out $(OUT) || status=1;) \
	exit $$status

# On the GPU machine (issue 14): the essential GPU verification in <= 8 minutes of command time (parity tests,
# L3 rows, trajectory attention, one end-to-end batch, launched kernels' registers vs the AOT table) -> $(OUT).
# diffusers & co come from gpu_wheels/ (benchmarks/prepare_gpu_check.sh, carried with the run), installed offline.
gpu-check:
	mkdir -p $(OUT)
	test ! -d gpu_wheels || $(PY) -m pip install -q --no-index --find-links gpu_wheels diffusers transformers
	PYTHONPATH=. $(PY) -m benchmarks.gpu_check --out $(OUT) --budget 440

# issue 13: propagation quality (nearest key / flow blend / patch synthesis) on procedural clips with a deterministic
# style, intervals 10 and 30 at 128² (the tuning clips, then held-out textures: --seed 2), plus the patch method's time
# per in-between frame at 512² (CPU)
bench-propagation: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/python -m benchmarks.propagation_quality --size 128 --intervals 10 30 --timing 512 --out $(OUT)/propagation
	$(BIN)/python -m benchmarks.propagation_quality --size 128 --intervals 10 30 --seed 2 --out $(OUT)/propagation-heldout

# issue 25: the real clips (make real-clips) at 256 and 512 px, both styles, keys every 10 and 30 frames, every
# method, then the procedural clips in both styles (SIZES, WINDOWS and FRAMES narrow it, PROCEDURAL=0 skips the
# procedural tables; about an hour on 2 cores). DENSE=2 adds, per window, every method with a key every 2 frames,
# scored against the flow blend at 10 and 30 on the frames in-between at both: how far denser true keys would go
# (the real tables only; it more than doubles their time). DEFLICKER=S adds every method with `deflicker: S`
# (rows "<method>+d<S>"). FLOW=deepflow or FLOW=tvl1 runs every method along OpenCV-contrib's DeepFlow or TV-L1
# instead of the propagation's DIS (needs cv2.optflow importable, e.g. PYTHONPATH=DIR after pip install --target DIR
# opencv-contrib-python-headless; quality only)
SIZES ?= 256 512
WINDOWS ?= 1
FRAMES ?= 31
PROCEDURAL ?= 1
DENSE ?= 0
DEFLICKER ?= 0
FLOW ?= dis
bench-propagation-real: $(STAMP) real-clips
	mkdir -p $(OUT)
	for size in $(SIZES); do for style in flat pencil; do \
		$(BIN)/python -m benchmarks.propagation_quality --real $(REAL_CLIPS) --size $$size --frames $(FRAMES) \
			--windows $(WINDOWS) --intervals 10 30 --style $$style --clips --dense $(DENSE) \
			--deflicker $(DEFLICKER) --flow $(FLOW) \
			--out $(OUT)/propagation-real-$$style-$$size || exit 1; done; done
	test "$(PROCEDURAL)" = 0 || for style in flat pencil; do \
		$(BIN)/python -m benchmarks.propagation_quality --size 128 --intervals 10 30 --style $$style \
			--out $(OUT)/propagation-procedural-$$style || exit 1; done

# issue 24: the C++ kernels built once more with -fsanitize=address,undefined into build/sanitize/ (the normal .so is
# untouched) and loaded instead of it (FRESCO_C_LIB=build/sanitize/_C_asan.so, with LD_PRELOAD of g++'s libasan.so
# and libstdc++.so and ASAN_OPTIONS=detect_leaks=0, since python itself is not instrumented): the ops'
# CPU tests and a small whole render (patch and flow) must give no report; then the shipped .so under valgrind
# memcheck on every C++ op at small shapes (tools/sanitize_ops.py). Needs g++ and valgrind (apt-get install valgrind).
# Summary lines: build/sanitize/summary.txt.
sanitize: $(STAMP)
	PY=$(BIN)/python tools/sanitize.sh

# issue 25: real footage for the propagation benchmark, from Debian's opencv-doc (apt-get download + dpkg -x, no
# root needed) into the ignored $(REAL_CLIPS); nothing is committed. Then e.g.
#   python -m benchmarks.propagation_quality --real $(REAL_CLIPS) --size 256 --intervals 10 --style pencil
REAL_CLIPS ?= .cache/real-clips
REAL_CLIP_FILES := Megamind.avi vtest.avi tree.avi box.mp4 cup.mp4
real-clips:
	@missing=0; for f in $(REAL_CLIP_FILES); do test -s $(REAL_CLIPS)/$$f || missing=1; done; \
		if [ $$missing = 0 ]; then echo "real-clips: all five clips already in $(REAL_CLIPS)"; \
		else $(MAKE) --no-print-directory real-clips-extract; fi

real-clips-extract:
	mkdir -p $(REAL_CLIPS)/deb
	test -n "$$(ls $(REAL_CLIPS)/deb/opencv-doc_*.deb 2>/dev/null)" || (cd $(REAL_CLIPS)/deb && apt-get download opencv-doc)
	dpkg -x $$(ls $(REAL_CLIPS)/deb/opencv-doc_*.deb | head -1) $(REAL_CLIPS)/pkg
	for f in Megamind.avi vtest.avi tree.avi; do \
		cp $$(find $(REAL_CLIPS)/pkg -name $$f | head -1) $(REAL_CLIPS)/$$f; done
	for f in box cup; do \
		gunzip -c $$(find $(REAL_CLIPS)/pkg -name $$f.mp4.gz | head -1) > $(REAL_CLIPS)/$$f.mp4; done
	rm -rf $(REAL_CLIPS)/pkg
	ls -l $(REAL_CLIPS)
