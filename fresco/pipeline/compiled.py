"""torch.compile for FrescoPipeline (`FrescoSettings.compile`): what is compiled and how it stays compiled.

Compiled: the forward of every UNet down block, the mid block and every up block, and the ControlNet's whole
forward. The UNet's own forward (time embedding, conv_in/out, the loop over its blocks) stays eager, and so do the
forward pre-hooks on `unet.up_blocks[i]`: module hooks run in `nn.Module.__call__`, outside the block's `forward`
that is compiled here, so the feature optimisation (`backward()` + Adam, fresco.pipeline.optimization) and FreeU's
block hooks never enter a graph. FRESCO's attention processors run inside the up blocks' graphs, with the fused
ops (`torch.ops.fresco.*` custom ops with fake implementations) as graph nodes.

What keeps the graphs from recompiling per step or per batch (the pipeline's side): one controller and one set of
processors per pipeline, updated in place per batch (dynamo guards on the objects it reads), the timestep passed as
a tensor, and the processors' event counting done by the pipeline after each UNet call instead of inside the graph
(it is keyed on the step index). The cross-frame K/V's `nonzero` has a data-dependent length; it is traced as an
unbacked size (`capture_dynamic_output_shape_ops`), so a new batch's kept-token count neither breaks the graph nor
recompiles it. The graphs do differ by the per-step switches (record / spatial / cross-frame / temporal): each set
of switches compiles once, in the first batch."""
from __future__ import annotations

import functools
from collections import Counter
from typing import Callable, List, Optional

import torch

# the backend of torch.compile; tests swap in "aot_eager" or a counting backend
DEFAULT_BACKEND = "inductor"
# graphs per code object: the blocks of one class share their forward's code, and each block x each set of per-step
# switches is one graph (dynamo's default of 8 would send the rest to eager)
RECOMPILE_LIMIT = 64


class CountingBackend:
    """A torch.compile backend that keeps every FX graph dynamo hands it, then compiles it with `inner` (a backend
    name such as "inductor" or "aot_eager"): how many graphs a run compiled, and which ops they hold."""

    def __init__(self, inner: str = DEFAULT_BACKEND):
        self.inner = inner
        self.graphs: List[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return torch._dynamo.lookup_backend(self.inner)(gm, example_inputs)

    def op_nodes(self, namespace: str = "fresco") -> Counter:
        """How often each `torch.ops.<namespace>.*` op is a call node of the graphs, by op name."""
        names = (str(n.target) for g in self.graphs for n in g.graph.nodes if n.op == "call_function")
        return Counter(name for name in names if name.startswith(namespace + "."))


def compiled_modules(unet, controlnet) -> List[torch.nn.Module]:
    """The modules whose forward is compiled: the UNet's down, mid and up blocks, and the ControlNet."""
    mods = list(unet.down_blocks) + ([unet.mid_block] if unet.mid_block is not None else []) + list(unet.up_blocks)
    return mods + ([controlnet] if controlnet is not None else [])


def _with_dynamic_outputs(fn: Callable) -> Callable:
    """fn run with dynamo tracing data-dependent output sizes (nonzero) instead of breaking the graph there."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, recompile_limit=RECOMPILE_LIMIT):
            return fn(*args, **kwargs)
    return call


class CompiledBlocks:
    """Compiles the forwards of `compiled_modules(unet, controlnet)` with `backend` (an instance attribute
    `forward` that shadows the class's); `remove()` deletes those attributes, so the modules run eagerly again."""

    def __init__(self, unet, controlnet, backend: object = DEFAULT_BACKEND):
        self.backend = backend
        self.modules = compiled_modules(unet, controlnet)
        for m in self.modules:
            if "forward" in vars(m):
                raise RuntimeError(f"{type(m).__name__}: its forward is already replaced on the instance; "
                                   "compile=True needs the class's forward")
            m.forward = _with_dynamic_outputs(torch.compile(type(m).forward.__get__(m), backend=backend,
                                                            dynamic=False))

    def remove(self) -> None:
        for m in self.modules:
            vars(m).pop("forward", None)
        self.modules = []


def sync_compiled(current: Optional[CompiledBlocks], unet, controlnet, on: bool,
                  backend: object = DEFAULT_BACKEND) -> Optional[CompiledBlocks]:
    """The compiled state the call asks for: keeps `current` when it matches, else removes it and (when `on`)
    compiles anew."""
    if current is not None and on and current.backend is backend:
        return current
    if current is not None:
        current.remove()
    return CompiledBlocks(unet, controlnet, backend) if on else None
