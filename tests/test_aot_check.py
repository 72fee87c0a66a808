"""benchmarks.aot_check (issue 14): its ptxas parsing and failure rules, and CI's quick subset (the first launch and
first kept config of every kernel, compiled for sm_90 with the installed Triton in a fresh process, no GPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")
from benchmarks.aot_check import Row, failures, parse_ptxas  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG = """ptxas info    : Compiling entry function '_k' for 'sm_90a'
ptxas info    : Function properties for _k
    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cumulative stack size
"""


def _has_ptxas() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and (pathlib.Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


def test_parse_ptxas():
    assert parse_ptxas(LOG) == {"regs": 255, "stack": 16, "spill_stores": 12, "spill_loads": 20}
    with pytest.raises(ValueError, match="registers"):
        parse_ptxas("ptxas info    : Compile time = 1 ms")


def test_failure_rules():
    def row(**kw):
        base = dict(kernel="_k", variant="", config="w4", target="sm_90", uses=["op: use"], hot=True, regs=40,
                    spill_stores=0, spill_loads=0, stack=0, smem=1024, smem_limit=232448)
        base.update(kw)
        return Row(**base)

    assert failures([row()]) == []
    assert len(failures([row(status="spill", spill_stores=8)])) == 1
    # a cold kernel's spill and a pruned config are reported in the table, not failed
    assert failures([row(status="spill", spill_stores=8, hot=False), row(status="pruned", smem=10 ** 6)]) == []
    assert "shared memory" in failures([row(status="smem", smem=10 ** 6)])[0]
    assert "compile error" in failures([row(status="error", message="boom")])[0]


@pytest.mark.slow
@pytest.mark.skipif(not _has_ptxas(), reason="needs Triton's bundled ptxas")
def test_quick_subset_compiles_every_kernel_spill_free_for_sm90(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT), "TRITON_CACHE_DIR": str(tmp_path / "c")}
    run = subprocess.run([sys.executable, "-m", "benchmarks.aot_check", "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    (report,) = tmp_path.glob("aot-triton-*-quick.json")
    data = json.loads(report.read_text())
    kernels = {r["kernel"] for r in data["rows"]}
    assert {"_flow_warp_fwd_kernel", "_flow_warp_bwd_kernel", "_warp_loss_fwd_bwd_kernel", "_gram_loss_fwd_kernel",
            "_gram_loss_bwd_kernel", "_trajectory_attention_fwd_kernel", "_correspondence_keys_kernel",
            "_pm_pass_kernel", "_vote_kernel"} <= kernels
    assert all(r["target"] == "sm_90" and r["regs"] and r["status"] in ("ok", "pruned") for r in data["rows"])
