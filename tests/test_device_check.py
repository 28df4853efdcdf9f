"""benchmarks/device_check.py, the script a GPU session runs, works: its checks that need no compile pass on the CPU
(the `tokens` check's compile is covered by tests/test_fast_decode.py, `ranks` by tests/test_distributed.py)."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "device_check.py"


def test_device_check_runs_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--only", "logits,lean,qlora,masters",
                          "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split()[:2] for line in lines] == [["PASS", "logits"], ["PASS", "lean"], ["PASS", "qlora"],
                                                    ["PASS", "masters"]]
    assert "bfloat16" in lines[0] and '"ok": true' in (tmp_path / "r.json").read_text()


def test_unknown_check_is_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--only", "warp"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown check(s) warp" in out.stderr and "Traceback" not in out.stderr
