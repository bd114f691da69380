"""Generate ``docs/configuration.md`` from the configuration classes.

Every key, its type, default and meaning come from the code: types and
defaults from the dataclass fields (or ``__init__`` signature), meanings from
the numpydoc ``Parameters`` section of the class docstring. Run::

    python -m remote_samsing._docgen           # rewrite docs/configuration.md
    python -m remote_samsing._docgen --check   # exit 1 if it is out of date

``tests/test_docs.py`` regenerates the page in memory and fails when the
committed file differs or a key has no description.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Section", "Row", "SECTIONS", "collect", "render", "parse_parameters", "main"]

#: Where the page lives in a source checkout.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@dataclass(frozen=True)
class Section:
    """One configuration class and how users reach it."""

    title: str
    target: str  # "module:Class"
    intro: str
    cli: bool = False  # add a CLI-flag column (RunConfig only)


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str
    cli: str = ""


SECTIONS: tuple[Section, ...] = (
    Section(
        "Run configuration",
        "remote_samsing.config:RunConfig",
        "The keys of `remote-samsing segment` (flags), of a `--config FILE.yaml` (underscored keys, "
        "e.g. `tile_size: 500`) and of `remote_samsing.pipeline.run(config=RunConfig(...))`; "
        "`remote_samsing.segment()` takes the result-affecting ones as keywords. Unknown keys are an error.",
        cli=True,
    ),
    Section(
        "Merge parameters",
        "remote_samsing.merge:MergeConfig",
        "`strategy` is the run's `merge` key; the other keys go in `merge_params` (YAML), "
        "`--merge-param KEY=VALUE` (CLI) or `merge_params={...}` (Python).",
    ),
    Section(
        "Felzenszwalb segmenter (`segmenter: felzenszwalb`)",
        "remote_samsing.segmenters.classical:FelzenszwalbSegmenter",
        "A classical baseline (the paper's Table 7), not SAM2. Keys go in `segmenter_params` "
        "(`--segmenter-param KEY=VALUE`).",
    ),
    Section(
        "SLIC segmenter (`segmenter: slic`)",
        "remote_samsing.segmenters.classical:SLICSegmenter",
        "A classical baseline (the paper's Table 7), not SAM2. Keys go in `segmenter_params` "
        "(`--segmenter-param KEY=VALUE`).",
    ),
    Section(
        "SAM2 segmenter (`segmenter: sam2`)",
        "remote_samsing.segmenters.sam2:SAM2Segmenter",
        "Keys go in `segmenter_params` (`--segmenter-param KEY=VALUE`; `--checkpoint` and `--model-cfg` "
        "are shortcuts for `checkpoint` and `model_cfg`).",
    ),
    Section(
        "Multi-pass loop",
        "remote_samsing.multipass:MultipassConfig",
        "The paper's per-tile multi-pass loop, run by the `sam2` segmenter. Its keys go in `segmenter_params` "
        "next to the SAM2 ones (e.g. `--segmenter-param points_per_side=32`); defaults are the paper's.",
    ),
    Section(
        "Cluster",
        "remote_samsing.cluster:ClusterConfig",
        "How workers are started or reached: `remote_samsing.cluster.make_client(ClusterConfig(...))`. "
        "A run fills `scheduler`, `device`, `gpus` and `n_workers` from its own keys of the same names.",
    ),
)


# ---------------------------------------------------------------------------
# numpydoc
# ---------------------------------------------------------------------------
def parse_parameters(doc: str | None) -> dict[str, tuple[str, str]]:
    """``{name: (type, description)}`` from a numpydoc ``Parameters`` section.

    Entries naming several parameters (``a, b : int``) give each the same
    type and description.

    Examples
    --------
    >>> parse_parameters('''Title.
    ...
    ... Parameters
    ... ----------
    ... a, b : int
    ...     The sizes.
    ... flag : bool
    ... ''')
    {'a': ('int', 'The sizes.'), 'b': ('int', 'The sizes.'), 'flag': ('bool', '')}
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    start = None
    for i in range(len(lines) - 1):
        if lines[i].strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"}:
            start = i + 2
            break
    if start is None:
        return {}
    entries: list[tuple[list[str], str, list[str]]] = []
    i = start
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and not line.startswith(" "):
            if nxt and set(nxt) == {"-"}:  # the next section's header
                break
            names, _, typ = line.partition(":")
            entries.append(([n.strip() for n in names.split(",") if n.strip()], typ.strip(), []))
        elif entries:
            entries[-1][2].append(line.strip())
        i += 1
    out: dict[str, tuple[str, str]] = {}
    for names, typ, desc in entries:
        text = " ".join(part for part in desc if part)
        for name in names:
            out[name] = (typ, text)
    return out


def _markdown(text: str) -> str:
    """reST inline markup of docstrings → Markdown, safe inside a table cell."""
    # :class:`~a.b.C` shows as `C`, :func:`a.b` as `a.b` (Sphinx's rule for "~")
    text = re.sub(r":\w+:`(~?)([^`]+)`", lambda m: f"``{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}``", text)
    text = text.replace("``", "`")
    return text.replace("|", "\\|").strip()


def _code(text: str) -> str:
    """Inline code in a table cell (a literal `|` would end the cell)."""
    return "`" + text.replace("|", "\\|") + "`"


# ---------------------------------------------------------------------------
# fields
# ---------------------------------------------------------------------------
def _resolve(target: str):
    """The class named by ``module:Class``, or None when its module does not exist."""
    module, _, name = target.partition(":")
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), name)


def _type_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is dataclasses.MISSING:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _default_text(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _fields(cls) -> list[tuple[str, str, str]]:
    """(name, type, default) of every constructor parameter of ``cls``."""
    if dataclasses.is_dataclass(cls):
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = _default_text(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = _default_text(f.default_factory())
            else:
                default = "required"
            out.append((f.name, _type_text(f.type), default))
        return out
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind == p.VAR_POSITIONAL:
            continue
        if p.kind == p.VAR_KEYWORD:  # documented as "**name" in numpydoc
            out.append((f"**{p.name}", "", "(keywords)"))
            continue
        default = "required" if p.default is p.empty else _default_text(p.default)
        out.append((p.name, _type_text(p.annotation), default))
    return out


def _cli_flags() -> dict[str, str]:
    """Option name → flag text of ``remote-samsing segment``."""
    from .cli import cli

    flags = {}
    for param in cli.commands["segment"].params:
        if param.param_type_name != "option":
            continue
        text = " / ".join(param.opts + param.secondary_opts)
        flags[param.name] = text
    return flags


def collect(sections: tuple[Section, ...] = SECTIONS) -> list[tuple[Section, type, list[Row], list[str]]]:
    """Rows of every section whose module exists.

    Returns
    -------
    list of (section, class, rows, stale)
        ``stale``: names documented in the docstring that are not parameters.
    """
    flags = None
    out = []
    for section in sections:
        cls = _resolve(section.target)
        if cls is None:
            continue
        if section.cli and flags is None:
            flags = _cli_flags()
        documented = parse_parameters(cls.__doc__)
        if not documented and not dataclasses.is_dataclass(cls):
            documented = parse_parameters(cls.__init__.__doc__)
        rows = []
        names = set()
        for name, typ, default in _fields(cls):
            names.add(name)
            doc_type, desc = documented.get(name, ("", ""))
            cli = ""
            if section.cli:
                for candidate in (name, name[:-1] if name.endswith("s") else None):
                    if candidate in flags:
                        cli = flags[candidate]
                        break
            rows.append(Row(name, typ or doc_type, default, _markdown(desc), cli))
        stale = sorted(set(documented) - names)
        out.append((section, cls, rows, stale))
    return out


# ---------------------------------------------------------------------------
# page
# ---------------------------------------------------------------------------
HEADER = """\
<!-- Generated by `python -m remote_samsing._docgen` from the configuration classes. Do not edit by
     hand: change the class docstring or field, then rerun the command (tests/test_docs.py checks it). -->

# Configuration reference

The same setting has the same name everywhere: `remote-samsing segment --tile-size 500`,
`tile_size: 500` in a YAML file given with `--config`, and `segment(..., tile_size=500)` in Python.
Types and defaults below are read from the code; meanings from the classes' docstrings.
"""


def render(sections: tuple[Section, ...] = SECTIONS) -> str:
    """The whole Markdown page."""
    parts = [HEADER]
    collected = collect(sections)
    parts.append("## Contents\n")
    for section, cls, _, _ in collected:
        anchor = re.sub(r"[^a-z0-9_ -]", "", section.title.lower()).replace(" ", "-")
        parts.append(f"- [{section.title}](#{anchor})")
    parts.append("")
    for section, cls, rows, _ in collected:
        parts.append(f"## {section.title}\n")
        # the public path, not cls.__module__: a class may live in a private submodule
        parts.append(f"`{section.target.replace(':', '.')}`. {section.intro}\n")
        if section.cli:
            parts.append("| key | CLI flag | type | default | meaning |")
            parts.append("|---|---|---|---|---|")
        else:
            parts.append("| key | type | default | meaning |")
            parts.append("|---|---|---|---|")
        for r in rows:
            cells = [f"`{r.key}`"]
            if section.cli:
                cells.append(f"`{r.cli}`" if r.cli else "(YAML / Python only)")
            cells += [_code(r.type) if r.type else "", _code(r.default), r.description]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remote_samsing._docgen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="page to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `python -m remote_samsing._docgen`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
