"""Names that vulture (tests/test_unused_code.py) cannot see used because something other than Python code calls
them. Each entry says who uses it. Not imported by anything: vulture reads it alongside the packages."""
# ruff: noqa
# fresco_kernels/*/op.py: fake (meta) kernels are defined as `def _(...)` under @torch.library.register_fake; the
# decorator registers them and torch calls them while tracing (torch.compile, opcheck, FakeTensorMode)
_
# fresco/__init__.py: the module-level __getattr__ (PEP 562) that Python calls for the lazily imported names
__getattr__
# fresco/config.py: published YAML keys of tools this package replaces, accepted so the shipped configs load
run_ebsynth
max_process
gmflow_path
sod_path
use_salinecy
# fresco/pipeline/core.py: FrescoOutput's result fields (read by users and benchmarks) and the public constructor
peak_memory
peak_memory_bytes
anchor_record
steps
from_components
# fresco/pipeline/optimization.py: nn.Module.register_forward_pre_hook calls hook(module, args, kwargs)
module
# fresco/video/io.py: PyAV stream/frame settings (assigning the attribute configures the codec) and __exit__'s
# signature
thread_type
pix_fmt
options
sample_rate
tb
# benchmarks/aot_check.py OfflineDriver: Triton's JIT asks the active driver for these while compiling
get_current_stream
get_current_target
# benchmarks/aot_check.py Row.spec: written to the AOT JSON, read back by benchmarks/gpu_check.py
spec
# benchmarks/kernel_stats.py: a pytest hook (the module is loaded with `pytest -p benchmarks.kernel_stats`)
pytest_sessionfinish
# fresco/video/runner.py: the Runner protocol, named in render()'s annotations (LocalRunner, WavefrontRunner)
Runner
# fresco/distributed: actor methods called by name through ActorPool.submit(key, "method", ...)
run_batch
propagate_segment
render_job
# fresco/score.py ScoreResult.versions: written to the score JSON (dataclasses.asdict)
versions
# fresco/models/addons.py load_ip_adapter: diffusers' StableDiffusionPipeline.encode_image reads pipe.feature_extractor
feature_extractor
# fresco/knobs.py _SHORT: reprlib.Repr's limits, read by Repr.repr itself
maxdict
maxlevel
maxlist
maxother
maxstring
maxtuple
