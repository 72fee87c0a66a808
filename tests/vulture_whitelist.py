"""Names that vulture (tests/test_unused_code.py) cannot see used because something other than Python code calls
them. Each entry says who uses it. Not imported by anything: vulture reads it alongside the packages."""
# ruff: noqa
# fresco_kernels/*/op.py: fake (meta) kernels are defined as `def _(...)` under @torch.library.register_fake; the
# decorator registers them and torch calls them while tracing (torch.compile, opcheck, FakeTensorMode)
_
# benchmarks/aot_check.py OfflineDriver: Triton's JIT asks the active driver for these while compiling
get_current_stream
get_current_target
# benchmarks/aot_check.py Row.spec: written to the AOT JSON, read back by benchmarks/gpu_check.py
spec
# benchmarks/kernel_stats.py: a pytest hook (the module is loaded with `pytest -p benchmarks.kernel_stats`)
pytest_sessionfinish
