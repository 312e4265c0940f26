"""A stage's channel vectors reduced to three principal components, shown as one RGB picture.

fit:     a seeded sample of spatial positions (each a length-C channel vector) from a bounded,
         seeded set of the file's stored images, read one chunk block at a time ─► mean, the
         top 3 eigenvectors of the C×C covariance, and each component's 1st/99th percentile
project: any image's (C, H, W) maps ─► (3, H, W) scores ─► (H, W, 3) uint8, with the one
         fitted mapping for every image, so colours mean the same thing across the collection

Memory is the sample (at most MAX_SAMPLE_VALUES floats) plus one chunk block; never a stage.
No torch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, RunFailure, UsageError
from ..storage.reading.store import StageView, Store
from .config import PCA_SAMPLES

log = logging.getLogger(__name__)

COMPONENTS = 3  # one per colour channel: R, G, B
MAX_FIT_IMAGES = 256  # images the sample is drawn from (each costs one read of its whole row)
MAX_SAMPLE_VALUES = 1 << 24  # samples × C cap: 64 MB of float32 for the sample matrix
PERCENTILES = (1.0, 99.0)  # a component's colour range: robust to a few extreme positions
COV_BLOCK = 4096  # sample rows per covariance update (bounds the float64 temporaries)


@dataclass(frozen=True)
class PcaFit:
    """A fitted mapping from a stage's (C,) channel vectors to RGB; the same for every image."""

    stage: int | str  # the stage index, or the layer name
    mean: np.ndarray  # (C,) float64 mean channel vector of the sample
    components: np.ndarray  # (3, C) float64 unit rows, largest variance first; zero rows when C < 3
    lo: np.ndarray  # (3,) float64 score mapped to colour value 0 (1st percentile of the sample)
    hi: np.ndarray  # (3,) float64 score mapped to 255 (99th percentile)
    explained: np.ndarray  # (3,) float64 fraction of the sample's variance per component
    samples: int  # channel vectors fitted on
    images: int  # images they came from
    seed: int

    def to_json(self) -> str:
        """The fit as JSON text (render writes it as stage<S>/pca.json)."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()})

    @classmethod
    def from_json(cls, text: str) -> PcaFit:
        raw = json.loads(text)
        arrays = {k: np.asarray(raw[k], dtype=np.float64) for k in ("mean", "components", "lo", "hi", "explained")}
        counts = {k: int(raw[k]) for k in ("samples", "images", "seed")}
        stage = raw["stage"] if isinstance(raw["stage"], str) else int(raw["stage"])  # a layer's name, or an index
        return cls(stage=stage, **counts, **arrays)


def fit_pca(
    store: Store, stage: int | str, samples: int = PCA_SAMPLES, seed: int = 0, max_images: int = MAX_FIT_IMAGES
) -> PcaFit:
    """Fit the three-component PCA of stage `stage` over the whole file (failed rows skipped).

    Up to `max_images` stored images are drawn with a seeded RNG, and from each the same
    number of positions, at most `samples` in all (fewer when C is large: MAX_SAMPLE_VALUES).
    """
    view = store.view(stage)
    if samples < COMPONENTS or max_images < 1:
        raise UsageError(f"the PCA needs at least {COMPONENTS} samples and 1 image; got {samples}, {max_images}.")
    rows = np.flatnonzero(store.ok)
    if not len(rows):
        raise InputError(f"{store.path} has no stored image to fit {view.label}'s PCA on.")
    samples = max(COMPONENTS, min(samples, MAX_SAMPLE_VALUES // view.channels))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(rows, size=min(len(rows), max_images, samples), replace=False))
    sample = _sample(store, view, rows, samples // len(rows), rng)  # at most `samples` in all
    finite = np.isfinite(sample).all(axis=1)
    if finite.sum() <= COMPONENTS:
        raise InputError(
            f"{view.label} of {store.path} holds NaN or inf at almost every sampled position, too few "
            "for a PCA; try more --pca-samples or another --pca-seed."
        )
    fit = _fit(view.ref, sample[finite], seed, len(rows))
    log.info(
        "%s PCA: %d channel vectors from %d images; variance explained %s",
        view.label,
        fit.samples,
        fit.images,
        ", ".join(f"{v:.0%}" for v in fit.explained),
    )
    return fit


def _sample(store: Store, view: StageView, rows: np.ndarray, per_row: int, rng: np.random.Generator) -> np.ndarray:
    """(len(rows) · per_row, C) float32 channel vectors at seeded positions, one chunk block at a time."""
    positions = view.height * view.width
    per_row = min(per_row, positions)
    block = view.data.chunks[1] if view.data.chunks else view.channels
    out = np.empty((len(rows) * per_row, view.channels), dtype=np.float32)
    for i, row in enumerate(rows):
        picked = np.sort(rng.choice(positions, size=per_row, replace=False))
        target = out[i * per_row : (i + 1) * per_row]
        for c0 in range(0, view.channels, block):
            try:
                data = view.data[int(row), c0 : c0 + block]  # (k, H, W): one chunk
            except OSError as err:
                raise RunFailure(
                    f"reading {view.label} of row {row} for the PCA failed ({err}); "
                    f"check the file with `fmpipe info {store.path}`."
                ) from err
            target[:, c0 : c0 + len(data)] = data.reshape(len(data), positions)[:, picked].T
    return out


def _fit(stage: int | str, sample: np.ndarray, seed: int, images: int) -> PcaFit:
    """Mean, top components (deterministic signs) and robust score ranges of an (n, C) sample."""
    n, channels = sample.shape
    mean = sample.mean(axis=0, dtype=np.float64)
    cov = np.zeros((channels, channels))
    for start in range(0, n, COV_BLOCK):
        centred = sample[start : start + COV_BLOCK].astype(np.float64) - mean
        cov += centred.T @ centred
    values, vectors = np.linalg.eigh(cov / max(1, n - 1))  # ascending
    k = min(COMPONENTS, channels)
    components = np.zeros((COMPONENTS, channels))
    components[:k] = vectors[:, ::-1][:, :k].T
    # Sign: the largest-|loading| channel of each component loads positively (eigh's is arbitrary).
    strongest = np.abs(components).argmax(axis=1)
    components *= np.where(components[np.arange(COMPONENTS), strongest] < 0, -1.0, 1.0)[:, None]
    explained = np.zeros(COMPONENTS)
    total = float(np.clip(values, 0, None).sum())
    if total > 0:
        explained[:k] = np.clip(values[::-1][:k], 0, None) / total
    scores = np.concatenate(
        [_centred_scores(components, mean, sample[s : s + COV_BLOCK]) for s in range(0, n, COV_BLOCK)]
    )
    lo, hi = np.percentile(scores, PERCENTILES, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)  # a flat component: one colour value, no division by zero
    return PcaFit(stage, mean, components, lo, hi, explained, n, images, seed)


def _centred_scores(components: np.ndarray, mean: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(n, C) channel vectors → (n, 3) float64 scores."""
    return (vectors.astype(np.float64) - mean) @ components.T


def project_blocks(fit: PcaFit, blocks: Iterable[tuple[int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """(3, H, W) float64 scores of one image from its maps as (first channel, (k, H, W) block) pieces.

    The blocks must cover every channel once; NaN anywhere at a position gives NaN there.
    """
    scores = np.zeros((COMPONENTS, height * width))
    for c0, block in blocks:
        flat = block.reshape(len(block), height * width).astype(np.float64)
        scores += fit.components[:, c0 : c0 + len(block)] @ flat
    scores -= (fit.components @ fit.mean)[:, None]
    return scores.reshape(COMPONENTS, height, width)


def scores_to_rgb(fit: PcaFit, scores: np.ndarray) -> np.ndarray:
    """(3, H, W) scores → (H, W, 3) uint8: each component's [lo, hi] to 0..255, clipped; NaN → 0."""
    span = (fit.hi - fit.lo)[:, None, None]
    with np.errstate(invalid="ignore"):
        scaled = np.clip((scores - fit.lo[:, None, None]) / span * 255.0 + 0.5, 0.0, 255.0)
    scaled[np.isnan(scaled)] = 0.0
    return np.moveaxis(scaled.astype(np.uint8), 0, -1)


def pca_rgb(fit: PcaFit, maps: np.ndarray) -> np.ndarray:
    """One image's (C, H, W) maps → (H, W, 3) uint8 RGB picture of its first three components."""
    channels, height, width = maps.shape
    if channels != fit.components.shape[1]:
        fitted = fit.components.shape[1]
        raise InputError(f"maps have {channels} channels; the PCA of stage {fit.stage} was fitted on {fitted}.")
    return scores_to_rgb(fit, project_blocks(fit, [(0, maps)], height, width))


def save_fit(fit: PcaFit, path: Path) -> None:
    """Write the fit as JSON (stage<S>/pca.json) so the mapping can be reused and cited."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fit.to_json() + "\n")
    except OSError as err:
        raise RunFailure(f"writing {path} failed: {err}. Fix the cause and rerun.") from err


def load_fit(path: Path) -> PcaFit | None:
    """The fit saved at `path`, or None when there is none (or it is unreadable)."""
    try:
        return PcaFit.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
