"""Names that vulture (tests/test_unused_code.py) cannot see used because something other than Python code calls
them. Each entry says who uses it. Not imported by anything: vulture reads it alongside the packages."""
# ruff: noqa
# fresco_kernels/*/op.py: fake (meta) kernels are defined as `def _(...)` under @torch.library.register_fake; the
# decorator registers them and torch calls them while tracing (torch.compile, opcheck, FakeTensorMode)
_
