"""fmpipe: every stage's feature maps of a vision network, for a whole image collection.

    import pipeline
    pipeline.extract("data/images", "out.h5")                 # maps of every stage, one HDF5 file
    with pipeline.open_store("out.h5") as store:
        maps = store.stage(2).data[0]                          # (C, H, W) float16, read lazily
    pipeline.render("out.h5", 2, top_k=9, layout="grid")       # PNGs
    report = pipeline.verify("out.h5", recompute=4)            # intact and true to its sources?
    pipeline.top("out.h5", stage=2, channel=7).items          # the images that drive a channel
    ds = pipeline.open_dataset("out.h5", 2)                    # xarray, lazy, decoded float32
    pipeline.reduce("out.h5", stage=2, method="pca", dim=100, out="f.npz")   # features for RSA, probes

One verb per command of the `fmpipe` CLI, which calls these; options are keyword-only and an
unknown one is a `UsageError` that lists the valid ones. Heavy modules load on first use:
only `extract`, `stages` and `verify(recompute=...)` import torch. Importing `pipeline` registers
hdf5plugin's filters (zstd), so h5py, xarray and h5netcdf read fmpipe files with no other import.
"""

from __future__ import annotations

import dataclasses

import hdf5plugin  # noqa: F401  (registers the zstd filter for every HDF5 reader in this process)

from .errors import UsageError
from .version import __version__

__all__ = [
    "__version__",
    "colorize",
    "export",
    "extract",
    "gallery",
    "info",
    "layers",
    "merge",
    "open_dataset",
    "open_store",
    "reduce",
    "render",
    "stages",
    "top",
    "verify",
    "view",
]


def extract(images, out, **options):
    """Extract the maps of every image in `images` into `out`; returns an `ExtractSummary`.

    Options are `pipeline.config.ExtractConfig`'s fields (model, weights, stages, size,
    batch_size, device, dtype, compression, workers, shard_index, num_shards, overwrite, ...).
    """
    from .config import ExtractConfig
    from .extraction.summary import already_complete

    config = _config(ExtractConfig, "extract", images=str(images), out=str(out), **options)
    finished = already_complete(config)  # answered from the file, before torch is imported
    if finished is not None:
        return finished
    from .extraction.hub import check_weights_reachable

    check_weights_reachable(config)  # no network and nothing cached: fail before torch is imported
    from .extraction.runner import extract as run

    return run(config)


def stages(model: str | None = None, *, size: tuple[int, int] | None = None):
    """A model's stages at an input size (default: its own), probed with random weights on the CPU;
    returns a `ModelStages` (model, size_hw, stages: list of `StageInfo`)."""
    from .config import DEFAULT_MODEL
    from .extraction.taps import probe_stages

    return probe_stages(model or DEFAULT_MODEL, size)


def layers(model: str | None = None, *, size: tuple[int, int] | None = None, filter: str | None = None):
    """Every module `extract(layers=...)` can pick, in the order they run, with call counts and
    output shapes, probed with random weights on the CPU; returns a `ModelLayers`. `filter`: a
    regular expression the names must contain."""
    from .config import DEFAULT_MODEL
    from .extraction.layers import list_layers

    return list_layers(model or DEFAULT_MODEL, size, filter)


def open_store(path, *, require_complete: bool = False):
    """Open an fmpipe file lazily; see `pipeline.storage.store.Store`."""
    from .storage.store import open_store as _open

    return _open(path, require_complete=require_complete)


def open_dataset(path, ref: int | str, *, chunks: int | None = None):
    """Stage `ref` (an int index) or layer `ref` (a str) of an fmpipe file as a lazy `xarray.Dataset`:
    `data` (image, channel, y, x) float32 decoded, `min`/`max`/`mean` (image, channel), the keys as
    the `image` coordinate; dask arrays of `chunks` rows when dask is installed. Needs
    `pip install 'fmpipe[xarray]'`; see `pipeline.analysis.dataset.open_dataset`."""
    try:
        from .analysis.dataset import open_dataset as _open
    except ImportError as err:
        if err.name != "xarray":
            raise
        raise UsageError("pipeline.open_dataset needs xarray: python -m pip install 'fmpipe[xarray]'.") from None
    return _open(path, ref, chunks=chunks)


def export(
    path,
    dest,
    *,
    stage: int | str | None = None,
    images=None,
    format: str = "npy",
    compression: str = "gzip",
    allow_partial: bool = False,
    overwrite: bool = False,
):
    """Write maps for other tools; returns an `ExportSummary`.

    `format="npy"`: one `DEST/<image folder>.npy` of (C, H, W) float32 per image of stage (int) or
    layer (str) `stage`, named by key as render names its folders (`cats/a.jpg` → `cats/a.npy`);
    `images` picks rows, ranges, keys (`"0:4,cats/a.jpg"`). `format="hdf5"`: DEST is a self-contained
    copy with the same layout and dimension scales, compressed with gzip (deflate) only (built into
    every HDF5 library: MATLAB, R, Julia, h5py without hdf5plugin), of every stage and layer or just
    `stage`. Refuses to replace existing files unless `overwrite`.
    """
    from .analysis.config import ExportConfig
    from .analysis.export import export as run

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


def reduce(
    path,
    *,
    stage: int | str,
    method: str,
    dim: int,
    out,
    seed: int = 0,
    pool: tuple[int, int] | None = None,
    max_memory_gb: float | None = None,
    allow_partial: bool = False,
    overwrite: bool = False,
):
    """Reduce each image's flattened maps of stage (int) or layer (str) `stage` to `dim` numbers, in
    row blocks (memory does not grow with the images), into `out` (.npz): `features` (N, dim)
    float32 and `keys` (N,) of the images that hold maps (failed ones are left out, and logged).

    `method="srp"`: very sparse random projection (density 1/sqrt(features)), reproducible from
    `seed`; pairwise distances kept within the Johnson-Lindenstrauss bound. `method="pca"`:
    incremental PCA in two passes; `out` also holds `explained_variance_ratio` (dim,) and `mean`
    (features,); it needs about 44 * dim * features bytes (11 times the float32 components) and
    refuses up front when that exceeds `max_memory_gb` (default: the memory available now).
    `pool=(h, w)` average-pools every map first. Returns a `ReduceSummary`. Needs scikit-learn
    (`pip install 'fmpipe[reduce]'`).
    """
    from .analysis.config import ReduceConfig
    from .analysis.reduction import reduce as run

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


def info(path) -> str:
    """What `fmpipe info` prints: a file's run, completeness, stages and failures, or a shards folder's progress."""
    from pathlib import Path

    if Path(path).is_dir():
        from .jobs.shards import describe_folder

        return describe_folder(path)
    from .storage.info import describe_store

    with open_store(path) as store:
        return describe_store(store)


def merge(out, *, copy: bool = False, overwrite: bool = False):
    """Combine a job array's shards (OUT.shards/) into `out`: virtual datasets, or chunk copies with
    `copy`; returns a `MergeSummary`."""
    from .jobs.merge import merge as run

    return run(out, copy=copy, overwrite=overwrite)


def verify(path, **options):
    """Check that an fmpipe file (single, merged or copied) or a shards folder is intact and true to
    its sources and model; returns a `VerifyReport` (`.ok`, `.problems`, counts, `.summary()`).

    Every chunk of every stage is decoded with its checksum verified and compared with the stored
    statistics; every source file is hashed and compared with its recorded digest (below
    `images_root` if the images moved). `recompute=N` then runs N rows (picked with `seed`) through
    the recorded model again and compares the maps. `workers`: threads (0: one per core). A
    `package.module:factory` model is rebuilt only with `model=` (the recorded name, given again) or
    `trust_model=True`: fmpipe never imports code a file names on its word alone.
    """
    import time
    from pathlib import Path

    from .storage.findings import VerifyConfig, VerifyReport
    from .storage.verify import check_integrity

    config = _config(VerifyConfig, "verify", path=str(path), **options)
    report = VerifyReport(Path(config.path))
    model = None
    if config.recompute:  # rebuild the model first: a missing or different weights file fails fast
        from .extraction.recompute import prepare

        model = prepare(config)
    check_integrity(config, report)
    if model is not None:
        from .extraction.recompute import recompute as run

        run(model, config, report)
    report.seconds = time.perf_counter() - report.started
    return report


def render(path, stage: int, **options):
    """Render one stage of an fmpipe file to PNGs; returns a `RenderSummary`.

    Options are `pipeline.rendering.RenderConfig`'s fields (out, images, channels, top_k, layout,
    cmap, normalize, overlay, images_root, scale, workers, allow_partial, overwrite, ...).
    """
    from .rendering.config import RenderConfig
    from .rendering.run import render as run

    return run(_config(RenderConfig, "render", path=str(path), stage=stage, **options))


def gallery(path, **options):
    """Write the static HTML gallery of a render folder; returns a `GallerySummary`.

    Options are `pipeline.site.config.GalleryConfig`'s fields (out, images_root, per_page, ...).
    """
    from .site.build import write_gallery
    from .site.config import GalleryConfig

    return write_gallery(_config(GalleryConfig, "gallery", path=str(path), **options))


def colorize(path, image, stage: int, channel: int, **options):
    """(H, W, 3) uint8 RGB of one (image, stage, channel), coloured as render does; `image` is a
    row or a key. Options: cmap, normalize, scale."""
    from .rendering.painting import colorize as run

    _known("colorize", options, ("cmap", "normalize", "scale"))
    return run(path, image, stage, channel, **options)


def view(path, **options) -> None:
    """Serve the local web viewer of an fmpipe file until Ctrl-C/SIGTERM (prints its URL).

    Options are `pipeline.viewer.ViewConfig`'s fields (host, port, images_root).
    """
    from .viewer.config import ViewConfig
    from .viewer.server import serve

    serve(_config(ViewConfig, "view", path=str(path), **options))


def top(path, *, stage: int, channel: int, **options):
    """The images whose map of one channel has the largest max (or mean), best first; returns a
    `TopResult` (`.items`, `.to_json()` as the viewer's /api/top, `.table()`).

    Options are `pipeline.viewer.TopConfig`'s fields (k, by, out, images_root, cmap, normalize, overwrite,
    crop: `.crops` then holds where each image's map peaks, in its source photo).
    """
    from .viewer.config import TopConfig
    from .viewer.examples import top as run

    return run(_config(TopConfig, "top", path=str(path), stage=stage, channel=channel, **options))


def _config(cls, verb: str, **options):
    """`cls(**options)`, with an unknown option reported as a UsageError listing the valid ones."""
    _known(verb, options, [f.name for f in dataclasses.fields(cls)])
    return cls(**options)


def _known(verb: str, options: dict, valid) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(
            f"pipeline.{verb}() got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(valid))}."
        )
