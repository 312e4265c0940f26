"""`pipeline.render`, `gallery` and `colorize`: pictures of the maps. Never imports torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..config import default
from ..rendering.colormaps import DEFAULT_CMAP
from ..rendering.config import RenderConfig
from ..site.config import GalleryConfig

if TYPE_CHECKING:
    import numpy as np

    from ..rendering.run import RenderSummary
    from ..site.build import GallerySummary
    from ..storage.reading.store import Store


def _r(name: str):
    return default(RenderConfig, name)


def render(
    path: str | os.PathLike,
    stage: int | str,
    *,
    out: str | os.PathLike | None = _r("out"),
    images: str | Sequence[int | str] | None = _r("images"),
    channels: str | Sequence[int | str] | None = _r("channels"),
    top_k: int | None = _r("top_k"),
    layout: str = _r("layout"),
    cmap: str = _r("cmap"),
    normalize: str = _r("normalize"),
    overlay: bool = _r("overlay"),
    images_root: str | os.PathLike | None = _r("images_root"),
    scale: int = _r("scale"),
    workers: int = _r("workers"),
    allow_partial: bool = _r("allow_partial"),
    overwrite: bool = _r("overwrite"),
    pca_samples: int = _r("pca_samples"),
    pca_seed: int = _r("pca_seed"),
) -> RenderSummary:
    """Draw one stage's (or layer's) feature maps as PNGs: per channel, per-image grids, overlays, or PCA.

    The defaults are `pipeline.RenderConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file (single, merged or copied).
    stage : int or str
        A stage index (negative counts from the last), or a layer stored with ``layers=``, by name.
    out : str or os.PathLike or None
        The render folder; None: ``FILE-render/`` beside the file.
    images : str or sequence of int or str, or None
        Rows, ranges and keys, ``"0:4,7,cats/a.jpg"`` or ``[0, "cats/a.jpg"]``; None: every stored image.
    channels : str or sequence of int or str, or None
        Channel indices and ranges, ``"5,9,16:32"``; None: every channel (or `top_k`).
    top_k : int or None
        Only each image's K most active channels (by stored mean); excludes `channels`.
    layout : str
        ``channels`` (one PNG each), ``grid`` (one per image), ``both``, or ``pca`` (3 components as RGB).
    cmap : str
        ``viridis``, ``gray``, ``magma``, ``inferno``, ``plasma``, ``cividis`` or ``turbo``.
    normalize : str
        The colour scale per ``channel``, ``image``, or ``stage`` (comparable across images).
    overlay : bool
        Also blend each map onto its source image.
    images_root : str or os.PathLike or None
        Where the source images are now, if they moved; None: as recorded in the file.
    scale : int
        Nearest-neighbour upscale factor (0: automatic, small maps grow).
    workers : int
        Processes (0: all cores).
    allow_partial : bool
        Use the done images of an incomplete file.
    overwrite : bool
        Replace PNGs of an earlier render (never a file render did not write).
    pca_samples : int
        ``layout="pca"``: channel vectors sampled across the file to fit the components.
    pca_seed : int
        ``layout="pca"``: the seed of that sample.

    Returns
    -------
    RenderSummary
        The folder, PNGs and grids written, images (and those skipped, with why), seconds, ms per PNG.
    """
    from ..rendering.run import render as run

    config = RenderConfig(
        path=str(path),
        stage=stage,
        out=out,
        images=images,
        channels=channels,
        top_k=top_k,
        layout=layout,
        cmap=cmap,
        normalize=normalize,
        overlay=overlay,
        images_root=images_root,
        scale=scale,
        workers=workers,
        allow_partial=allow_partial,
        overwrite=overwrite,
        pca_samples=pca_samples,
        pca_seed=pca_seed,
    )
    return run(config)


def _g(name: str):
    return default(GalleryConfig, name)


def gallery(
    path: str | os.PathLike,
    *,
    out: str | os.PathLike | None = _g("out"),
    images_root: str | os.PathLike | None = _g("images_root"),
    per_page: int = _g("per_page"),
    thumb_side: int = _g("thumb_side"),
    allow_partial: bool = _g("allow_partial"),
) -> GallerySummary:
    """Write the static HTML gallery (``index.html``) of everything rendered from a file into a render folder.

    The pages open from disk; the defaults are `pipeline.GalleryConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        The fmpipe file that was rendered.
    out : str or os.PathLike or None
        The render folder; None: ``FILE-render/`` beside the file, as `render`'s.
    images_root : str or os.PathLike or None
        Where the source images are now, if they moved; None: as recorded in the file.
    per_page : int
        Images per index page.
    thumb_side : int
        The longest side of a source thumbnail, in pixels (at least 16).
    allow_partial : bool
        Use the done images of an incomplete file.

    Returns
    -------
    GallerySummary
        The index page, images, index pages, stages, thumbnails written, failures listed, seconds.
    """
    from ..site.build import write_gallery

    config = GalleryConfig(
        path=str(path),
        out=out,
        images_root=images_root,
        per_page=per_page,
        thumb_side=thumb_side,
        allow_partial=allow_partial,
    )
    return write_gallery(config)


def colorize(
    path: str | os.PathLike | Store,
    image: int | str,
    stage: int | str,
    channel: int,
    *,
    cmap: str = DEFAULT_CMAP,
    normalize: str = "channel",
    scale: int = 1,
) -> np.ndarray:
    """One (image, stage, channel) map coloured as `render` colours it, for notebooks.

    ``plt.imshow(pipeline.colorize("out.h5", "cat.jpg", 2, 7))`` or ``PIL.Image.fromarray(...)``.

    Parameters
    ----------
    path : str or os.PathLike or Store
        An fmpipe file, or a `Store` already open.
    image : int or str
        A row, or a key (``"cats/a.jpg"``).
    stage : int or str
        A stage index (negative counts from the last), or a layer stored with ``layers=``, by name.
    channel : int
        The channel.
    cmap : str
        ``viridis``, ``gray``, ``magma``, ``inferno``, ``plasma``, ``cividis`` or ``turbo``.
    normalize : str
        The colour scale: this map's own range (``channel``), the image's (``image``), or the stage's
        across the file (``stage``).
    scale : int
        Nearest-neighbour upscale factor.

    Returns
    -------
    numpy.ndarray
        (H·scale, W·scale, 3) uint8 RGB.
    """
    from ..rendering.painting import colorize as run

    return run(path, image, stage, channel, cmap=cmap, normalize=normalize, scale=scale)
