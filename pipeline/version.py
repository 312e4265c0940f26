"""fmpipe's version, from the installed package's metadata (the API, the CLI, and the attribute extract records)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("fmpipe")
except metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"
