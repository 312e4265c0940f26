"""`fmpipe view` and `fmpipe top`: draw any map of any image from the file on request, and the
images that drive a channel most (dataset examples). No torch.

    from pipeline.viewer import ViewConfig, serve, TopConfig, top
    serve(ViewConfig("out.h5"))                               # blocks; prints the URL
    print(top(TopConfig("out.h5", stage=2, channel=7)).to_json())

The names below load on first use, so importing `pipeline.viewer.config` (the CLI does, for
`--help`) does not open HDF5.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TopConfig": "config",
    "ViewConfig": "config",
    "TopResult": "examples",
    "top": "examples",
    "Viewer": "server",
    "serve": "server",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
