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

One verb per command of the `fmpipe` CLI, which calls these. Options are keyword-only, each with
its default shown by `help(pipeline.render)` (the defaults are those of the config dataclasses:
`ExtractConfig`, `RenderConfig`, ...); an unknown keyword is Python's own `TypeError`, a bad value
a `UsageError`. The public API is this module's `__all__` (the verbs, the types they return and
take, and the errors, also in `pipeline.errors`); every other module is internal and may change.
Heavy modules load on first use: only `extract`, `stages`, `layers` and `verify(recompute=...)`
import torch, and the result types load when first named. Importing `pipeline` registers
hdf5plugin's filters (zstd), so h5py, xarray and h5netcdf read fmpipe files with no other import.
"""

from __future__ import annotations

import importlib
import types

import hdf5plugin  # noqa: F401  (registers the zstd filter for every HDF5 reader in this process)

from ._api.analysis import export, open_dataset, reduce
from ._api.extract import extract, layers, stages
from ._api.files import info, merge, open_store, verify
from ._api.look import colorize, gallery, render
from ._api.view import top, view
from .analysis.config import ExportConfig, ReduceConfig
from .config import ExtractConfig
from .errors import (
    ClosedStoreError,
    FingerprintMismatch,
    FmpipeError,
    IncompleteFileError,
    InputError,
    Interrupted,
    MissingFileError,
    ModelError,
    OutputExistsError,
    RowOutOfRange,
    RunFailure,
    UnknownKeyError,
    UsageError,
)
from .jobs.findings import VerifyConfig
from .rendering.config import RenderConfig
from .site.config import GalleryConfig
from .version import __version__
from .viewer.config import TopConfig, ViewConfig

# What the verbs return, loaded when first named (`pipeline.Store`, `from pipeline import TopResult`):
# their modules read HDF5, draw or serve, which `import pipeline` does not need.
_LAZY = {
    "ExportSummary": "analysis.export",
    "ExtractSummary": "extraction.summary",
    "GallerySummary": "site.build",
    "MergeSummary": "jobs.merge",
    "Problem": "jobs.findings",
    "ReduceSummary": "analysis.reduction",
    "RenderSummary": "rendering.run",
    "StageInfo": "records",
    "StageView": "storage.reading.store",
    "Store": "storage.reading.store",
    "TopItem": "viewer.examples",
    "TopResult": "viewer.examples",
    "VerifyReport": "jobs.findings",
}

__all__ = [  # noqa: RUF022  (grouped by what users meet: verbs, configs, results, errors)
    # the verbs
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
    # what they take: each verb's options and defaults are its config's fields
    "ExportConfig",
    "ExtractConfig",
    "GalleryConfig",
    "ReduceConfig",
    "RenderConfig",
    "TopConfig",
    "VerifyConfig",
    "ViewConfig",
    # what they return (loaded when first named: _LAZY)
    "ExportSummary",
    "ExtractSummary",
    "GallerySummary",
    "MergeSummary",
    "Problem",
    "ReduceSummary",
    "RenderSummary",
    "StageInfo",
    "StageView",
    "Store",
    "TopItem",
    "TopResult",
    "VerifyReport",
    # what they raise (pipeline.errors)
    "ClosedStoreError",
    "FingerprintMismatch",
    "FmpipeError",
    "IncompleteFileError",
    "InputError",
    "Interrupted",
    "MissingFileError",
    "ModelError",
    "OutputExistsError",
    "RowOutOfRange",
    "RunFailure",
    "UnknownKeyError",
    "UsageError",
    "__version__",
]

for _value in list(globals().values()):  # help() and reprs name each verb where users find it: `pipeline.render`
    if isinstance(_value, types.FunctionType) and _value.__module__.startswith(f"{__name__}._api."):
        _value.__module__ = __name__
del _value


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # found once; later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
