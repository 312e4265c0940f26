"""`ExportConfig` and `ReduceConfig`: what `fmpipe export` and `fmpipe reduce` need, validated once;
the CLI and the API take their defaults from here. Light on purpose (no HDF5, no scikit-learn): the
CLI imports it to build `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..rendering.config import Spec

FORMATS = ("npy", "hdf5")
COMPRESSIONS = ("gzip",)  # built into every HDF5 library (deflate)
GZIP_LEVEL = 4
METHODS = ("srp", "pca")


@dataclass(frozen=True)
class ExportConfig:
    """What `fmpipe export` needs."""

    path: str
    dest: str  # npy: a folder; hdf5: the new file
    stage: int | str | None = None  # a stage index or a layer's name; hdf5: None copies every stage and layer
    images: Spec = None  # npy: indices, ranges, keys; None: every stored image
    format: str = "npy"
    compression: str = "gzip"  # hdf5 only
    allow_partial: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}.")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}.")
        if self.format == "npy" and self.stage is None:
            raise UsageError("--format npy writes one stage or layer: give --stage S or --layer NAME.")
        if self.format == "hdf5" and self.images is not None:
            raise UsageError("--format hdf5 copies every image (rows stay as they are); drop --images.")


@dataclass(frozen=True)
class ReduceConfig:
    """What `fmpipe reduce` needs."""

    path: str
    stage: int | str  # a stage index (negative counts from the last), or a layer's name
    method: str
    dim: int  # D: numbers per image
    out: str  # FEATURES.npz
    seed: int = 0
    pool: tuple[int, int] | None = None  # average-pool every map to (h, w) before flattening
    max_memory_gb: float | None = None  # pca: refuse when its arrays would need more (None: available RAM)
    allow_partial: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.dim < 1:
            raise UsageError(f"--dim must be at least 1, got {self.dim}.")
        if self.pool is not None and min(self.pool) < 1:
            raise UsageError(f"--pool must be HxW with positive integers, got {self.pool}.")
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            raise UsageError(f"--max-memory must be positive (GB), got {self.max_memory_gb}.")
        if not str(self.out).endswith(".npz"):
            raise UsageError(f"--out names the features file and must end in .npz, got {self.out!r}.")
