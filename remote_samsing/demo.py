"""``make demo``: segment the bundled real scene on an embedded cluster.

Runs ``remote-samsing segment`` on ``examples/neon_osbs.tif`` (NEON, CC0) with
the Felzenszwalb baseline — a classical baseline, not SAM2 — and writes a PNG
preview of the labels over the image.
"""

from __future__ import annotations

import sys
from pathlib import Path


def preview(image_path: Path, labels_path: Path, out_png: Path, *, title: str = "") -> Path:
    """Save labels outlined over the image as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from skimage.segmentation import find_boundaries

    from .io import open_labels, open_mosaic, prepare_rgb

    img = open_mosaic(image_path)
    rgba = prepare_rgb(img, chunks=((img.sizes["y"],), (img.sizes["x"],))).compute()
    labels = open_labels(labels_path).values
    rgb = rgba[..., :3].copy()
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = (255, 255, 0)
    fig, ax = plt.subplots(1, 2, figsize=(12, 6))
    ax[0].imshow(rgb)
    ax[0].set_title("segment boundaries")
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 255, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    ax[1].imshow(colours[labels])
    ax[1].set_title(f"{int(labels.max())} segments")
    for a in ax:
        a.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


#: The demo's scene (under the repository root), segmenter and tiling.
SCENE = Path("examples") / "neon_osbs.tif"
SEGMENTER, SEGMENTER_PARAMS, TILE, PADDING = "felzenszwalb", {"scale": 200}, 128, 16


def seam_visibility_over_one_window(image: Path, labels) -> float:
    """The demo's labels' seam visibility over that of the scene segmented as one window
    (:func:`remote_samsing.metrics.seam_visibility_ratio`; near 1 where the tile grid does not show)."""
    from .io import open_mosaic
    from .metrics import seam_visibility_ratio
    from .pipeline import build_graph

    side = max(open_mosaic(image).shape[-2:])
    one = build_graph(image, segmenter=SEGMENTER, segmenter_params=SEGMENTER_PARAMS, tile_size=side, padding=0,
                      merge="none").labels.values
    return seam_visibility_ratio(labels, one, tile_size=TILE, padding=PADDING)


def main(argv=None) -> int:
    from .cli import main as cli_main
    from .io import open_labels

    root = Path.cwd()
    image = root / SCENE
    out = root / "demo-output"
    args = [
        "segment", str(image), str(out), "--segmenter", SEGMENTER,
        *[a for k, v in SEGMENTER_PARAMS.items() for a in ("--segmenter-param", f"{k}={v}")],
        "--tile-size", str(TILE), "--padding", str(PADDING), "--n-workers", "2", "--overwrite",
    ]
    try:
        cli_main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code)
    png = preview(image, out / "labels.zarr", out / "preview.png",
                  title=f"NEON OSBS, Felzenszwalb baseline (not SAM2), T={TILE}, P={PADDING}")
    ratio = seam_visibility_over_one_window(image, open_labels(out / "labels.zarr").values)
    print(f"outputs: {out}")
    print(f"preview: {png}")
    print(f"seam visibility over one window's: {ratio:.2f} (1: the tile grid does not show)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
