"""CI smoke for the benchmark suite: `python -m benchmarks --quick` runs (numbers are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def test_gpu_benchmark_without_a_gpu_measures_nothing_and_says_so(capsys):
    from remote_samsing.cluster import detect_gpus

    if detect_gpus():
        pytest.skip("this machine has a GPU: the benchmark measures it instead")
    from benchmarks.bench_gpu import run

    res = run(quick=True)
    assert "no NVIDIA GPU" in res["skipped"] and "runs" not in res
    assert "nothing measured" in capsys.readouterr().out


@pytest.mark.timeout(600)
def test_gpu_benchmark_path_runs_on_cpu_workers():
    """The same job as on GPUs (random-weight SAM2, the product's cluster), on one CPU worker."""
    pytest.importorskip("sam2")
    from benchmarks.bench_gpu import run

    res = run(quick=True, device="cpu")
    row = res["runs"]["all"]
    assert res["model"].endswith("(random weights)") and "not SAM2 quality" in res["note"]
    assert row["workers"] == 1 and row["blocks"] == 4  # neon_osbs 400² at T=200
    assert row["mpx"] == pytest.approx(0.16)
    assert 1 <= row["passes"]["min"] <= row["passes"]["max"] <= 2  # max_passes=2 in quick mode
    assert row["job_s"] > 0 and row["gpu"] is None
