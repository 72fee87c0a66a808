"""No unused definitions (issue 9): vulture over fresco_kernels/, fresco/ and benchmarks/, with the whitelist of
names that only a framework or a user calls (tests/vulture_whitelist.py). Any finding fails: delete the dead code,
or whitelist a real dynamic use with a comment saying who calls it."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("vulture", reason="vulture is in the dev extra (make test installs it)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATHS = ["fresco_kernels", "fresco", "benchmarks"]
WHITELIST = os.path.join("tests", "vulture_whitelist.py")


def test_no_unused_code():
    r = subprocess.run([sys.executable, "-m", "vulture", *PATHS, WHITELIST], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode in (0, 3), f"vulture failed to run (rc {r.returncode}):\n{r.stderr}"
    assert r.returncode == 0 and not r.stdout.strip(), f"unused code (vulture):\n{r.stdout}"
