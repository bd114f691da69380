"""Command line: flags → RunConfig → public functions. No logic lives here.

Every error derived from RemoteSamsingError is printed as one line plus a
hint (exit status 2), any other failure as one line too (exit status 1);
``--debug`` shows the traceback instead. Ctrl-C (exit status 130) and
SIGTERM (143) stop a command in one line too.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from ._outdir import describe_estimate, format_size
from ._progress import counted
from .segmenters import DEVICES
from .exceptions import ConfigError, RemoteSamsingError, RemoteSamsingWarning
from .merge import STRATEGIES
from .sources import DEFAULT_RESAMPLING, RESAMPLINGS

__all__ = ["main", "cli"]


def _int_list(value: str | None, name: str):
    if value is None:
        return None
    try:
        return [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"`--{name}` must be comma-separated integers, got {value!r}") from None


def _resolution(value: str | None):
    """``--resolution 0.5`` or ``--resolution 0.5,0.25`` (x, y)."""
    if value is None:
        return None
    try:
        parts = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"`--resolution` must be one number or two (x,y), got {value!r}") from None
    return parts[0] if len(parts) == 1 else parts


#: Flags saying how many files make one mosaic: segment, ingest and inspect take them.
_MOSAIC_FLAGS = (
    click.option("--recursive", is_flag=True, default=None, help="A folder INPUT includes its subfolders' rasters."),
    click.option("--asset", help="STAC asset to read. [default: role `visual`, else the only raster asset]"),
    click.option("--crs", help="Target CRS of a mosaic of many files, e.g. EPSG:32633. [default: the CRS of "
                               "the largest share of pixels]"),
    click.option("--resolution", help="Target resolution in CRS units, X or X,Y. [default: that of the largest "
                                      "share of pixels in the target CRS]"),
    click.option("--resampling", type=click.Choice(list(RESAMPLINGS)),
                 help=f"Warping of sources off the target grid. [default: {DEFAULT_RESAMPLING}]"),
)


def _mosaic_options(fn):
    for option in reversed(_MOSAIC_FLAGS):
        fn = option(fn)
    return fn


def _mosaic_kwargs(recursive, asset, crs, resolution, resampling) -> dict:
    """The mosaic options given (None: not given)."""
    given = {"recursive": recursive, "asset": asset, "crs": crs, "resolution": _resolution(resolution),
             "resampling": resampling}
    return {k: v for k, v in given.items() if v is not None}


def _kv_pairs(items, name: str) -> dict:
    import yaml

    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"`--{name}` takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)  # "5" → 5, "true" → True
    return out


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """The tool's own warnings as one line, as its errors are; any other as Python shows it."""
    if issubclass(category, RemoteSamsingWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


#: The loggers distributed gives a level of their own when it is imported; the others inherit theirs.
_DASK_LOGGERS = ("distributed", "distributed.client", "distributed.gc")


def _quiet_dask() -> None:
    """Keep Dask's own log records below ERROR off the terminal (``--debug`` shows them).

    Set on this process's loggers, and so on the local cluster's workers too
    (:func:`remote_samsing.cluster.dask_log_level`): one line per fact, not
    Dask's warnings on shutdown or Ctrl-C.
    """
    import logging

    import distributed  # noqa: F401 - its import sets its loggers' levels: ours must come after

    for name in _DASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, what ``scancel``, Kubernetes and ``timeout`` send: raised where the command is, as Ctrl-C
    is, so that the cluster is closed and the outputs stay resumable in the same way."""


def _stopping() -> None:
    """A signal stops the command: what the cluster logs while it is torn down mid-task (tasks cancelled,
    comms closed; tracebacks of Dask and Tornado among them) is not the user's to read. Logging stays off
    for the rest of the process, which the CLI ends right after saying in one line that it stopped (some
    of that noise comes as late as the interpreter's exit)."""
    import logging

    logging.disable(logging.CRITICAL)


def _raise_terminated(signum, frame):
    _stopping()
    raise _Terminated()


def _raise_interrupted(signum, frame):
    _stopping()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM raises :class:`_Terminated` and SIGINT (Ctrl-C) ``KeyboardInterrupt`` while the command runs,
    each silencing the cluster's teardown first (only the main thread sets handlers, and only where the
    signal has its default one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # only over the defaults: a SIGINT ignored (a background job of a script) stays ignored, and a
    # handler set outside Python (getsignal gives None) could not be put back
    ours = {signal.SIGTERM: (signal.SIG_DFL, _raise_terminated),
            signal.SIGINT: (signal.default_int_handler, _raise_interrupted)}
    previous = {sig: signal.signal(sig, handler) for sig, (default, handler) in ours.items()
                if signal.getsignal(sig) is default}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            # catch_warnings restores how warnings print when the command returns
            with warnings.catch_warnings(), _signals_as_interrupts():
                # the tool's own warnings: shown (once each), as one line
                warnings.simplefilter("default", RemoteSamsingWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except RemoteSamsingError as exc:
            if debug:
                raise
            msg = Exception.__str__(exc)
            click.echo(f"error: {msg}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(2)
        except _Terminated:
            click.echo("terminated (SIGTERM); rerun the same command to resume", err=True)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume", err=True)
            sys.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors, exits and aborts it reports itself
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure is one line too, its traceback on --debug
            if debug:
                raise
            from .io import error_chain

            click.echo(f"error: unexpected failure: {error_chain(exc)}", err=True)
            resume = " (run.json stays incomplete; the same command resumes)" if ctx.info_name == "segment" else ""
            click.echo(f"hint: `remote-samsing --debug {ctx.info_name} ...` shows the traceback{resume}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors, and Dask's own warnings.")
@click.version_option(package_name="remote_samsing")
def cli(debug: bool) -> None:
    """remote-samsing: segment everything in huge remote-sensing mosaics.

    Multi-pass SAM2 (or a classical baseline) runs on overlapping blocks of the
    mosaic on a Dask cluster; objects cut by block seams are merged back.
    """


@cli.command("segment")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT... OUTDIR")
@click.argument("outdir", metavar="")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="YAML file whose keys are these options (underscored); flags given here win.")
@click.option("--segmenter", help="Segmenter: sam2, or the classical baselines felzenszwalb and slic. [default: sam2]")
@click.option("--segmenter-param", "segmenter_param", multiple=True, metavar="KEY=VALUE",
              help="Segmenter parameter, repeatable (e.g. scale=200, points_per_side=32).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="SAM2 checkpoint (.pt) for --segmenter sam2.")
@click.option("--model-cfg", help="SAM2 model config (default: inferred from the checkpoint name).")
@click.option("--tile-size", type=int, help="Core tile size T in pixels. [default: 1000]")
@click.option("--padding", type=int, help="Context padding P per side, 0 <= P < T/2. [default: 50]")
@click.option("--bands", help="1-based bands as RGB, e.g. 4,3,2 (or one band for grey).")
@click.option("--nodata", type=float, help="Nodata value overriding the file's.")
@click.option("--merge", type=click.Choice(list(STRATEGIES)),
              help="Seam merge strategy. [default: overlap]")
@click.option("--merge-param", "merge_param", multiple=True, metavar="KEY=VALUE",
              help="Merge parameter, repeatable (e.g. min_contact_pixels=5).")
@click.option("--retries", type=int, help="Extra attempts for a failing block. [default: 2]")
@click.option("--skip-failed-blocks", "skip_failed_blocks", is_flag=True, default=None,
              help="Leave blocks that still fail after their retries unsegmented; the run completes as partial "
                   "and lists them in run.json. The same command again retries only those blocks.")
@click.option("--vectors/--no-vectors", default=None, help="Also write segments.parquet. [default: on]")
@click.option("--overwrite", is_flag=True, default=None, help="Replace the run in OUTDIR instead of resuming/refusing (never a folder of other files).")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://... or tls://...).")
@click.option("--device", type=click.Choice(list(DEVICES)), help="Where segmenters run. [default: auto]")
@click.option("--gpus", help="GPU indices for local CUDA workers, e.g. 0,1.")
@click.option("--n-workers", type=int, help="Local worker processes. [default: one per core or GPU]")
@click.option("--progress/--no-progress", default=None, help="Progress bars. [default: on]")
@_mosaic_options
@_handle_errors
def segment_cmd(inputs, outdir, config_file, segmenter, segmenter_param, checkpoint, model_cfg, tile_size,
                padding, bands, nodata, merge, merge_param, retries, skip_failed_blocks, vectors, overwrite, scheduler,
                device, gpus, n_workers, progress, recursive, asset, crs, resolution, resampling):
    """Segment the mosaic of INPUT... into OUTDIR (a folder, or a URL on an object store: s3://, gs://, az://).

    Each INPUT is a raster (GeoTIFF/COG/JP2/JPEG/PNG, VRT, GTI index, Zarr) or
    its URL (s3://, gs://, az://, https://), a folder of rasters, a quoted
    glob ('tiles/*.tif'), @FILE (one path or URL per line) or a STAC Item or
    ItemCollection; all of them make one mosaic. The last argument is OUTDIR.

    Writes labels.zarr, labels.tif (COG), segments.parquet and run.json.
    Rerunning the same command on the same OUTDIR resumes an interrupted run,
    and after sources changed redoes only the blocks they touch.
    """
    from .config import RunConfig, load_yaml_config
    from .pipeline import run

    if not click.get_current_context().find_root().params.get("debug"):
        _quiet_dask()
    given = {
        "segmenter": segmenter, "tile_size": tile_size, "padding": padding, "bands": _int_list(bands, "bands"),
        "nodata": nodata, "merge": merge, "retries": retries, "skip_failed_blocks": skip_failed_blocks,
        "vectors": vectors, "overwrite": overwrite,
        "scheduler": scheduler, "device": device, "gpus": _int_list(gpus, "gpus"), "n_workers": n_workers,
        "progress": progress, **_mosaic_kwargs(recursive, asset, crs, resolution, resampling),
    }
    data = load_yaml_config(config_file) if config_file else {}
    data.update({k: v for k, v in given.items() if v is not None})
    sp = dict(data.get("segmenter_params") or {})
    sp.update(_kv_pairs(segmenter_param, "segmenter-param"))
    if checkpoint is not None:
        sp["checkpoint"] = str(checkpoint)
    if model_cfg is not None:
        sp["model_cfg"] = model_cfg
    if sp:
        data["segmenter_params"] = sp
    mp = dict(data.get("merge_params") or {})
    mp.update(_kv_pairs(merge_param, "merge-param"))
    if mp:
        data["merge_params"] = mp
    cfg = RunConfig.from_mapping(data)
    record = run(list(inputs), outdir, config=cfg, log=lambda m: click.echo(m, err=True))
    if record.get("up_to_date"):
        click.echo(f"up to date: {outdir} already holds this complete run ({record['n_segments']} segments); "
                   "nothing recomputed")
        return
    failed = record.get("failed_blocks") or []
    partial = (f"; PARTIAL: {len(failed)} block(s) failed and were left unsegmented (run.json `failed_blocks`), "
               "rerun the same command to retry them") if failed else ""
    click.echo(
        f"done: {record['n_segments']} segments in {record['timings']['total_s']:.1f} s "
        f"({counted(record['blocks_segmented_this_run'], 'blocks')} segmented this run) -> {outdir}{partial}"
    )


@cli.command("ingest")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT... OUT")
@click.argument("out", metavar="")
@click.option("--tile-size", type=int, default=1000, show_default=True, help="Zarr chunk size (use the tile size).")
@click.option("--bands", help="1-based bands to keep, e.g. 4,3,2.")
@click.option("--nodata", type=float, help="Nodata value overriding the file's.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_mosaic_options
@_handle_errors
def ingest_cmd(inputs, out, tile_size, bands, nodata, overwrite, recursive, asset, crs, resolution, resampling):
    """Write the mosaic of INPUT... (the forms `segment` takes) as one Zarr v3 mosaic OUT.zarr (a path, or a
    URL such as s3://bucket/m.zarr) chunked to the tile size (CRS kept)."""
    from .io import open_mosaic, to_zarr

    arr = open_mosaic(list(inputs), bands=_int_list(bands, "bands"), nodata=nodata, chunks=tile_size,
                      **_mosaic_kwargs(recursive, asset, crs, resolution, resampling))
    to_zarr(arr, out, tile_size=tile_size, overwrite=overwrite, progress=True)
    click.echo(f"wrote {out} ({arr.sizes['band']} band(s), {arr.sizes['x']} x {arr.sizes['y']} px)")


@cli.command("inspect")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--tile-size", type=int, default=1000, show_default=True, help="Core tile size T in pixels.")
@click.option("--padding", type=int, default=50, show_default=True, help="Context padding P per side.")
@click.option("--bands", help="1-based bands as RGB, e.g. 4,3,2.")
@click.option("--nodata", type=float, help="Nodata value overriding the files'.")
@_mosaic_options
@_handle_errors
def inspect_cmd(inputs, tile_size, padding, bands, nodata, recursive, asset, crs, resolution, resampling):
    """Print what a run on INPUT... would see (sources, CRSs, grid, blocks, output size), segmenting nothing."""
    from .pipeline import inspect_mosaic

    facts = inspect_mosaic(list(inputs), tile_size=tile_size, padding=padding, bands=_int_list(bands, "bands"),
                           nodata=nodata, **_mosaic_kwargs(recursive, asset, crs, resolution, resampling))
    for line in _inspect_lines(facts):
        click.echo(line)


def _reading_nothing(n: int) -> str:
    """The end of inspect's blocks line: how many blocks read no source, if any."""
    return f"; {n} of them {'reads' if n == 1 else 'read'} no source (only nodata)" if n else ""


def _inspect_lines(facts: dict) -> list[str]:
    g, b, size = facts["grid"], facts["blocks"], facts["output_bytes"]
    # where the sources' CRSs differ, each resolution is in the units of its own CRS: said with it
    pairs = facts["resolutions_by_crs"] if len(facts["crs"]) > 1 else [(None, r) for r in facts["resolutions"]]
    res = ", ".join(f"{x:g} x {y:g}" + (f" ({crs})" if crs else "") for crs, (x, y) in pairs) or "-"
    bounds = ", ".join(f"{v:.10g}" for v in g["bounds"]) if g["bounds"] else "- (no CRS)"
    return [
        f"{'sources':12s} {facts['sources']}",
        f"{'crs':12s} {', '.join(facts['crs'])}",
        f"{'resolutions':12s} {res}",
        f"{'target grid':12s} {g['crs'] or 'no CRS'}, {g['resolution'][0]:g} x {g['resolution'][1]:g} per pixel, "
        f"resampling {g['resampling']}",
        f"{'bounds':12s} {bounds} (left, bottom, right, top)",
        f"{'size':12s} {g['size'][1]} x {g['size'][0]} px (width x height), {g['size'][0] * g['size'][1] / 1e6:.3g} Mpx",
        f"{'bands':12s} {g['bands']} of {g['dtype']}, nodata {g['nodata']}",
        f"{'blocks':12s} {b['count']} ({b['grid'][1]} x {b['grid'][0]} blocks, width x height) at tile size "
        f"{b['tile_size']}, padding {b['padding']}" + _reading_nothing(b["reading_nothing"]),
        f"{'output':12s} {describe_estimate(size)}",
    ]


@cli.command("vectorize")
@click.argument("labels")  # paths or URLs
@click.argument("out")
@click.option("--simplify", type=float, help="Simplification tolerance in metres (shared edges stay shared).")
@click.option("--layer", default="segments", show_default=True, help="Layer name for GeoPackage output.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@_handle_errors
def vectorize_cmd(labels, out, simplify, layer, overwrite):
    """Polygonize a LABELS raster (labels.zarr or .tif) to OUT, its format told by its suffix: .parquet
    (GeoParquet), .gpkg, .geojson or .fgb."""
    from .vectorize import vectorize_labels

    path = vectorize_labels(labels, out, simplify_tolerance=simplify, layer=layer, overwrite=overwrite,
                            progress=True)
    click.echo(f"wrote {path}")


@cli.command("evaluate")
@click.argument("labels")  # a path or URL
@click.argument("ground_truth", type=click.Path(path_type=Path))
@click.option("--classes", help="Class attribute of vector ground truth (nulls and empty strings become class "
                                 "'unlabelled').")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="report.json (also .md, .png).")
@click.option("--image", type=click.Path(path_type=Path),
              help="Imagery on the label grid: the figure draws the outlines over it. [default: the image the "
                   "labels' run.json names, when it can be read]")
@click.option("--paper-asa", is_flag=True, help="ASA as in the paper's scripts (label 0 counted as a segment).")
@click.option("--min-pixels", type=int, default=10, show_default=True, help="Skip GT objects smaller than this.")
@_handle_errors
def evaluate_cmd(labels, ground_truth, classes, out, image, paper_asa, min_pixels):
    """Score LABELS against GROUND_TRUTH (vectors, label/class raster, or boxes)."""
    from .exceptions import InputNotFoundError
    from .metrics import evaluate, write_report

    if image is not None and not image.exists():  # fail before the (long) scoring
        raise InputNotFoundError(f"image `{image}` does not exist", hint="pass the mosaic the labels were made from")
    rep = evaluate(labels, ground_truth, classes=classes, paper_asa=paper_asa, min_pixels=min_pixels, progress=True)
    paths = write_report(rep, out, image=image)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values() if p))


@cli.command("fetch-model")
@click.argument("name")
@click.option("--dest", type=click.Path(path_type=Path),
              help="Directory for the checkpoint. [default: the models directory, $REMOTE_SAMSING_MODELS or a "
                   "per-user data directory; `segment` looks there]")
@_handle_errors
def fetch_model_cmd(name, dest):
    """Download an official SAM2 checkpoint NAME (e.g. sam2.1_hiera_large)."""
    from .segmenters.sam2 import fetch_model

    path = fetch_model(name, dest=dest)
    click.echo(f"wrote {path}")


@cli.command("info")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Checkpoint to check.")
@click.option("--model-cfg", help="SAM2 model config of the checkpoint (default: inferred from its name).")
@_handle_errors
def info_cmd(checkpoint, model_cfg):
    """Print versions, GPUs seen, and the SAM2 checkpoint `segment` would use, checked on the CPU.

    Exits with status 2 when that checkpoint is missing, unreadable or not of its model config; when
    there is none (no --checkpoint, no $REMOTE_SAMSING_CHECKPOINT, no .pt file in the models directory)
    it says so and exits 0, since the classical segmenters need none.
    """
    from .pipeline import library_versions
    from .segmenters.sam2 import models_dir

    for k, v in library_versions().items():
        click.echo(f"{k:16s} {v or '-'}")
    try:
        from .cluster import detect_gpus

        gpus = detect_gpus()
    except Exception as exc:  # noqa: BLE001 - info must never fail
        gpus = []
        click.echo(f"gpu detection   unavailable ({exc})")
    click.echo(f"{'gpus':16s} {len(gpus)}" + (": " + ", ".join(str(g) for g in gpus) if gpus else ""))
    click.echo(f"{'models dir':16s} {models_dir()}")
    _echo_checkpoint(checkpoint, model_cfg)


def _echo_checkpoint(checkpoint, model_cfg) -> None:
    """The checkpoint `segment` would use and its config, after the checks `segment` makes (their
    errors raised as there); no checkpoint at all is no error: the classical segmenters need none."""
    from .exceptions import BackendUnavailableError, CheckpointError
    from .segmenters.sam2 import check_checkpoint, find_checkpoint

    try:
        path, how = find_checkpoint(checkpoint)
    except CheckpointError as exc:
        click.echo(f"{'checkpoint':16s} none: {Exception.__str__(exc)}")
        return
    click.echo(f"{'checkpoint':16s} {path} (from {how})")
    try:
        facts = check_checkpoint(checkpoint, model_cfg=model_cfg)
    except BackendUnavailableError as exc:
        click.echo(f"{'checked':16s} no: {Exception.__str__(exc)}")
        return
    how_cfg = "inferred from the file name" if facts["inferred"] else "given"
    click.echo(f"{'model config':16s} {facts['model_cfg']} ({how_cfg})")
    click.echo(f"{'checked':16s} ok on the CPU: {facts['tensors']} tensors, {facts['parameters'] / 1e6:.1f} M "
               f"parameters, {format_size(facts['bytes'])}; every shape matches the config")


def main(argv=None) -> None:
    """Entry point of the ``remote-samsing`` command."""
    cli.main(args=argv, prog_name="remote-samsing")


if __name__ == "__main__":  # pragma: no cover
    main()
