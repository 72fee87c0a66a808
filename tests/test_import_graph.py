"""The package's import graph, read from the source with ast (nothing is imported): no cycle among the modules of
fresco, fresco_kernels and benchmarks, counting imports inside functions too; the layering rules of issue 22 (the
config imports no stage, the constants import nothing third-party, fresco_kernels never imports fresco)."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fresco", "fresco_kernels", "benchmarks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(the modules of ours that `module` imports anywhere in its source, the top-level names of the others)."""
    ours, others = set(), set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_pkg else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                others.add(name.split(".")[0])
                continue
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            # a module's own package (or an ancestor) is imported before the module itself: not an edge
            if name and name != module and not module.startswith(name + "."):
                ours.add(name)
    return ours, others


GRAPH = {m: _imports(m, p)[0] for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "fresco.video.runner" in GRAPH["fresco.video.render"]  # and it reads the real source


def test_no_import_cycle():
    assert len(MODULES) > 50
    assert _cycles(GRAPH) == []


def test_layering():
    config = GRAPH["fresco.config"]
    assert not [m for m in config if m.startswith(("fresco.video", "fresco.models", "fresco.pipeline"))], config
    for light in ("fresco.constants", "fresco.knobs", "fresco.prompts", "fresco.patch_params"):
        assert not _imports(light, MODULES[light])[1] - set(sys.stdlib_module_names), light
    assert not [(m, d) for m, deps in GRAPH.items() if m.startswith("fresco_kernels") for d in deps
                if d.split(".")[0] == "fresco"]


def test_config_imports_no_torch():
    """The CLI's settings checks run before torch, OpenCV or diffusers load: config and what it imports, apart
    from fresco_kernels (FrescoSettings's backend and reduction names), pull none of them in."""
    seen, todo = set(), ["fresco.config"]
    while todo:
        m = todo.pop()
        if m in seen or m.startswith("fresco_kernels"):
            continue
        seen.add(m)
        todo += GRAPH[m]
        heavy = _imports(m, MODULES[m])[1] & {"torch", "cv2", "diffusers", "gradio", "ray", "av"}
        assert not heavy, (m, heavy)
