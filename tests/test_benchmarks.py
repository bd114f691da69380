"""CI smoke for the benchmark suite: `python -m benchmarks --quick` runs (numbers are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_quick_benchmark_suite_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    from benchmarks.__main__ import SUITE

    assert set(results) == set(SUITE)
    assert not [name for name, res in results.items() if "error" in res]
    assert (tmp_path / "results.md").read_text().startswith("| benchmark |")
