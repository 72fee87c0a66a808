"""The op folders' import discipline (issue 9): an op uses another op only through its public names, shared pieces
live in fresco_kernels.common (or the package's infrastructure modules), and no op imports upward from the package
root (whose __init__ imports every op)."""
from __future__ import annotations

import ast
import pathlib
from typing import List, Sequence

import fresco_kernels

PKG = pathlib.Path(fresco_kernels.__file__).parent
# folders that hold an op (everything but the shared helpers)
OP_NAMES = sorted(p.name for p in PKG.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name != "common")


def _target(package: Sequence[str], node: ast.ImportFrom) -> List[str]:
    """Dotted parts below fresco_kernels that `node` (in a module of the package `package`) imports from; [] for
    the package root; None for imports from outside fresco_kernels."""
    if node.level == 0:
        parts = (node.module or "").split(".")
        return parts[1:] if parts[0] == "fresco_kernels" else None
    base = list(package)[:len(package) - (node.level - 1)]
    return base + (node.module.split(".") if node.module else [])


def violations(source: str, op: str, where: str) -> List[str]:
    """Import problems of one module of the op folder `op`: private names of another op, or the package root."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _target([op], node)
        if target is None:
            continue
        if not target:
            out.append(f"{where}:{node.lineno} imports from the package root")
        elif target[0] in OP_NAMES and target[0] != op:
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private:
                out.append(f"{where}:{node.lineno} imports {private} from the op {target[0]}")
    return out


def test_op_folders_found():
    assert {"flow_warp", "warp_loss", "gram_loss", "optimize", "trajectory_attention"} <= set(OP_NAMES)


def test_no_op_imports_another_ops_private_names_or_the_package_root():
    problems = []
    for op in OP_NAMES:
        for path in sorted((PKG / op).glob("*.py")):
            problems += violations(path.read_text(), op, str(path.relative_to(PKG)))
    assert not problems, "\n".join(problems)


def test_the_scan_reports_both_kinds():
    src = ("from ..flow_warp.triton import _corners\n"
           "from .. import flow_warp\n"
           "from fresco_kernels import gram_loss\n"
           "from ..common.bilinear import corners\n"
           "from .reference import _local\n"
           "from ..gram_loss import REDUCTIONS\n")
    found = violations(src, "warp_loss", "probe.py")
    assert found == ["probe.py:1 imports ['_corners'] from the op flow_warp",
                     "probe.py:2 imports from the package root", "probe.py:3 imports from the package root"]
