"""`python -m benchmarks.gpu_check --dry-run`: every stage of `make gpu-check` runs on CPU at tiny shapes with its
real script, arguments and output files, so a typo or a missing import in a stage fails CI, not the first GPU run."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage(tmp_path):
    from benchmarks.gpu_check import STAGES
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["dry_run"] and [s["stage"] for s in result["stages"]] == [s[0] for s in STAGES]
    assert all(s["rc"] == 0 for s in result["stages"]), result["stages"]
    # each stage's own output files
    for name in ("bench-l3.json", "bench-attn.json", "e2e.json", "e2e.md", "memory-check.json", "memory-check.md",
                 "gpu-check.md"):
        assert (tmp_path / name).is_file(), name
    bench = json.loads((tmp_path / "bench-l3.json").read_text())
    assert bench["benchmarks"], "the L3 stage's -k selected no benchmark"
    memory = json.loads((tmp_path / "memory-check.json").read_text())
    assert {r["program"] for r in memory["rows"]} >= {"baseline", "reference", "fused"}
    assert all(r["predicted_mib"] > 0 for r in memory["rows"])
