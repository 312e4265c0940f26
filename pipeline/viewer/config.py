"""`ViewConfig` and `TopConfig`: what `fmpipe view` and `fmpipe top` need, validated once; the CLI
and the API take their defaults from here. Light on purpose (no HDF5): the CLI imports it for `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..rendering.colormaps import DEFAULT_CMAP, check_cmap
from ..rendering.config import NORMALIZATIONS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
BYS = ("max", "mean")  # what ranks the images of a channel: their map's stored max or mean
DEFAULT_K = 9
MAX_K = 1000


@dataclass(frozen=True)
class ViewConfig:
    """What `fmpipe view` needs."""

    path: str  # OUT.h5 (OUT.h5.partial is used while only it exists)
    host: str = DEFAULT_HOST  # anything but loopback serves the network (and warns)
    port: int = DEFAULT_PORT  # 0: any free port
    images_root: str | None = None  # where the sources are now (default: as recorded in the file)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0 (any free port) to 65535, got {self.port}.")
        if not self.host:
            raise UsageError("--host must not be empty; use 127.0.0.1 (the default) to stay on this machine.")


@dataclass(frozen=True)
class TopConfig:
    """What `fmpipe top` needs."""

    path: str
    stage: int | str  # a stage index (negative counts from the last), or a layer's name
    channel: int
    k: int = DEFAULT_K
    by: str = "max"
    out: str | None = None  # write one labelled grid of the K maps over their sources here (PNG)
    images_root: str | None = None  # where the sources are now (default: as recorded)
    cmap: str = DEFAULT_CMAP
    normalize: str = "channel"
    overwrite: bool = False  # replace an existing --out
    crop: bool = False  # also each image cut around where the channel peaks (receptive-field crops)

    def __post_init__(self) -> None:
        check_k_by(self.k, self.by)
        check_cmap(self.cmap)
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}.")


def check_k_by(k: int, by: str) -> None:
    """UsageError unless 1 ≤ k ≤ MAX_K and `by` is one of BYS."""
    if not 1 <= k <= MAX_K:
        raise UsageError(f"-k must be 1 to {MAX_K}, got {k}.")
    if by not in BYS:
        raise UsageError(f"--by must be one of {', '.join(BYS)}, got {by!r}.")
