"""`fmpipe verify --recompute N`: rebuild the recorded model, run N stored rows through it again with
the extractor's own loading, tap and forward code, and compare the maps with the stored ones.

This is the check that catches maps filed under the wrong image (two rows swapped together with
their statistics pass every checksum and statistics check). The stored side is decoded
(`storage.format.encoding.decode_maps`) and compared with a fresh float32 pass (pooled as the file was)
over a batch of another shape, so they agree only within a tolerance (see `maps_mismatch`), widened
by the storage's own rounding: `--keep-bits N` and uint8's (hi - lo) / 510.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ExtractConfig
from ..errors import FmpipeError, InputError
from ..jobs.findings import Problem, VerifyConfig, VerifyReport
from ..jobs.verify import files_to_verify, open_fmpipe
from ..sources import source_path
from ..storage.format import schema
from ..storage.format.encoding import Encoding, decode_maps, encoding_of, pooled
from ..storage.format.metadata import RunInfo, run_info
from ..storage.reading.virtual import check_virtual_sources
from . import models, taps
from .compute import Forward
from .loading import iter_batches
from .runner import pick_device

log = logging.getLogger(__name__)

# Both sides rounded to float16: half an ulp each, 2^-10 of |x| together.
REL_TOLERANCE = 2.0**-10
# float32 passes over other batch shapes sum in another order. Measured on the CPU (resnet18,
# resnet50, efficientnet_lite0, convnext_atto; batch 16 vs 1 and 3): at most 7e-6 of the channel's
# largest |x|, so 1e-3 leaves a margin of 100x. CUDA convolutions use TF32 by default (10-bit
# mantissa): 1e-2 there (not measured here). bf16 autocast (--amp): 8-bit mantissa on both sides.
ABS_FRACTION = {"cpu": 1e-3, "cuda": 1e-2, "amp": 2e-2}
AMP_REL_TOLERANCE = 2.0**-7
SUBNORMAL = 2.0**-24
UINT8_FRACTION = 1 / 255  # uint8: (hi - lo) / 510 is at most 1/255 of the channel's largest |x|


@dataclass(frozen=True)
class Recomputer:
    """The recorded model, rebuilt and checked against the file, ready to run rows again."""

    model: models.ResolvedModel
    forward: Forward
    size_hw: tuple[int, int]
    stages: list[int | str]  # stage indices, then layer names: the keys of the recomputed maps
    batch_size: int
    tolerance: tuple[float, float]  # (relative to |x|, fraction of the channel's largest |x|)


def prepare(config: VerifyConfig) -> Recomputer:
    """Rebuild the model the file records; InputError when it cannot be the same model.

    Refused: a weights file that is gone, weights whose state-dict sha256 differs from the
    recorded one, other preprocessing (mean, std) or other stage shapes.
    """
    path = files_to_verify(Path(config.path))[0]
    with open_fmpipe(path) as file:
        run = run_info(file.attrs, path)
        stored_as = encoding_of(file.attrs)
        shapes = {int(i): g[schema.DATA].shape[1:] for i, g in file[schema.STAGES].items()}
        layer_shapes = (
            {n: g[schema.DATA].shape[1:] for n, g in file[schema.LAYERS].items()} if schema.LAYERS in file else {}
        )
    recorded = _recorded_config(run, path)
    check_buildable(recorded.model, config, path)
    if recorded.weights and not Path(recorded.weights).is_file():
        raise InputError(
            f"{path} was extracted with --weights {recorded.weights}, which is not there now; --recompute "
            "needs that file (run verify from the folder the extract ran in, or restore the file)."
        )
    device = pick_device("auto")
    if recorded.amp and device.type != "cuda":
        raise InputError(f"{path} was extracted with --amp (bf16 on CUDA); --recompute needs a CUDA device.")
    model = models.resolve(
        recorded.model,
        recorded.weights,
        recorded.random_init,
        False,
        recorded.seed,
        weights_key=recorded.weights_key,
        weights_prefix=recorded.weights_prefix,
    )
    _check_model(model, run, path)
    size_hw = run.input_size
    if size_hw is None:
        raise InputError(f"{path} records no input size ({schema.ATTR_INPUT_SIZE}); --recompute cannot rerun it.")
    model.module.to(device)
    tap, probed = taps.build(model, size_hw, sorted(shapes), device, recorded.layers or ())
    rebuilt = {s.index: pooled(s, stored_as.pool).shape for s in probed}
    rebuilt |= {s.layer: pooled(s, stored_as.pool).shape for s in tap.infos}
    for ref, shape in (shapes | layer_shapes).items():
        if rebuilt.get(ref) != tuple(shape):
            what = f"stage {ref}" if isinstance(ref, int) else f"layer {ref}"
            raise InputError(f"{path}: {what} is stored as {shape}, but the rebuilt model gives {rebuilt.get(ref)}.")
    forward = Forward(tap, model, device, Encoding("float32", pool=stored_as.pool), recorded.amp)
    kind = "amp" if recorded.amp else device.type
    rel = AMP_REL_TOLERANCE if recorded.amp else REL_TOLERANCE
    rel += 2.0**-stored_as.keep_bits if stored_as.keep_bits else 0.0
    frac = ABS_FRACTION[kind] + (UINT8_FRACTION if stored_as.quantized else 0.0)
    refs = [*sorted(shapes), *layer_shapes]
    return Recomputer(model, forward, size_hw, refs, recorded.batch_size, (rel, frac))


def _recorded_config(run: RunInfo, path: Path) -> ExtractConfig:
    if not run.config:
        raise InputError(f"{path} records no extract configuration ({schema.ATTR_CONFIG}); --recompute needs it.")
    try:
        config = ExtractConfig.from_dict(run.config)
    except (TypeError, ValueError, AttributeError, FmpipeError) as err:
        raise InputError(f"{path} has no usable extract configuration ({schema.ATTR_CONFIG}: {err}).") from None
    if not isinstance(config.model, str) or not config.model:
        raise InputError(f"{path} records no model name in {schema.ATTR_CONFIG}; --recompute cannot rebuild it.")
    return config


def check_buildable(name: str, config: VerifyConfig, path: Path) -> None:
    """Refuse, before anything is imported, a recorded model that building would run code for.

    A timm name (in timm's registry) or `tv:NAME` (in torchvision's) is built from code fmpipe
    already trusts. A `package.module:factory` spec imports and calls whatever the file names, so
    it is built only when the user names it again (`--model`) or passes `--trust-model`.
    """
    if config.model is not None and config.model != name:
        raise InputError(
            f"{path} records the model {name!r}, not {config.model!r}; --model must repeat the recorded name."
        )
    trusted = config.trust_model or config.model == name
    if name.startswith("tv:"):
        import torchvision

        if name[3:] not in torchvision.models.list_models():
            raise InputError(f"{path} records the model {name!r}, which is not a torchvision model; refusing it.")
    elif ":" in name:
        if not trusted:
            raise InputError(
                f"{path} records the model {name!r}: building it would import and run that code, and fmpipe "
                "never runs code a file names. If you trust this file and that code, say so on the command "
                f"line: fmpipe verify {path} --recompute N --model {shlex.quote(name)} (or --trust-model)."
            )
    else:
        import timm

        if not timm.is_model(name):
            raise InputError(f"{path} records the model {name!r}, which is not in timm's registry; refusing it.")


def _check_model(model: models.ResolvedModel, run: RunInfo, path: Path) -> None:
    recorded = run.weights_sha256
    if recorded is not None and model.weights_sha256 != recorded:
        raise InputError(
            f"the weights loaded now (state-dict sha256 {model.weights_sha256[:12]}…) are not the ones {path} "
            f"was extracted with ({str(recorded)[:12]}…); restore those weights to --recompute."
        )
    if recorded is None and model.weights_id != run.weights:  # format v1
        raise InputError(f"the weights now ({model.weights_id}) are not {path}'s ({run.weights}).")
    for name, now, then in ((schema.ATTR_MEAN, model.mean, run.mean), (schema.ATTR_STD, model.std, run.std)):
        if then is not None and not np.allclose(np.asarray(then, dtype=np.float64), now, rtol=0, atol=1e-9):
            raise InputError(f"{path} was normalised with {name} {list(then)}; the model now uses {list(now)}.")


def recompute(rc: Recomputer, config: VerifyConfig, report: VerifyReport) -> None:
    """Run `config.recompute` rows (seeded pick among done, not failed rows) again; problems into `report`."""
    paths = files_to_verify(Path(config.path))
    ok_rows = [_ok_rows(path) for path in paths]
    total = sum(len(rows) for rows in ok_rows)
    rng = np.random.default_rng(config.seed)
    picks = np.arange(total) if config.recompute >= total else np.sort(rng.choice(total, config.recompute, False))
    log.info("recomputing %d of %d rows with %s on %s", len(picks), total, rc.model.name, rc.forward.device)
    start, skipped = 0, 0
    for path, rows in zip(paths, ok_rows, strict=True):
        mine = picks[(picks >= start) & (picks < start + len(rows))] - start
        start += len(rows)
        if not len(mine):
            continue
        label = path.name if path != Path(config.path) else None
        found = _recompute_file(rc, path, rows[mine], config.images_root)
        for stage, key, why in found.problems:
            report.add(Problem(why, stage if isinstance(stage, int) else f"layer {stage}", key, label))
        report.recomputed += found.recomputed
        skipped += found.skipped
    if skipped:
        report.warn(
            f"{skipped} rows picked for --recompute were not recomputed: their sources are missing, "
            "unreadable or changed (pass --images-root DIR if the images moved)"
        )


def _ok_rows(path: Path) -> np.ndarray:
    """Rows done and not failed; none for a file the integrity checks already reported."""
    try:
        with open_fmpipe(path) as file:
            ok = file[schema.DONE][:].astype(bool)
            ok[file[schema.FAILURE_INDEX][:]] = False
            return np.flatnonzero(ok)
    except InputError:
        return np.zeros(0, np.int64)


@dataclass
class _Found:
    problems: list[tuple[int, str, str]] = field(default_factory=list)  # (stage, key, why)
    recomputed: int = 0
    skipped: int = 0  # rows whose source is missing, unreadable or changed


def _recompute_file(rc: Recomputer, path: Path, rows: np.ndarray, images_root: str | None) -> _Found:
    found = _Found()
    with open_fmpipe(path) as file:
        try:
            check_virtual_sources(path, file)
        except InputError:
            found.skipped = len(rows)  # reported by the integrity checks; reading would give NaN fill
            return found
        root = images_root or run_info(file.attrs, path).images_root or ""
        keys = [schema.text(file[schema.KEY][row]) for row in rows.tolist()]
        usable = [i for i, key in enumerate(keys) if root and source_path(root, key) is not None]
        digests = file[schema.SOURCE_SHA256][rows.tolist()] if schema.SOURCE_SHA256 in file else None  # rows ascend
        found.skipped = len(rows) - len(usable)
        for batch in iter_batches(root, [keys[i] for i in usable], range(len(usable)), rc.size_hw, rc.batch_size, 0):
            result = rc.forward(batch).result()
            found.skipped += len(batch.failures)
            in_batch = {position: j for j, position in enumerate(batch.rows.tolist())}
            for b, position in enumerate(result.ok_rows.tolist()):
                i = usable[position]
                read = bytes(batch.source_sha256[in_batch[position]])
                if digests is not None and bytes(digests[i]) not in (b"", read):
                    found.skipped += 1  # the source changed since extraction: the source check reports it
                    continue
                found.recomputed += 1
                for stage in rc.stages:
                    group = file[schema.group_of(stage)]
                    row = int(rows[i])
                    lo, hi = group[schema.STAT_MIN][row], group[schema.STAT_MAX][row]
                    data = group[schema.DATA]
                    stored = decode_maps(data[row], lo, hi, data.dtype.name)  # as stored, whatever attrs say
                    why = maps_mismatch(stored, result.data[stage][b], rc.tolerance)
                    if why:
                        found.problems.append((stage, keys[i], why))
    return found


def maps_mismatch(stored: np.ndarray, fresh: np.ndarray, tolerance: tuple[float, float]) -> str | None:
    """Why recomputed maps (C, H, W) do not match the stored ones, or None.

    A value matches when |fresh - stored| <= rel * |stored| + frac * (the channel's largest
    stored |x|) + 2^-24, or both are NaN.
    """
    rel, frac = tolerance
    a, b = stored.astype(np.float64), fresh.astype(np.float64)
    with np.errstate(invalid="ignore"):
        peak = np.nan_to_num(np.nanmax(np.abs(a).reshape(len(a), -1), axis=1, initial=0.0))[:, None, None]
        limit = rel * np.abs(a) + frac * peak + SUBNORMAL
        good = (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= limit)
    if good.all():
        return None
    bad = np.argwhere(~good)
    c, y, x = bad[0]
    return (
        f"recomputed maps differ from the stored ones in {len(bad)} of {a.size} values (first: channel {c}, "
        f"stored {a[c, y, x]:.5g}, recomputed {b[c, y, x]:.5g}, tolerance {limit[c, y, x]:.2g}): these maps "
        "are not this image's, or were altered"
    )
