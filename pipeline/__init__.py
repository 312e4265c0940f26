"""fmpipe: every stage's feature maps of a vision network, for a whole image collection.

    from pipeline import extract, open_store
    extract("data/images", "out.h5")
    with open_store("out.h5") as store:
        maps = store.stage(2).data[0]   # (C, H, W) float16, read lazily

Heavy modules (torch) load only when `extract` is used, so reading and rendering
start fast.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fmpipe")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"

__all__ = ["__version__", "extract", "open_store", "render", "verify"]


def extract(images: str, out: str, **options):
    """Extract feature maps of every image below `images` into `out` (see ExtractConfig)."""
    from .config import ExtractConfig
    from .extraction.runner import extract as run

    return run(ExtractConfig(images=str(images), out=str(out), **options))


def render(path: str, stage: int, out: str | None = None, **options):
    """Render one stage of an fmpipe file to PNGs (see RenderConfig); returns a RenderSummary.

    `pipeline.rendering.colorize` gives one (image, stage, channel) as an RGB array instead.
    """
    from .rendering.run import RenderConfig
    from .rendering.run import render as run

    return run(RenderConfig(path=str(path), stage=stage, out=None if out is None else str(out), **options))


def open_store(path, require_complete: bool = False):
    """Open an fmpipe file lazily; see `pipeline.store.Store`."""
    from .storage.store import open_store as _open

    return _open(path, require_complete=require_complete)


def verify(path, *, recompute: int = 0, images_root: str | None = None, seed: int = 0, workers: int = 0):
    """Check that an fmpipe file (single, merged or copied) or a shards folder is intact and true to
    its sources and model; returns a `VerifyReport` (`.ok`, `.problems`, counts, `.summary()`).

    Every chunk of every stage is decoded with its checksum verified and compared with the stored
    statistics; every source file is hashed and compared with its recorded digest (below
    `images_root` if the images moved). `recompute=N` then runs N rows (picked with `seed`) through
    the recorded model again and compares the maps. `workers`: threads (0: one per core).
    """
    import time
    from pathlib import Path

    from .storage.findings import VerifyConfig, VerifyReport
    from .storage.verify import check_integrity

    config = VerifyConfig(str(path), recompute, None if images_root is None else str(images_root), seed, workers)
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
