"""`fmpipe reduce`: each image's maps of one stage or layer, flattened (after optional pooling),
reduced to D numbers, reading the file in row blocks so that memory does not grow with the images.

- `srp`: scikit-learn's very sparse random projection (density 1/sqrt(F) for F features per image),
  fitted on the shape alone from the seed, applied block by block: the same seed gives the same
  features, and pairwise distances keep within the Johnson-Lindenstrauss bound for D.
- `pca`: scikit-learn's IncrementalPCA, fitted over batches of at most 2·D rows (first pass), then
  applied block by block (second pass). It holds the D×F components and a batch with its SVD, at
  most 44·D·F bytes (`pca_bytes`); a fit that would not fit in memory is refused before anything is read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, OutputExistsError, UsageError
from ..records import StageInfo
from ..storage.reading.store import STREAM_CACHE_BYTES, Store, open_store
from .config import ReduceConfig
from .features import (
    BLOCK_BYTES,
    FeatureFile,
    available_bytes,
    block_rows,
    check_row_fits,
    feature_count,
    iter_blocks,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReduceSummary:
    out: Path
    method: str
    images: int  # rows in the archive
    left_out: int  # rows without maps (failed, unfinished) or with non-finite values
    features: int  # F: numbers per image before the reduction
    dim: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        left = f"; {self.left_out} images left out (failed, unfinished or not finite)" if self.left_out else ""
        return (
            f"{self.out}: {self.images} images × {self.dim} ({self.method} of {self.features:,} features){left}; "
            f"{self.seconds:.1f} s ({self.images_per_s:.0f} images/s)"
        )


def reduce(config: ReduceConfig) -> ReduceSummary:
    started = time.perf_counter()
    out = Path(config.out)
    if (out.exists() or out.is_symlink()) and not config.overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it.")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist.")
    sklearn = _sklearn()
    with open_store(config.path, not config.allow_partial, STREAM_CACHE_BYTES) as store:
        info = store.view(config.stage)
        check_row_fits(info)
        features = feature_count(info, config.pool)
        if config.dim > features:
            raise UsageError(
                f"--dim {config.dim} is more than the {features:,} numbers per image of {info.label}; "
                "pick at most that."
            )
        stored = int(store.ok.sum())
        if config.method == "pca":
            _check_pca(config, info, features, stored)
        archive = FeatureFile(out, config.dim)
        try:
            if config.method == "srp":
                extra = _srp(sklearn, config, store, info, features, archive)
            else:
                extra = _pca(sklearn, config, store, info, archive)
            rows = archive.finish(store, extra)
        except BaseException:
            archive.discard()
            raise
        left_out = len(store) - len(rows)
    if left_out:
        log.warning(
            "%d of %d images left out of %s: failed, unfinished or not finite", left_out, len(rows) + left_out, out
        )
    return ReduceSummary(out, config.method, len(rows), left_out, features, config.dim, time.perf_counter() - started)


def pca_bytes(features: int, dim: int, rows: int) -> int:
    """Memory an incremental PCA of `features` numbers per image to `dim` components takes with
    fits of `rows` images (at most 2·dim), float32: the rows pending and read (2·rows + dim), the
    SVD's input and output (2·(rows + dim)) and the components (dim), each `features` long; and
    one block of maps as read, before pooling. At rows = 2·dim: 44·dim·features bytes."""
    return 4 * features * (4 * rows + 3 * dim) + BLOCK_BYTES


def _check_pca(config: ReduceConfig, info: StageInfo, features: int, stored: int) -> None:
    if stored < config.dim:
        raise InputError(
            f"PCA to {config.dim} components needs at least {config.dim} images with maps; "
            f"{config.path} has {stored}. Lower --dim or use --method srp."
        )
    needed = pca_bytes(features, config.dim, min(_pca_rows(config, info), stored))
    limit = int(config.max_memory_gb * 1e9) if config.max_memory_gb else available_bytes()
    if needed > limit:
        source = "--max-memory" if config.max_memory_gb else "available now"
        raise UsageError(
            f"PCA of {info.label} ({features:,} numbers per image) to {config.dim} components needs about "
            f"{_size(needed)} (the {config.dim}×{features:,} components alone: "
            f"{_size(4 * config.dim * features)}); {_size(limit)} {source}. "
            "Lower --dim, pool the maps first (--pool 4x4), or use --method srp."
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _pca_rows(config: ReduceConfig, info: StageInfo) -> int:
    """Images per partial fit: twice the components, and no more than a block of maps (BLOCK_BYTES),
    nor fewer than the components: the SVD of each fit is then of (batch + dim) rows."""
    return max(config.dim, min(2 * config.dim, block_rows(info)))


def _srp(sklearn, config: ReduceConfig, store: Store, info: StageInfo, features: int, archive: FeatureFile) -> dict:
    import scipy.sparse

    projection = sklearn.random_projection.SparseRandomProjection(
        n_components=config.dim, density="auto", dense_output=True, random_state=config.seed
    )
    projection.fit(scipy.sparse.csr_matrix((1, features), dtype=np.float32))  # the shape is all it needs
    for rows, flat in iter_blocks(store, info, config.pool, block_rows(info), "srp"):
        archive.add(rows, projection.transform(flat))
    # The same seed gives the same projection with the same scikit-learn: record which one.
    return {
        "density": np.float64(projection.density_),
        "seed": np.int64(config.seed),
        "sklearn_version": np.str_(sklearn.__version__),
    }


def _pca(sklearn, config: ReduceConfig, store: Store, info: StageInfo, archive: FeatureFile) -> dict:
    """Two passes: partial fits of `batch` rows (at least `dim` rows are held back, so the final fit
    never gets fewer), then the projection of every block."""
    pca = sklearn.decomposition.IncrementalPCA(n_components=config.dim)
    batch = _pca_rows(config, info)
    pending: np.ndarray | None = None
    for _, flat in iter_blocks(store, info, config.pool, block_rows(info), "pca fit (pass 1 of 2)"):
        pending = flat if pending is None else np.concatenate([pending, flat])
        while len(pending) >= batch + config.dim:  # fits of `batch` rows; at least `dim` stay for the last
            pca.partial_fit(pending[:batch])
            pending = pending[batch:]
    if pending is None or (len(pending) < config.dim and not hasattr(pca, "components_")):
        raise InputError(f"PCA to {config.dim} components needs at least {config.dim} images with finite maps.")
    pca.partial_fit(pending)
    del pending
    for rows, flat in iter_blocks(store, info, config.pool, block_rows(info), "pca projection (pass 2 of 2)"):
        archive.add(rows, pca.transform(flat).astype(np.float32))
    return {
        "explained_variance_ratio": pca.explained_variance_ratio_.astype(np.float32),
        "mean": pca.mean_.astype(np.float32),
        "sklearn_version": np.str_(sklearn.__version__),
    }


def _sklearn():
    try:
        import sklearn.decomposition
        import sklearn.random_projection
    except ImportError:
        raise UsageError(
            "fmpipe reduce needs scikit-learn: python -m pip install 'fmpipe[reduce]' (or scikit-learn)."
        ) from None
    return sklearn
