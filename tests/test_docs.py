"""The docs match the code: configuration reference, CLI help, README's command block."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from remote_samsing import _docgen
from remote_samsing.cli import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG_MD = ROOT / "docs" / "configuration.md"


# ---------------------------------------------------------------------------
# docs/configuration.md
# ---------------------------------------------------------------------------
def test_configuration_reference_is_up_to_date():
    assert CONFIG_MD.exists(), "docs/configuration.md is missing: run `python -m remote_samsing._docgen`"
    assert CONFIG_MD.read_text() == _docgen.render(), (
        "docs/configuration.md is out of date with the config classes: run `python -m remote_samsing._docgen`"
    )


def test_every_existing_config_class_is_documented():
    """A section is skipped only while its module does not exist yet."""
    collected = {section.target for section, *_ in _docgen.collect()}
    for section in _docgen.SECTIONS:
        module = section.target.partition(":")[0]
        if importlib.util.find_spec(module) is not None:
            assert section.target in collected, f"{section.target} exists but is not in the reference"
    # the classes that exist from the start are always there
    for target in (
        "remote_samsing.config:RunConfig",
        "remote_samsing.merge:MergeConfig",
        "remote_samsing.segmenters.classical:FelzenszwalbSegmenter",
        "remote_samsing.segmenters.classical:SLICSegmenter",
    ):
        assert target in collected


@pytest.mark.parametrize("target", [s.target for s in _docgen.SECTIONS])
def test_every_key_has_a_description_and_no_stale_docs(target):
    found = [c for c in _docgen.collect() if c[0].target == target]
    if not found:
        pytest.skip(f"{target} does not exist in this checkout")
    section, cls, rows, stale = found[0]
    expected = (
        [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else None
    )
    if expected is not None:
        assert [r.key for r in rows] == expected
    undocumented = [r.key for r in rows if not r.description]
    assert not undocumented, (
        f"{cls.__qualname__}: no description in the docstring's Parameters section for {undocumented}"
    )
    assert not stale, f"{cls.__qualname__}: docstring documents parameters that do not exist: {stale}"
    assert all(r.default for r in rows)


def test_every_run_config_key_is_in_the_page_with_its_default():
    from remote_samsing.config import RunConfig

    text = CONFIG_MD.read_text()
    for f in dataclasses.fields(RunConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        assert re.search(rf"^\| `{f.name}` \|.*\| `{re.escape(shown)}` \|", text, re.M), f.name


def test_parse_parameters_handles_multi_name_entries_and_next_section():
    doc = """Summary.

    Parameters
    ----------
    a, b : int
        First line
        second line.
    c : {"x", "y"}
        Choice.

    Returns
    -------
    d : int
        Not a parameter.
    """
    assert _docgen.parse_parameters(doc) == {
        "a": ("int", "First line second line."),
        "b": ("int", "First line second line."),
        "c": ('{"x", "y"}', "Choice."),
    }
    assert _docgen.parse_parameters("No sections here.") == {}


def test_docgen_check_mode(tmp_path):
    out = tmp_path / "configuration.md"
    assert _docgen.main(["--out", str(out)]) == 0
    assert out.read_text() == _docgen.render()
    assert _docgen.main(["--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert _docgen.main(["--out", str(out), "--check"]) == 1


# ---------------------------------------------------------------------------
# CLI help and README
# ---------------------------------------------------------------------------
def _readme_command_block() -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Command line\s*\n.*?```[^\n]*\n(.*?)```", readme, re.S | re.M)
    assert m, "README.md has no fenced block under '## Command line'"
    return m.group(1)


def _readme_commands() -> dict[str, str]:
    """Subcommand → its text in README's block (continuation lines joined)."""
    commands: dict[str, str] = {}
    current = None
    for line in _readme_command_block().splitlines():
        line = line.split("#", 1)[0].rstrip()  # drop comments
        if line.startswith("remote-samsing "):
            current = line.split()[1]
            commands[current] = line
        elif line.strip() and current:
            commands[current] += " " + line.strip()
    return commands


def test_help_of_the_group_and_every_subcommand():
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0, top.output
    assert "Usage:" in top.output
    for name, cmd in cli.commands.items():
        assert name in top.output  # listed in the group's help
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, f"`remote-samsing {name} --help` failed: {res.output}"
        assert f"Usage: cli {name}" in res.output or f"Usage: remote-samsing {name}" in res.output
        assert (cmd.help or "").strip(), f"`{name}` has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                assert (param.help or "").strip(), f"`{name} {param.opts[0]}` has no help text"
                assert param.opts[0] in res.output


def test_readme_command_block_matches_the_cli():
    commands = _readme_commands()
    assert {"segment", "ingest", "vectorize", "evaluate", "fetch-model", "info"} <= set(commands)
    for name, text in commands.items():
        assert name in cli.commands, f"README mentions `remote-samsing {name}`, which does not exist"
        cmd = cli.commands[name]
        options = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
        for m in re.finditer(r"(--[a-z][a-z0-9-]*)(?:[ =]([^\]\s]+))?", text):
            flag, value = m.group(1), m.group(2)
            assert flag in options, f"README: `remote-samsing {name} {flag}` is not an option of the CLI"
            ptype = options[flag].type
            if value and "|" in value and isinstance(ptype, click.Choice):
                assert set(value.split("|")) == set(ptype.choices), (
                    f"README lists {flag} {value}, the CLI accepts {'|'.join(ptype.choices)}"
                )


# ---------------------------------------------------------------------------
# links and recorded benchmark results
# ---------------------------------------------------------------------------

RESULTS = ROOT / "benchmarks" / "results"


def _relative_links(md: Path) -> list[str]:
    """Targets of the Markdown links in ``md`` that name a path (no URL, no bare anchor), code blocks skipped."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    targets = (m.group(1) for m in re.finditer(r"\]\(([^)\s]+)\)", text))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


@pytest.mark.parametrize("md", ["README.md", "benchmarks/README.md", "docs/architecture.md",
                                "docs/configuration.md", "deploy/README.md"])
def test_every_relative_link_resolves(md):
    broken = [t for t in _relative_links(ROOT / md) if not (ROOT / md).parent.joinpath(t).exists()]
    assert broken == [], f"{md} links to missing paths: {broken}"


def test_one_current_result_per_benchmark_and_machine_each_linked():
    """benchmarks/results holds stable names (no date or session tag: a rerun replaces its file),
    and the README's Results table or benchmarks/README.md links every one of them."""
    linked = {(md.parent / t).resolve() for md in (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
              for t in _relative_links(md)}
    for path in sorted(RESULTS.iterdir()):
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*-(cpu-\d+core|[a-z]\d+[a-z0-9]*)\.(json|md)", path.name), (
            f"results/{path.name}: name it <benchmark>[-<variant>]-<machine>.json (no date, no session)")
        assert not re.search(r"-(run\d*|rerun|trim|first)-", path.name), f"results/{path.name}: a session tag"
        # a Markdown table written beside its JSON (bench_merge_quality --json) goes with it
        assert path.resolve() in linked or path.with_suffix(".json").resolve() in linked, (
            f"results/{path.name} is cited nowhere: link it from the README's Results table or remove it")


def test_a_plain_pytest_at_the_repository_root_collects():
    """`pytest` with no arguments collects every test directory (no two test modules share a basename)."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tests/integration/" in res.stdout and "tests/test_cli.py" in res.stdout
