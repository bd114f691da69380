"""What ``segment`` says on the terminal: one line per fact, none of Dask's own log records.

A successful run, a run whose dashboard port another job holds, Ctrl-C or SIGTERM
and the rerun that resumes, a run that is up to date, and a run of one block; each
through the CLI in a subprocess with the embedded cluster of worker processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from remote_samsing.cluster import DASHBOARD_PORT
from remote_samsing.testing import HOLD_AFTER

TILE, PADDING = 128, 8
N_BLOCKS = 16  # neon_osbs.tif is 400 x 400 px: 4 x 4 blocks of 128 px (the last ones 16 px)


def _segment_cmd(image: Path, outdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "remote_samsing", "segment", str(image), str(outdir),
            "--segmenter", "threshold", "--tile-size", str(TILE), "--padding", str(PADDING),
            "--merge", "none", "--no-vectors", "--no-progress", "--n-workers", "2", *extra]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _dask_noise(stderr: str) -> list[str]:
    """Lines of Dask's logs, warnings or tracebacks."""
    return [line for line in stderr.splitlines()
            if "distributed." in line or "Traceback" in line or "Warning" in line]


def _staged(outdir: Path) -> int:
    blocks = outdir / "staging" / "blocks"
    return len(list(blocks.glob("*.json"))) if blocks.is_dir() else 0


@pytest.fixture
def dashboard_port_taken():
    """Another job listens on Dask's dashboard port (this test's socket, or a job of the machine's)."""
    sock = socket.socket()
    try:
        try:
            sock.bind(("127.0.0.1", DASHBOARD_PORT))
            sock.listen()
        except OSError:  # held already: taken all the same
            pass
        yield DASHBOARD_PORT
    finally:
        sock.close()


@pytest.mark.timeout(300)
def test_a_successful_run_says_nothing_of_dask_and_names_the_dashboard_port_it_took(
        tmp_path, data_dir, dashboard_port_taken):
    out = tmp_path / "out"
    r = _run(_segment_cmd(data_dir / "neon_osbs.tif", out))
    assert r.returncode == 0, r.stderr
    assert _dask_noise(r.stderr) == [], r.stderr
    assert "already in use" not in r.stderr
    (link,) = [line.split(" ", 1)[1] for line in r.stderr.splitlines() if line.startswith("dashboard: ")]
    assert urlparse(link).port not in (None, dashboard_port_taken)
    assert f"segmenting {N_BLOCKS} blocks of {TILE} px (padding {PADDING})" in r.stderr.splitlines()
    assert f"({N_BLOCKS} blocks segmented this run)" in r.stdout
    # the same command again: up to date, said once
    again = _run(_segment_cmd(data_dir / "neon_osbs.tif", out))
    assert again.returncode == 0, again.stderr
    assert (again.stdout + again.stderr).count("up to date") == 1, again.stdout + again.stderr


def _stopped_after(cmd: list[str], out: Path, hold: int, stop) -> subprocess.Popen:
    """Run ``cmd`` until ``hold`` blocks are staged, then ``stop(pid)``; the finished process."""
    # The child gets SIGINT's default action back, whatever the test runner's (a background job ignores it).
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, HOLD_AFTER: str(hold)},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while _staged(out) < hold and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _staged(out) == hold and run.poll() is None
        stop(run.pid)
        run.stderr_text = run.communicate(timeout=60)[1]
    finally:
        if run.poll() is None:  # pragma: no cover - only when the test already failed
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    return run


# Ctrl-C on a terminal: SIGINT to the whole foreground process group, worker processes included;
# SIGTERM from Kubernetes: to the command's process; from `timeout` or `scancel`: to its whole group
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop, status, said", [
    (lambda pid: os.killpg(pid, signal.SIGINT), 130, "interrupted; rerun the same command to resume"),
    (lambda pid: os.kill(pid, signal.SIGTERM), 143, "terminated (SIGTERM); rerun the same command to resume"),
    (lambda pid: os.killpg(pid, signal.SIGTERM), 143, "terminated (SIGTERM); rerun the same command to resume"),
], ids=["ctrl-c", "sigterm", "sigterm-to-the-group"])
def test_a_stop_is_one_line_and_the_rerun_says_how_many_blocks_are_staged(tmp_path, data_dir, stop, status, said):
    out, calls = tmp_path / "out", tmp_path / "calls"
    cmd = _segment_cmd(data_dir / "neon_osbs.tif", out, "--segmenter-param", f"log_dir={calls}")
    hold = 4  # segmenter calls after the 4th wait: the run is stopped with 4 blocks staged
    run = _stopped_after(cmd, out, hold, stop)
    assert run.returncode == status, run.stderr_text
    assert _dask_noise(run.stderr_text) == [], run.stderr_text
    assert run.stderr_text.splitlines()[-1] == said

    r = _run(cmd)
    assert r.returncode == 0, r.stderr
    assert _dask_noise(r.stderr) == [], r.stderr
    said = f"{hold}/{N_BLOCKS} blocks staged; segmenting {N_BLOCKS - hold} of {TILE} px (padding {PADDING})"
    assert said in r.stderr.splitlines(), r.stderr
    assert f"({N_BLOCKS - hold} blocks segmented this run)" in r.stdout


@pytest.mark.timeout(300)
def test_a_run_of_one_block_says_one_block(tmp_path, data_dir):
    r = _run(_segment_cmd(data_dir / "neon_osbs.tif", tmp_path / "out", "--tile-size", "400"))
    assert r.returncode == 0, r.stderr
    assert f"segmenting 1 block of 400 px (padding {PADDING})" in r.stderr.splitlines(), r.stderr
    assert "(1 block segmented this run)" in r.stdout
