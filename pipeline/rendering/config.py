"""`RenderConfig`: everything `fmpipe render` needs, validated once; the CLI and the API take
their defaults from it. Light on purpose (no HDF5): the CLI imports it to build `--help`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .colormaps import DEFAULT_CMAP, check_cmap

LAYOUTS = ("channels", "grid", "both", "pca")
NORMALIZATIONS = ("channel", "image", "stage")
PCA_SAMPLES = 20_000  # --layout pca: channel vectors the fit sees
Spec = str | Sequence[int | str] | None  # --images / --channels: "0:4,7,a.jpg" or ints and keys


@dataclass(frozen=True)
class RenderConfig:
    """Everything `fmpipe render` needs; built by the CLI or by `pipeline.render`."""

    path: str
    stage: int | str  # a stage index, or a layer's name (as stored by --layers)
    out: str | None = None  # default: <file without .h5>-render/ beside the file
    images: Spec = None  # indices, ranges, keys; None: every stored image
    channels: Spec = None  # indices and ranges; None: every channel (or --top-k)
    top_k: int | None = None
    layout: str = "both"
    cmap: str = DEFAULT_CMAP
    normalize: str = "channel"
    overlay: bool = False
    images_root: str | None = None  # where the source photos are now (default: as recorded)
    scale: int = 0  # 0: automatic
    workers: int = 0  # 0: all cores
    allow_partial: bool = False
    overwrite: bool = False
    pca_samples: int = PCA_SAMPLES  # --layout pca: channel vectors the fit sees
    pca_seed: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}.")
        if self.layout == "pca" and (self.channels is not None or self.top_k is not None or self.overlay):
            raise UsageError("--layout pca uses every channel and draws no overlay; drop --channels/--top-k/--overlay.")
        if self.pca_samples < 3:
            raise UsageError(f"--pca-samples must be at least 3, got {self.pca_samples}.")
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}.")
        check_cmap(self.cmap)
        if self.channels is not None and self.top_k is not None:
            raise UsageError("--channels and --top-k exclude each other; pick one.")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}.")
        if self.scale < 0:
            raise UsageError(f"--scale must be 0 (automatic) or a positive integer, got {self.scale}.")
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 (all cores) or more, got {self.workers}.")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_out_dir(self.path)


def default_out_dir(path: str | os.PathLike) -> Path:
    """Where render (and the gallery) write by default: `<file without .h5>-render/` beside the file."""
    path = Path(path)
    name = path.name.removesuffix(".partial")
    return path.with_name(f"{Path(name).stem}-render")
