"""`pipeline.open_dataset`, `export` and `reduce`: the maps for other tools, and as features. Never
imports torch; `open_dataset` imports xarray and `reduce` scikit-learn when called."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..analysis.config import ExportConfig, ReduceConfig
from ..config import default
from ..errors import UsageError

if TYPE_CHECKING:
    import xarray

    from ..analysis.export import ExportSummary
    from ..analysis.reduction import ReduceSummary


def open_dataset(path: str | os.PathLike, ref: int | str, *, chunks: int | None = None) -> xarray.Dataset:
    """A stage or layer of an fmpipe file as a lazy `xarray.Dataset`, decoded.

    Needs ``pip install 'fmpipe[xarray]'``.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file.
    ref : int or str
        A stage index (negative counts from the last), or a layer's name.
    chunks : int or None
        Rows per dask block, when dask is installed; None: a size that keeps a block near 64 MB.

    Returns
    -------
    xarray.Dataset
        ``data`` (image, channel, y, x) float32 decoded, ``min``/``max``/``mean`` (image, channel), the
        keys as the ``image`` coordinate.
    """
    try:
        from ..analysis.dataset import open_dataset as _open
    except ImportError as err:
        if err.name != "xarray":
            raise
        raise UsageError("pipeline.open_dataset needs xarray: python -m pip install 'fmpipe[xarray]'.") from None
    return _open(path, ref, chunks=chunks)


def _e(name: str):
    return default(ExportConfig, name)


def export(
    path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    stage: int | str | None = _e("stage"),
    images: str | Sequence[int | str] | None = _e("images"),
    format: str = _e("format"),
    compression: str = _e("compression"),
    allow_partial: bool = _e("allow_partial"),
    overwrite: bool = _e("overwrite"),
) -> ExportSummary:
    """Write maps for tools without fmpipe: one .npy per image, or an HDF5 copy any HDF5 library reads.

    The defaults are `pipeline.ExportConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file.
    dest : str or os.PathLike
        ``npy``: a folder; ``hdf5``: the new file.
    stage : int or str or None
        A stage index or a layer's name; None (``hdf5`` only): every stage and layer.
    images : str or sequence of int or str, or None
        ``npy``: rows, ranges and keys, ``"0:4,cats/a.jpg"``; None: every stored image.
    format : str
        ``npy``: one ``DEST/<image folder>.npy`` of (C, H, W) float32 per image, named by key as `render`
        names its folders (``cats/a.jpg`` → ``cats/a.npy``). ``hdf5``: a self-contained copy with the
        same layout and dimension scales (MATLAB, R, Julia, h5py without hdf5plugin).
    compression : str
        ``hdf5``: ``gzip`` (deflate, built into every HDF5 library).
    allow_partial : bool
        Use the done images of an incomplete file.
    overwrite : bool
        Replace files an earlier export wrote.

    Returns
    -------
    ExportSummary
        The destination, format, images written and left out, bytes, seconds; ``.line()``.
    """
    from ..analysis.export import export as run

    config = ExportConfig(
        path=str(path),
        dest=str(dest),
        stage=stage,
        images=images,
        format=format,
        compression=compression,
        allow_partial=allow_partial,
        overwrite=overwrite,
    )
    return run(config)


def _rd(name: str):
    return default(ReduceConfig, name)


def reduce(
    path: str | os.PathLike,
    *,
    stage: int | str,
    method: str,
    dim: int,
    out: str | os.PathLike,
    seed: int = _rd("seed"),
    pool: tuple[int, int] | None = _rd("pool"),
    max_memory_gb: float | None = _rd("max_memory_gb"),
    allow_partial: bool = _rd("allow_partial"),
    overwrite: bool = _rd("overwrite"),
) -> ReduceSummary:
    """Reduce each image's flattened maps to `dim` numbers, in row blocks: memory does not grow with the images.

    Images without maps (failed, unfinished) are left out, and logged. Needs scikit-learn
    (``pip install 'fmpipe[reduce]'``); the defaults are `pipeline.ReduceConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file.
    stage : int or str
        A stage index (negative counts from the last), or a layer's name.
    method : str
        ``srp``: very sparse random projection (density 1/sqrt(features)), reproducible from `seed`;
        pairwise distances kept within the Johnson-Lindenstrauss bound. ``pca``: incremental PCA in two
        passes; it needs about 44 * dim * features bytes and refuses up front when that exceeds
        `max_memory_gb`.
    dim : int
        D: numbers per image.
    out : str or os.PathLike
        The features file, ending in ``.npz``: ``features`` (N, D) float32 and ``keys`` (N,); ``pca``
        adds ``explained_variance_ratio`` (D,) and ``mean`` (features,).
    seed : int
        ``srp``: the projection's seed (same seed, same features).
    pool : (int, int) or None
        Average-pool every map to (h, w) before flattening; None: as stored.
    max_memory_gb : float or None
        ``pca``: the GB it may use; None: the memory available now.
    allow_partial : bool
        Use the done images of an incomplete file.
    overwrite : bool
        Replace an existing `out`.

    Returns
    -------
    ReduceSummary
        The file, method, images written and left out, features before the reduction, D, seconds; ``.line()``.
    """
    from ..analysis.reduction import reduce as run

    config = ReduceConfig(
        path=str(path),
        stage=stage,
        method=method,
        dim=dim,
        out=str(out),
        seed=seed,
        pool=pool,
        max_memory_gb=max_memory_gb,
        allow_partial=allow_partial,
        overwrite=overwrite,
    )
    return run(config)
