"""The notebooks in notebooks/ run top to bottom without an error.

Each notebook is executed with nbclient in a fresh kernel whose Python is the
one running the tests (a temporary ``python3`` kernelspec pointing at
``sys.executable`` shadows any user-level one), with the working directory
set to notebooks/ as Jupyter would. Committed notebooks carry no outputs:
everything a reader sees is produced by the code.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["quickstart", "seams", "large_mosaic"]


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A ``python3`` kernelspec that runs this interpreter, first on JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (remote_samsing tests)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # matplotlib must not try to open windows from the kernel
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return "python3"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code, f"{name}.ipynb has no code cells"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{name}.ipynb: code cells {dirty} carry outputs; clear them before committing"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, venv_kernel):
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # one extra cell: which interpreter did the kernel run?
    book.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        book,
        kernel_name=venv_kernel,
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # raises CellExecutionError naming the cell and the traceback on any error
    client.execute()
    executed = [c for c in book.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in executed)
    errors = [o for c in executed for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    # the kernel really was this interpreter, so the notebook tested this environment
    assert executed[-1].outputs[0]["text"].strip() == sys.executable


def test_seams_legend_draws_every_diagnostics_code():
    """The seams notebook colours and names every code of the diagnostics raster, so none is drawn as
    another (a colour map clipped at 4 would draw code 5 as "link refused")."""
    from remote_samsing.merge import DIAGNOSTIC_CODES

    book = nbformat.read(NOTEBOOKS / "seams.ipynb", as_version=4)
    cell = next(c.source for c in book.cells if c.cell_type == "code" and "ListedColormap(colours)" in c.source)
    assert "DIAGNOSTIC_CODES.items()" in cell and "vmax=len(colours) - 1" in cell
    colours = eval(next(ln for ln in cell.splitlines() if ln.startswith("colours = ")).split("=", 1)[1])
    assert len(colours) == max(DIAGNOSTIC_CODES) + 1 == 6
