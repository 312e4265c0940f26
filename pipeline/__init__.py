"""fmpipe: every stage's feature maps of a vision network, for a whole image collection.

    import pipeline
    pipeline.extract("data/images", "out.h5")                 # maps of every stage, one HDF5 file
    with pipeline.open_store("out.h5") as store:
        maps = store.stage(2).data[0]                          # (C, H, W) float16, read lazily
    pipeline.render("out.h5", 2, top_k=9, layout="grid")       # PNGs
    report = pipeline.verify("out.h5", recompute=4)            # intact and true to its sources?
    pipeline.top("out.h5", stage=2, channel=7).items          # the images that drive a channel

One verb per command of the `fmpipe` CLI, which calls these; options are keyword-only and an
unknown one is a `UsageError` that lists the valid ones. Heavy modules load on first use:
only `extract`, `stages` and `verify(recompute=...)` import torch.
"""

from __future__ import annotations

import dataclasses

from .errors import UsageError
from .version import __version__

__all__ = [
    "__version__",
    "colorize",
    "extract",
    "gallery",
    "info",
    "layers",
    "merge",
    "open_store",
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
    from .extraction.runner import extract as run

    return run(_config(ExtractConfig, "extract", images=str(images), out=str(out), **options))


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

    Options are `pipeline.viewer.TopConfig`'s fields (k, by, out, images_root, cmap, normalize, overwrite).
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
