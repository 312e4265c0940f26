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
a `UsageError`. Heavy modules load on first use: only `extract`, `stages`, `layers` and
`verify(recompute=...)` import torch. Importing `pipeline` registers hdf5plugin's filters (zstd), so
h5py, xarray and h5netcdf read fmpipe files with no other import.
"""

from __future__ import annotations

import types

import hdf5plugin  # noqa: F401  (registers the zstd filter for every HDF5 reader in this process)

from ._api.analysis import export, open_dataset, reduce
from ._api.extract import extract, layers, stages
from ._api.files import info, merge, open_store, verify
from ._api.look import colorize, gallery, render
from ._api.view import top, view
from .errors import UsageError  # noqa: F401  (pipeline.UsageError, as before)
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

for _value in list(globals().values()):  # help() and reprs name each verb where users find it: `pipeline.render`
    if isinstance(_value, types.FunctionType) and _value.__module__.startswith(f"{__name__}._api."):
        _value.__module__ = __name__
del _value
