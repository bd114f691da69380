"""The command line's error contract: one line and an exit status, the traceback behind --debug."""

import click
import pytest
from click.testing import CliRunner

import remote_samsing.vectorize as vec
from remote_samsing.cli import cli

ARGS = ["vectorize", "labels.tif", "out.gpkg"]


def _fail_with(monkeypatch, exc):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(vec, "vectorize_labels", broken)


def test_an_unforeseen_failure_is_one_line_and_its_traceback_is_behind_debug(monkeypatch):
    _fail_with(monkeypatch, RuntimeError("Zstd decompression error: invalid input data"))
    runner = CliRunner()
    r = runner.invoke(cli, ARGS)
    assert r.exit_code == 1
    first, hint = r.output.splitlines()
    assert first == "error: unexpected failure: RuntimeError: Zstd decompression error: invalid input data"
    assert hint == "hint: `remote-samsing --debug vectorize ...` shows the traceback"  # resuming is segment's
    r = runner.invoke(cli, ["--debug", *ARGS])
    assert isinstance(r.exception, RuntimeError)


@pytest.mark.parametrize("exc, code, says", [
    (click.UsageError("no such option: --tile"), 2, "Error: no such option: --tile"),
    (click.Abort(), 1, "Aborted!"),
    (click.exceptions.Exit(3), 3, ""),
])
def test_clicks_own_exceptions_pass_through_as_click_reports_them(monkeypatch, exc, code, says):
    _fail_with(monkeypatch, exc)
    r = CliRunner().invoke(cli, ARGS)
    assert r.exit_code == code and "unexpected failure" not in r.output
    assert says in r.output
