"""The multi-pass SAM2 segmenter (registered as ``"sam2"``).

:class:`SAM2Segmenter` runs :func:`remote_samsing.multipass.run_multipass` with
SAM2's automatic mask generator (``sam2.automatic_mask_generator``, from
facebookresearch/sam2, https://github.com/facebookresearch/sam2) as its mask
generator. torch, Hydra and sam2 are imported only inside methods, never at
``import remote_samsing``.

Lifecycle
---------
* ``__init__`` checks everything cheap *before* any cluster starts: the
  checkpoint file exists, the model config is known (or can be inferred from
  the checkpoint name), the checkpoint's tensors match that config (built on
  the CPU, then dropped), the thresholds, and that CUDA exists if requested.
* Only the parameters travel to workers (``__getstate__`` drops every cached
  object). On the first ``segment`` call a worker process builds the model and
  keeps it in a module-level cache keyed by (checkpoint, config, image size,
  device, seed); the mask generator is built once per model and thread and is
  reused for every pass of every block (only its prompts and thresholds are
  set per pass).
* On CUDA the generator runs under bf16 autocast with TF32 matmuls, as SAM2's
  own notebooks do.

Checkpoints
-----------
Official checkpoints come from Meta's download server (the URLs in
:data:`CHECKPOINT_URLS`, the same as sam2's ``checkpoints/download_ckpts.sh``).
:func:`fetch_model` downloads one into :func:`models_dir` (a per-user data
directory, or ``$REMOTE_SAMSING_MODELS``). Without a ``checkpoint``
parameter the segmenter uses ``$REMOTE_SAMSING_CHECKPOINT``, else the best
file in that directory (:func:`find_checkpoint`); offline, put the ``.pt``
file in either place or pass its path. The model config is inferred from the file
name (``sam2.1_hiera_tiny.pt`` → ``configs/sam2.1/sam2.1_hiera_t.yaml``) or
given as ``model_cfg``.

Differences from the reference's SAM2 call (shared/design/reference.md §1.4.3):
``min_mask_region_area`` is 0 here, because sam2's hole/sprinkle removal needs
the optional ``sam2._C`` CUDA extension (the reference's result then depends on
whether it was built); the multi-pass acceptance applies ``min_mask_area``
to every component anyway. ``crop_n_layers`` is 0, as in the paper.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_atomic
from .._validate import check_bool, check_int, check_number
from ._base import DEVICES, GPU_RESOURCES
from ..exceptions import BackendUnavailableError, CheckpointError, ConfigError, InputError
from .._progress import counted, report_pass
from ..multipass import MultipassConfig, MultipassResult, run_multipass

__all__ = [
    "SAM2Segmenter", "check_checkpoint", "fetch_model", "find_checkpoint", "models_dir", "resolve_model_cfg", "write_random_checkpoint",
    "CHECKPOINT_URLS", "CHECKPOINT_ENV", "MODELS_ENV", "PREVIEW_PARAMS",
]

#: Environment variable naming the checkpoint file to use when none is given.
CHECKPOINT_ENV = "REMOTE_SAMSING_CHECKPOINT"
#: Environment variable overriding the directory ``fetch-model`` writes to and ``segment`` looks in.
MODELS_ENV = "REMOTE_SAMSING_MODELS"

_SIZES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
_SIZE_ALIASES = {
    "tiny": "tiny", "t": "tiny", "small": "small", "s": "small",
    "base_plus": "base_plus", "base-plus": "base_plus", "b+": "base_plus", "bplus": "base_plus", "base": "base_plus",
    "large": "large", "l": "large",
}
#: (version, size) -> config path inside the sam2 package
MODEL_CONFIGS = {
    (ver, size): f"configs/{ver}/{ver}_hiera_{short}.yaml"
    for ver in ("sam2", "sam2.1")
    for size, short in _SIZES.items()
}
#: official checkpoint file name -> download URL
CHECKPOINT_URLS = {
    **{
        f"sam2.1_hiera_{size}.pt": f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt"
        for size in _SIZES
    },
    **{
        f"sam2_hiera_{size}.pt": f"https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{size}.pt"
        for size in _SIZES
    },
}
_IMAGE_SIZES = (256, 512, 1024)
#: Settings for a quick look on a CPU (its seconds per block are measured in the README): the coarsest
#: input size and a 16 x 16 prompt grid. Named in the estimate after the first pass on a CPU.
PREVIEW_PARAMS = {"image_size": 256, "points_per_side": 16}
_NAME_RE = re.compile(
    r"(?:^|[^a-z0-9])(sam2(?:\.1|p1|_1)?)[_-]hiera[_-](tiny|small|base[_-]plus|b\+|large|t|s|l)(?![a-z0-9])"
)

# per worker process: model key -> built model; (model key, generator params, thread) -> generator
_MODELS: dict[tuple, Any] = {}
_GENERATORS: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def _parse_name(text: str) -> tuple[str, str] | None:
    """(version, size) from a name like ``sam2.1_hiera_tiny``, ``sam2_hiera_b+`` or None."""
    m = _NAME_RE.search(text.lower())
    if not m:
        return None
    ver = "sam2" if m.group(1) == "sam2" else "sam2.1"
    return ver, _SIZE_ALIASES[m.group(2).replace("-", "_")]


def resolve_model_cfg(model_cfg: str | None, checkpoint: str | os.PathLike | None) -> str:
    """The sam2 package config path for ``model_cfg`` or, if None, the checkpoint's name.

    Accepts ``"tiny"``/``"small"``/``"base_plus"``/``"large"`` (SAM2.1),
    names such as ``"sam2_hiera_s"`` or ``"sam2.1_hiera_base_plus"``, and the
    package-relative paths themselves.

    Examples
    --------
    >>> resolve_model_cfg(None, "/models/sam2.1_hiera_tiny.pt")
    'configs/sam2.1/sam2.1_hiera_t.yaml'
    >>> resolve_model_cfg("sam2_hiera_b+", None)
    'configs/sam2/sam2_hiera_b+.yaml'
    >>> resolve_model_cfg("large", None)
    'configs/sam2.1/sam2.1_hiera_l.yaml'
    """
    known = ", ".join(sorted(set(MODEL_CONFIGS.values())))
    if model_cfg is None:
        if checkpoint is None:
            raise ConfigError("no `model_cfg` given and no checkpoint to infer it from", hint=f"pass one of {known}")
        parsed = _parse_name(Path(checkpoint).name)
        if parsed is None:
            raise ConfigError(
                f"cannot infer the SAM2 model config from the checkpoint name `{Path(checkpoint).name}`",
                hint="pass --model-cfg tiny|small|base_plus|large (SAM2.1) or e.g. sam2_hiera_large (SAM2)",
            )
        return MODEL_CONFIGS[parsed]
    if not isinstance(model_cfg, str) or not model_cfg:
        raise ConfigError(f"`model_cfg` must be a config name, got {model_cfg!r}", hint=f"one of {known}")
    text = model_cfg.strip()
    if text in MODEL_CONFIGS.values():
        return text
    if text.lower() in _SIZE_ALIASES:
        return MODEL_CONFIGS[("sam2.1", _SIZE_ALIASES[text.lower()])]
    parsed = _parse_name(Path(text).name.removesuffix(".yaml"))
    if parsed is None:
        raise ConfigError(
            f"unknown SAM2 model config `{model_cfg}`",
            hint=f"use tiny|small|base_plus|large or one of {known}",
        )
    return MODEL_CONFIGS[parsed]


def _require_sam2():
    import importlib.util

    for mod in ("torch", "sam2", "hydra"):
        if importlib.util.find_spec(mod) is None:
            raise BackendUnavailableError(
                f"the `sam2` segmenter needs the Python package `{mod}`, which is not installed",
                hint="install torch and sam2 (see README: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0)",
            )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def models_dir() -> Path:
    """The directory :func:`fetch_model` writes to by default and :func:`find_checkpoint` looks in.

    ``$REMOTE_SAMSING_MODELS`` when set, else the per-user data directory
    (platformdirs: ``~/.local/share/remote-samsing/checkpoints`` on Linux,
    ``~/Library/Application Support/remote-samsing/checkpoints`` on macOS).
    """
    env = os.environ.get(MODELS_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("remote-samsing", appauthor=False)) / "checkpoints"


def _preference(path: Path) -> tuple:
    """Sort key of a checkpoint in the models directory: SAM2.1 before SAM2, larger models first."""
    parsed = _parse_name(path.stem.lower())
    if parsed is None:
        return (2, 0, path.name)
    order = list(_SIZES)[::-1]  # large, base_plus, small, tiny
    return (0 if parsed[0] == "sam2.1" else 1, order.index(parsed[1]), path.name)


def find_checkpoint(checkpoint: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The SAM2 checkpoint to use and how it was found.

    In order: ``checkpoint`` (``--checkpoint``, ``segmenter_params["checkpoint"]``),
    then ``$REMOTE_SAMSING_CHECKPOINT``, then the ``.pt`` files in
    :func:`models_dir` (SAM2.1 before SAM2, larger models first).

    Returns
    -------
    (Path, str)
        The file (not checked to exist when given) and ``"parameter"``,
        ``"$REMOTE_SAMSING_CHECKPOINT"`` or ``"models directory"``.

    Raises
    ------
    CheckpointError
        When none of the three places names a checkpoint.
    """
    if checkpoint is not None and str(checkpoint) != "":
        return Path(checkpoint).expanduser(), "parameter"
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        return Path(env).expanduser(), f"${CHECKPOINT_ENV}"
    folder = models_dir()
    # a download cut short leaves its temporary file (``<name>.<hex>.partial.pt``): never use it
    found = sorted((p for p in folder.glob("*.pt") if p.is_file() and ".partial" not in p.name),
                   key=_preference) if folder.is_dir() else []
    if found:
        return found[0].absolute(), "models directory"
    raise CheckpointError(
        f"no SAM2 checkpoint: none given (--checkpoint), ${CHECKPOINT_ENV} is not set, and {folder} holds no .pt file",
        hint="run `remote-samsing fetch-model sam2.1_hiera_large` (it writes to that directory), or use "
             "--segmenter felzenszwalb for the classical baseline",
    )


def fetch_model(name: str, *, dest: str | os.PathLike | None = None, timeout: float = 10.0) -> Path:
    """Download an official SAM2 / SAM2.1 checkpoint into ``dest``.

    Parameters
    ----------
    name : str
        ``tiny``, ``small``, ``base_plus``, ``large`` (SAM2.1) or a full name
        such as ``sam2.1_hiera_large`` or ``sam2_hiera_tiny`` (SAM2).
    dest : path, optional
        Directory for the file (created if needed); default :func:`models_dir`,
        where ``segment`` finds it.
    timeout : float
        Seconds to wait for the server before failing.

    Returns
    -------
    Path
        The checkpoint file; returned at once if it already exists.

    Raises
    ------
    BackendUnavailableError
        When ``HF_HUB_OFFLINE`` is set or the server cannot be reached; the
        hint names the URL and where to put the file.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a string, got {name!r}")
    key = name.strip().lower().removesuffix(".pt")
    if key in _SIZE_ALIASES:
        parsed = ("sam2.1", _SIZE_ALIASES[key])
    else:
        parsed = _parse_name(key)
    if parsed is None:
        raise ConfigError(
            f"unknown SAM2 model `{name}`",
            hint="use tiny|small|base_plus|large (SAM2.1) or e.g. sam2_hiera_large (SAM2)",
        )
    filename = f"{parsed[0]}_hiera_{parsed[1]}.pt"
    url = CHECKPOINT_URLS[filename]
    dest = models_dir() if dest is None else Path(dest)
    target = dest / filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    hint = f"download {url} on a machine with internet access, put it at {target} and pass --checkpoint {target}"
    if _offline():
        raise BackendUnavailableError(f"HF_HUB_OFFLINE is set: not downloading {filename}", hint=hint)
    dest.mkdir(parents=True, exist_ok=True)

    def download(part: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)

    try:
        return write_atomic(target, download)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise BackendUnavailableError(f"cannot download {url}: {exc}", hint=hint) from None


def write_random_checkpoint(path: str | os.PathLike, *, model_cfg: str = "tiny", seed: int = 0) -> Path:
    """Save a randomly initialised SAM2 model as a checkpoint (tests and plumbing only).

    The file has the official layout (``{"model": state_dict}``); name it like
    an official checkpoint (e.g. ``sam2.1_hiera_tiny.pt``) to have its config
    inferred. Random weights give useless masks.
    """
    _require_sam2()
    import torch

    cfg = resolve_model_cfg(model_cfg, None)
    model = _build(cfg, checkpoint=None, image_size=None, device="cpu", seed=seed)
    path = Path(path)
    torch.save({"model": model.state_dict()}, path)
    return path


_ZIP_MAGIC = b"PK\x03\x04"
_CHECKPOINT_HINT = "pass a SAM2 .pt file as downloaded by `remote-samsing fetch-model`"


def _looks_like_text(head: bytes) -> str | None:
    """``head`` decoded when it is (nearly all) printable text: a web page, a pointer file, a note."""
    text = head.decode("utf-8", errors="replace")
    # a multi-byte character cut at the end of ``head`` leaves one replacement character
    printable = sum(c != "\ufffd" and (c.isprintable() or c in "\r\n\t") for c in text)
    return text if text and printable >= 0.95 * len(text) else None


def _checkpoint_problem(path: Path) -> str | None:
    """What makes ``path`` unusable as a checkpoint, told by its first bytes; None when it may be one.

    A look at the head (and at a zip archive's end record) names the common
    cases that ``torch.load`` reports as unrelated internal errors: a text or
    HTML file saved as ``.pt``, a Git LFS pointer, a download cut short.
    """
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a .pt file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError as exc:
        return f"cannot be opened: {exc.strerror or exc}"
    if size == 0:
        return "is empty (0 bytes)"
    if head.startswith(_ZIP_MAGIC):
        if zipfile.is_zipfile(path):
            return None
        return f"is truncated or damaged: a zip archive without its end ({size:,} bytes); download it again"
    if head.startswith(b"\x80"):  # torch's legacy format starts with a pickle
        return None
    text = _looks_like_text(head)
    if text is None:
        return f"is not a PyTorch checkpoint (neither a zip archive nor a pickle; it begins {head[:8]!r})"
    if text.startswith("version https://git-lfs"):
        return "is a Git LFS pointer, not the weights (fetch them with `git lfs pull`)"
    kind = "an HTML page" if text.lstrip().lower().startswith(("<!doctype html", "<html")) else "a text file"
    return f"is {kind}, not a PyTorch checkpoint (it begins {' '.join(text.split())[:40]!r})"


def _load_failure(exc: BaseException) -> str:
    """What ``torch.load`` said, as one whole sentence: its messages are paragraphs of advice."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)  # the C++ source line is no help
    refused = re.search(r"WeightsUnpickler error:\s*(.*)", text)
    if refused:  # the useful part sits after a paragraph about the weights_only default
        reason = re.sub(r"\s*Check the documentation of torch\.load.*$", "", refused.group(1))
        text = f"the weights-only unpickler refused it: {reason}"
    end = text.find(". ")
    return f"{type(exc).__name__}: {text[: end + 1] if end > 0 else text}"


def _read_checkpoint(checkpoint: Path, *, source: str | None = None) -> Mapping:
    """The state dict in ``checkpoint``; every way it can be unusable is one CheckpointError naming it (and
    ``source``, how it was found)."""
    import torch

    problem = _checkpoint_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"checkpoint `{checkpoint}`{_origin(source)} {problem}",
                              hint=_origin_hint(_CHECKPOINT_HINT, source))
    with open(checkpoint, "rb") as fh:
        is_zip = fh.read(4) == _ZIP_MAGIC
    try:
        # mmap reads only the tensors' pages that are used; it needs the zip format
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # noqa: BLE001 - torch.load on damaged bytes raises any type (KeyError, IndexError, ...)
        raise CheckpointError(
            f"checkpoint `{checkpoint}`{_origin(source)} cannot be read by torch.load: {_load_failure(exc)}",
            hint=_origin_hint(_CHECKPOINT_HINT, source),
        ) from None
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not sd or not all(hasattr(v, "shape") for v in sd.values()):
        raise CheckpointError(
            f"checkpoint `{checkpoint}`{_origin(source)} holds no SAM2 state dict (expected {{'model': state_dict}}, "
            f"found {type(obj).__name__})",
            hint=_origin_hint(_CHECKPOINT_HINT, source),
        )
    return sd


def _origin(how: str | None) -> str:
    """`` (from ...)`` after a checkpoint's name when it was found rather than given; "" when given."""
    return f" (from {how})" if how and how != "parameter" else ""


def _origin_hint(hint: str, how: str | None) -> str:
    """``hint``, plus where a checkpoint picked from the models directory came from: the user named no file."""
    if how != "models directory":
        return hint
    which = f"${MODELS_ENV}" if os.environ.get(MODELS_ENV, "").strip() else "the per-user one"
    return (f"{hint}; no checkpoint was given, so the first .pt file in the models directory {models_dir()} "
            f"({which}) was taken: replace or remove it there, or pass --checkpoint")


#: Below this share of the config's tensor names a file is no SAM2 checkpoint at all: any SAM2 or SAM2.1
#: checkpoint holds at least half the names of any other size's config.
_MIN_SHARED_NAMES = 0.1


def _load_state_dict(model, checkpoint: Path, cfg: str, *, source: str | None = None) -> None:
    """Load ``checkpoint`` into ``model`` strictly; a mismatch is a CheckpointError (``source``: how the
    file was found, see :func:`find_checkpoint`)."""
    sd = _read_checkpoint(checkpoint, source=source)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    shared = len(own) - len(missing)
    if shared < _MIN_SHARED_NAMES * len(own):
        # another model's weights: its config is no help
        held = "none" if shared == 0 else f"only {shared}"
        other = f" and {counted(len(unexpected), 'other tensors')} (e.g. {unexpected[0]})" if unexpected else ""
        raise CheckpointError(
            f"checkpoint `{checkpoint}`{_origin(source)} is not a SAM2 checkpoint: it does not match the model "
            f"config `{cfg}`, holding {held} of its {len(own)} tensors{other}",
            hint=_origin_hint(_CHECKPOINT_HINT, source),
        )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} tensors of another shape (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise CheckpointError(
            f"checkpoint `{checkpoint}`{_origin(source)} does not match the model config `{cfg}`: "
            + "; ".join(parts),
            hint=_origin_hint("pass the --model-cfg of this checkpoint (tiny/small/base_plus/large; SAM2 vs SAM2.1)",
                              source),
        )
    model.load_state_dict(sd, strict=True)


def _refuse_unusable(path: Path, *, how: str) -> None:
    """A CheckpointError when the file's first bytes already show it is no checkpoint (cheap, no torch)."""
    problem = _checkpoint_problem(path)
    if problem is None:
        return
    hint = _CHECKPOINT_HINT
    if problem == "does not exist":
        hint = "fix the path, or download one with `remote-samsing fetch-model sam2.1_hiera_large`"
    raise CheckpointError(f"checkpoint `{path}` (from {how}) {problem}", hint=_origin_hint(hint, how))


def check_checkpoint(checkpoint: str | os.PathLike | None = None, *, model_cfg: str | None = None) -> dict[str, Any]:
    """Check, on the CPU, that a checkpoint is the one ``segment`` would accept.

    Finds the file as :func:`find_checkpoint` does, infers its model config
    from its name unless ``model_cfg`` is given, reads it and compares every
    tensor's name and shape with that config's model (built on the CPU with
    random weights, then dropped): the same checks as
    ``SAM2Segmenter(verify_checkpoint=True)``.

    Returns
    -------
    dict
        ``checkpoint`` (Path), ``source`` (how it was found), ``model_cfg``,
        ``inferred`` (the config came from the file name), ``tensors``,
        ``parameters`` and ``bytes`` (the file's size).

    Raises
    ------
    CheckpointError
        No checkpoint, or one that is missing, unreadable or of another model.
    ConfigError
        The config cannot be inferred from the name and none was given.
    """
    path, how = find_checkpoint(checkpoint)
    _refuse_unusable(path, how=how)
    cfg = resolve_model_cfg(model_cfg, path)
    _require_sam2()
    model = _build(cfg, checkpoint=path, image_size=None, device="cpu", seed=0, source=how)
    sd = model.state_dict()
    return {
        "checkpoint": path, "source": how, "model_cfg": cfg, "inferred": model_cfg is None, "tensors": len(sd),
        "parameters": int(sum(p.numel() for p in model.parameters())), "bytes": path.stat().st_size,
    }


@contextlib.contextmanager
def _quiet_torch_deprecations():
    """sam2 builds its image transforms with ``torch.jit.script``, which torch now deprecates: a
    FutureWarning per worker that its user cannot act on, filtered where sam2 raises it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        yield


def _build(cfg: str, *, checkpoint: Path | None, image_size: int | None, device: str, seed: int,
           source: str | None = None):
    """Build a SAM2 model on ``device`` (random init is seeded; weights from ``checkpoint``, found as
    ``source`` says)."""
    import torch
    from sam2.build_sam import build_sam2

    overrides = [f"++model.image_size={image_size}"] if image_size else []
    with torch.random.fork_rng(devices=[]), _quiet_torch_deprecations():
        torch.manual_seed(seed)
        model = build_sam2(cfg, ckpt_path=None, device="cpu", hydra_overrides_extra=overrides)
    if checkpoint is not None:
        _load_state_dict(model, checkpoint, cfg, source=source)
    return model.to(device).eval()


class _SAM2MaskGenerator:
    """Adapter: SAM2's automatic mask generator with the multi-pass interface.

    One instance per model and thread; per pass only the prompts
    (``point_grids``) and thresholds change, the model is never rebuilt.
    ``last_timings`` splits the last call into image-encoder and the rest
    (prompt decoder + mask post-processing) seconds.
    """

    def __init__(self, model, *, device: str, image_size: int | None, points_per_batch: int, box_nms_thresh: float):
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        self.device = device
        with _quiet_torch_deprecations():
            self.amg = SAM2AutomaticMaskGenerator(
                model,
                points_per_side=None,
                point_grids=[np.zeros((1, 2))],
                points_per_batch=points_per_batch,
                box_nms_thresh=box_nms_thresh,
                crop_n_layers=0,
                min_mask_region_area=0,
                output_mode="binary_mask",
            )
        if image_size:
            s = int(image_size)
            # SAM2ImagePredictor hard-codes the 1024-input feature sizes (stack.md §2)
            self.amg.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.last_timings: dict[str, float] = {}
        self._encoder_s = 0.0
        set_image = self.amg.predictor.set_image

        def timed_set_image(image):
            t0 = time.perf_counter()
            set_image(image)
            self._sync()
            self._encoder_s += time.perf_counter() - t0

        self.amg.predictor.set_image = timed_set_image

    def _sync(self):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def generate(self, image, *, points, pred_iou_thresh, stability_score_thresh):
        import contextlib

        import torch

        h, w = image.shape[:2]
        self.amg.point_grids = [np.asarray(points, np.float64) / np.array([w, h], np.float64)]
        self.amg.pred_iou_thresh = float(pred_iou_thresh)
        self.amg.stability_score_thresh = float(stability_score_thresh)
        self._encoder_s = 0.0
        if self.device.startswith("cuda"):
            ctx = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            ctx = contextlib.nullcontext()
        t0 = time.perf_counter()
        with torch.inference_mode(), ctx:
            records = self.amg.generate(np.ascontiguousarray(image))
        self._sync()
        total = time.perf_counter() - t0
        self.last_timings = {"encoder_s": self._encoder_s, "decoder_s": total - self._encoder_s}
        return records


def _multipass_config(config: MultipassConfig | None, multipass: dict[str, Any]) -> MultipassConfig:
    """The multi-pass parameters, given as one ``config`` or as keywords (not both)."""
    if config is not None and multipass:
        raise ConfigError("give the multi-pass parameters either as `config` or as keywords, not both")
    if config is None:
        fields = set(MultipassConfig.__dataclass_fields__)
        unknown = sorted(set(multipass) - fields)
        if unknown:
            import inspect

            own = {n for n, p in inspect.signature(SAM2Segmenter).parameters.items() if p.kind is p.KEYWORD_ONLY}
            raise ConfigError(
                f"unknown parameter(s) for the sam2 segmenter: {', '.join(unknown)}",
                hint=f"valid parameters: {', '.join(sorted(own))}; multi-pass: {', '.join(sorted(fields))}",
            )
        return MultipassConfig(**multipass)
    if not isinstance(config, MultipassConfig):
        raise ConfigError(f"`config` must be a MultipassConfig, got {type(config).__name__}")
    return config


def _check_params(*, random_weights, seed, image_size, device, points_per_batch, box_nms_thresh) -> None:
    """The SAM2 segmenter's own parameters (the checkpoint is checked by the caller)."""
    check_bool("random_weights", random_weights)
    check_int("seed", seed, minimum=0)
    if image_size is not None and (isinstance(image_size, bool) or image_size not in _IMAGE_SIZES):
        raise ConfigError(f"`image_size` must be None, 256, 512 or 1024, got {image_size!r}")
    if device not in DEVICES and not (isinstance(device, str) and re.fullmatch(r"cuda:\d+", device)):
        raise ConfigError(f"`device` must be {', '.join(DEVICES)} or cuda:N, got {device!r}")
    check_int("points_per_batch", points_per_batch, minimum=1)
    check_number("box_nms_thresh", box_nms_thresh, minimum=0.0, maximum=1.0, open_min=True)


class SAM2Segmenter:
    """Multi-pass SAM2 segmentation of a block (the paper's method).

    Parameters
    ----------
    checkpoint : path, optional
        SAM2 / SAM2.1 ``.pt`` file; None finds one (:func:`find_checkpoint`:
        ``$REMOTE_SAMSING_CHECKPOINT``, then the models directory). Not
        with ``random_weights``.
    model_cfg : str, optional
        Model config (``tiny``/``small``/``base_plus``/``large`` for SAM2.1,
        ``sam2_hiera_l`` etc. for SAM2, or the package path); None infers it
        from the checkpoint's file name.
    random_weights : bool
        Use a randomly initialised model (seeded by ``seed``): tests and
        plumbing only; needs ``model_cfg`` unless a checkpoint name gives it.
    seed : int
        Seed of the random initialisation.
    image_size : {None, 256, 512, 1024}
        SAM2 input size; None keeps the config's (1024). Smaller is faster and
        coarser.
    device : {"auto", "cuda", "cpu"}
        "auto" picks CUDA on the worker when available.
    points_per_batch : int
        Prompts decoded together (GPU memory vs speed).
    box_nms_thresh : float
        SAM2's box NMS IoU within a pass (paper: 0.7).
    verify_checkpoint : bool
        Check in ``__init__`` (on the CPU) that the checkpoint's tensors match
        the config, so a wrong file fails before a cluster starts.
    config : MultipassConfig, optional
        Multi-pass parameters as one object; or give them as keywords.
    **multipass
        Any :class:`~remote_samsing.multipass.MultipassConfig` field
        (``points_per_side``, ``point_strategy``, ``iou_start``, ``max_passes`` ...).

    Attributes
    ----------
    last_stats : dict or None
        Statistics of the last ``segment`` call in this thread
        (:meth:`MultipassResult.summary`: passes, stop reason, coverage and
        per-pass stats with encoder/decoder/acceptance seconds).
    """

    def __init__(
        self,
        *,
        checkpoint: str | os.PathLike | None = None,
        model_cfg: str | None = None,
        random_weights: bool = False,
        seed: int = 0,
        image_size: int | None = None,
        device: str = "auto",
        points_per_batch: int = 64,
        box_nms_thresh: float = 0.7,
        verify_checkpoint: bool = True,
        config: MultipassConfig | None = None,
        **multipass: Any,
    ) -> None:
        self.config = _multipass_config(config, multipass)
        _check_params(random_weights=random_weights, seed=seed, image_size=image_size, device=device,
                      points_per_batch=points_per_batch, box_nms_thresh=box_nms_thresh)
        if checkpoint is not None and random_weights:
            raise ConfigError("`random_weights=True` cannot be combined with a `checkpoint`")
        self.checkpoint_source: str | None = None
        if not random_weights:
            path, self.checkpoint_source = find_checkpoint(checkpoint)
            _refuse_unusable(path, how=self.checkpoint_source)
            checkpoint = path.absolute()  # not resolve(): a symlink's name may carry the config
        self.checkpoint: Path | None = checkpoint
        self.model_cfg = resolve_model_cfg(model_cfg, checkpoint)
        self.random_weights = random_weights
        self.seed = seed
        self.image_size = image_size
        self.device = device
        self.points_per_batch = points_per_batch
        self.box_nms_thresh = float(box_nms_thresh)
        _require_sam2()
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise BackendUnavailableError(
                    f"device={device!r} requested but CUDA is not available to torch {torch.__version__}",
                    hint="use --device auto or cpu, or install a CUDA build of torch on a GPU machine",
                )
        if checkpoint is not None and verify_checkpoint:
            _build(self.model_cfg, checkpoint=checkpoint, image_size=None, device="cpu", seed=seed,
                   source=self.checkpoint_source)
        self._local = threading.local()

    # -- pickling: only parameters travel -------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        src = str(self.checkpoint) if self.checkpoint else f"random(seed={self.seed})"
        return f"SAM2Segmenter({src}, {self.model_cfg}, image_size={self.image_size}, device={self.device!r})"

    @property
    def resources(self) -> dict[str, float] | None:
        """Dask worker resources its tasks ask for: one GPU unless pinned to the CPU."""
        return None if self.device == "cpu" else dict(GPU_RESOURCES)

    def describe(self) -> dict[str, Any]:
        """Parameters for run.json (paths and numbers only)."""
        import dataclasses

        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_source": getattr(self, "checkpoint_source", None),
            "model_cfg": self.model_cfg,
            "image_size": self.image_size,
            "device": self.device,
            "random_weights": bool(getattr(self, "random_weights", False)),
            "multipass": dataclasses.asdict(self.config) if dataclasses.is_dataclass(getattr(self, "config", None)) else None,
        }

    @property
    def last_attributes(self) -> dict[str, np.ndarray] | None:
        """Per-label attributes of the last ``segment`` call in this thread
        (``pass``, ``predicted_iou``, ``stability_score``, indexed by label)."""
        return getattr(self._local, "attributes", None)

    @property
    def last_stats(self) -> dict[str, Any] | None:
        return getattr(self._local, "stats", None)

    # -- model and generator, cached per worker process -----------------------------
    def _resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _model_key(self) -> tuple:
        src = str(self.checkpoint) if self.checkpoint is not None else f"random:{self.seed}"
        return (src, self.model_cfg, self.image_size, self._resolved_device())

    def _generator(self) -> _SAM2MaskGenerator:
        mkey = self._model_key()
        gkey = (mkey, self.points_per_batch, self.box_nms_thresh, threading.get_ident())
        gen = _GENERATORS.get(gkey)
        if gen is not None:
            return gen
        with _CACHE_LOCK:
            model = _MODELS.get(mkey)
            if model is None:
                device = mkey[3]
                if device.startswith("cuda"):
                    import torch

                    if torch.cuda.get_device_properties(device).major >= 8:
                        torch.backends.cuda.matmul.allow_tf32 = True
                        torch.backends.cudnn.allow_tf32 = True
                model = _build(
                    self.model_cfg, checkpoint=self.checkpoint, image_size=self.image_size,
                    device=device, seed=self.seed, source=getattr(self, "checkpoint_source", None),
                )
                _MODELS[mkey] = model
            gen = _SAM2MaskGenerator(
                model, device=mkey[3], image_size=self.image_size,
                points_per_batch=self.points_per_batch, box_nms_thresh=self.box_nms_thresh,
            )
            _GENERATORS[gkey] = gen
        return gen

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write the current model's weights as ``{"model": state_dict}`` (official layout)."""
        import torch

        model = _MODELS.get(self._model_key())
        if model is None:
            model = self._generator().amg.predictor.model
        path = Path(path)
        torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
        return path

    # -- the segmenter contract ------------------------------------------------------
    def segment_with_stats(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> MultipassResult:
        """Like :meth:`segment` but returns the whole :class:`MultipassResult`."""
        block = np.asarray(block)
        shape = block.shape[:2]
        valid = block_info.get("valid")
        if valid is None:
            valid = np.ones(shape, bool)
        core = None
        if block_info.get("core") is not None:
            window = block_info.get("window")
            if window is None:
                raise InputError("block_info has `core` but no `window` to place it")
            wy0, _, wx0, _ = (int(v) for v in window)
            cy0, cy1, cx0, cx1 = (int(v) for v in block_info["core"])
            core = (cy0 - wy0, cy1 - wy0, cx0 - wx0, cx1 - wx0)
        result = run_multipass(block, valid=valid, core=core, generator=self._generator(), config=self.config,
                               on_pass=self._pass_reporter(block_info))
        stats = result.summary()
        stats.update(model_cfg=self.model_cfg, image_size=self.image_size or 1024, device=self._model_key()[3])
        self._local.stats = stats
        self._local.attributes = result.attributes
        return result

    def _pass_reporter(self, block_info: Mapping[str, Any]):
        """The ``on_pass`` of one block: each pass reported (:func:`remote_samsing._progress.report_pass`),
        on a CPU with the preview settings that would be faster than these."""
        block = block_info.get("block_id")
        device = self._model_key()[3]
        base = {"block": [int(v) for v in block] if block is not None else None, "device": device,
                "preview": self._preview_flags() if device == "cpu" else ""}

        def on_pass(stats: Mapping[str, Any]) -> None:
            report_pass({**base, "pass": int(stats["pass"]), "prompts": int(stats["n_prompts"]),
                         "accepted": int(stats["accepted"]), "coverage": float(stats["coverage"]),
                         "seconds": float(stats["generate_s"] + stats["accept_s"])})

        return on_pass

    def _preview_flags(self) -> str:
        """``--segmenter-param`` flags for :data:`PREVIEW_PARAMS` where this segmenter is slower; "" if none."""
        current = {"image_size": self.image_size or 1024, "points_per_side": self.config.points_per_side}
        return " ".join(f"--segmenter-param {k}={v}" for k, v in PREVIEW_PARAMS.items() if current[k] > v)

    def segment(self, block: np.ndarray, *, block_info: Mapping[str, Any]) -> np.ndarray:
        """Segment one padded block; returns (y, x) uint32 labels, 0 = none.

        ``block_info["valid"]`` marks usable pixels; ``block_info["core"]``
        (mosaic pixels, optional) is the core the stop rule measures, placed
        with ``block_info["window"]``. Statistics go to :attr:`last_stats`.
        """
        return self.segment_with_stats(block, block_info=block_info).labels
