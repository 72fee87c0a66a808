"""The `fresco` torch.library namespace: schemas are defined here (Python), kernels per device elsewhere."""
from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Callable

import torch

from . import _config

lib = torch.library.Library("fresco", "FRAGMENT")

# which implementation serves each op on CPU ("cpp" | "reference"), for `fresco info`
CPU_IMPL: dict = {}
_PY_CPU: set = set()

_cpp_state = {"loaded": False, "tried": False, "reason": "not tried"}


def load_cpp() -> bool:
    """Load the compiled CPU kernels once, softly: on any problem warn and fall back to the reference."""
    if _cpp_state["tried"]:
        return _cpp_state["loaded"]
    _cpp_state["tried"] = True
    here = os.path.dirname(__file__)
    libs = glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd"))
    if os.environ.get("FRESCO_C_LIB"):  # another build of the same kernels (`make sanitize`'s instrumented one)
        libs = [os.environ["FRESCO_C_LIB"]]
    if _config.NO_CPP:
        _cpp_state["reason"] = "disabled by FRESCO_NO_CPP=1"
        return False
    if not libs:
        _cpp_state["reason"] = "not built (install without FRESCO_BUILD_CPP=0 to build it)"
        return False
    try:
        with open(os.path.join(here, "_C_build.json")) as f:
            built_for = json.load(f)["torch"]
    except (OSError, ValueError, KeyError):
        built_for = None
    running = torch.__version__.split("+")[0]
    if built_for != running:
        _cpp_state["reason"] = f"built for torch {built_for}, running {running}: rebuild it"
        warnings.warn(f"fresco_kernels: C++ CPU kernels {_cpp_state['reason']}; using the PyTorch reference on CPU")
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError) as e:
        _cpp_state["reason"] = f"failed to load: {e}"
        warnings.warn(f"fresco_kernels: C++ CPU kernels {_cpp_state['reason']}; using the PyTorch reference on CPU")
        return False
    _cpp_state.update(loaded=True, reason="loaded")
    return True


def cpp_status() -> str:
    load_cpp()
    return _cpp_state["reason"]


def has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fresco::{name}", key)


def reference_vjp(fn: Callable, primals: tuple, cotangent=None) -> tuple:
    """(fn(*primals) detached, its vector-Jacobian product with `cotangent` (None: ones, for a scalar loss) for each
    primal). With torch.func.vjp, because an op's kernel runs below the Autograd dispatch key: there
    `torch.enable_grad()` + `torch.autograd.grad` build no graph, and the plain-PyTorch fallbacks would fail."""
    out, vjp = torch.func.vjp(fn, *primals)
    grads = vjp(torch.ones_like(out) if cotangent is None else cotangent)
    return out.detach(), grads


def impl_cpu(name: str, fallback: Callable) -> str:
    """Use the C++ kernel for `fresco::name` on CPU if the library provides one, else `fallback`.

    Returns which one is in use ("cpp" or "reference")."""
    load_cpp()
    if not has_kernel(name, "CPU"):
        lib.impl(name, fallback, "CPU")
        _PY_CPU.add(name)
    CPU_IMPL[name] = "cpp" if _cpp_state["loaded"] and name not in _PY_CPU else "reference"
    return CPU_IMPL[name]


def impl_cuda(name: str, launcher: Callable) -> None:
    lib.impl(name, launcher, "CUDA")




def register_fused_loss_autograd(loss_op: str, fwd_bwd_op: str, n_args: int) -> None:
    """Autograd of a fused loss pair whose first argument is the features and whose other arguments get no gradient:

    - `fresco::<fwd_bwd_op>(...) -> (loss, dL/dfeat)` computes both in one pass; its backward scales the stored
      gradient (the gradient output itself is not differentiable, and autograd does not zero-fill a gradient for it);
    - `fresco::<loss_op>(...) -> loss` keeps nothing in the forward; its backward runs the fused pass.
    """
    nones = (None,) * (n_args - 1)

    def setup_loss(ctx, inputs, output):
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        ctx.save_for_backward(*tensors)
        ctx.args = inputs
        ctx.tensor_pos = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)]

    def backward_loss(ctx, grad_loss):
        args = list(ctx.args)
        for i, t in zip(ctx.tensor_pos, ctx.saved_tensors):
            args[i] = t
        _, grad = getattr(torch.ops.fresco, fwd_bwd_op)(*args)
        return (grad * grad_loss,) + nones

    def setup_fwd_bwd(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def backward_fwd_bwd(ctx, grad_loss, _grad_of_grad):
        if grad_loss is None:
            return (None,) + nones
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss,) + nones

    torch.library.register_autograd(f"fresco::{loss_op}", backward_loss, setup_context=setup_loss)
    torch.library.register_autograd(f"fresco::{fwd_bwd_op}", backward_fwd_bwd, setup_context=setup_fwd_bwd)
