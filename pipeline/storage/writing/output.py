"""Opening a shard's output: start it as `OUT.partial`, resume it, or find it already complete.

A new `OUT.partial` is built under a temporary name and renamed, so a kill at any moment leaves
no partial file or a readable one. An existing one is checked read-only against the plan before
anything is written. HDF5's own file lock is off (`locking=False`): `OUT.lock` guards the
output, and an HDF5 flock would be inherited by forked decode workers that outlive a killed
run, which then refused an immediate rerun ("unable to lock file, errno = 11"). No torch.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import h5py
import numpy as np

from ... import sources
from ...config import ExtractConfig
from ...errors import InputError
from ...version import __version__
from ..format import schema
from ..format.metadata import RunInfo, run_info
from .files import partial_path, publish
from .layout import WritePlan, check_finished, check_resumable, create_layout, drop_unfinished_failures

# ExtractConfig fields that change how fast or where a run goes, not what its file holds. Every
# other field (new ones too) must equal the stored configuration for the fast "already complete".
_RUN_ONLY_FIELDS = frozenset(
    {"images", "out", "batch_size", "device", "workers", "overwrite", "dry_run", "null_writer", "unsafe_pickle"}
)
_FILE_WEIGHTS = re.compile(r"^file:.*:sha256=([0-9a-f]{64})(:|$)")

log = logging.getLogger(__name__)


def open_output(out: Path, plan: WritePlan, overwrite: bool) -> h5py.File | None:
    """`OUT.partial` open for writing (created or resumed), or None when OUT is already complete
    with exactly this plan's rows. Raises when OUT or OUT.partial holds something else."""
    partial = partial_path(out)
    if overwrite:
        for path in (out, partial):
            path.unlink(missing_ok=True)
    if out.exists():
        check_finished(out, plan)
        return None
    return _resume(partial, plan) if partial.exists() else _create(partial, plan)


def finished_run(out: Path, config: ExtractConfig, collection: sources.Collection) -> RunInfo | None:
    """OUT's run when OUT is complete, was written by this fmpipe with this configuration and holds
    exactly this collection's rows, told from its attributes alone (no model is built, no torch);
    None when only the full check against the model's fingerprint can tell (`open_output`).

    The weights are pinned by the weights file's sha256 (recorded in the `weights` attribute);
    models from your own code (`module:factory`) always take the full check, since their code
    may have changed."""
    if ":" in config.model and not config.model.startswith("tv:"):
        return None
    try:
        with h5py.File(out, "r", locking=False) as file:
            run = run_info(file.attrs, out)
            all_done = schema.DONE in file and bool(file[schema.DONE][:].all())
    except (OSError, KeyError, ValueError, InputError):
        return None  # the full check explains what is wrong with it
    start, stop = sources.shard_bounds(len(collection.keys), config.shard_index, config.num_shards)
    same = (
        run.complete
        and all_done
        and run.fmpipe_version == __version__
        and _same_config(run.config, config)
        and run.fingerprint_parts.get("keys_sha256") == collection.keys_sha256
        and (run.shard_start, run.shard_stop) == (start, stop)
        and _same_weights_file(run.weights, config.weights)
    )
    return run if same else None


def _same_config(stored: dict, config: ExtractConfig) -> bool:
    wanted = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUN_ONLY_FIELDS | {"weights"}}
    found = {k: v for k, v in stored.items() if k not in _RUN_ONLY_FIELDS | {"weights"}}
    # JSON turned tuples into lists: compare both as JSON values
    return found == {k: list(v) if isinstance(v, tuple) else v for k, v in wanted.items()}


def _same_weights_file(stored: str | None, weights: str | None) -> bool:
    """No weights file on either side, or the stored file's sha256 equals the given file's."""
    if weights is None:
        return stored is None or not stored.startswith("file:")
    found = _FILE_WEIGHTS.match(stored or "")
    try:
        return found is not None and sources.file_sha256(weights)[0] == found.group(1)
    except OSError:
        return False


def _create(partial: Path, plan: WritePlan) -> h5py.File:
    """A new OUT.partial with every dataset of the plan, built under a temporary name and renamed."""
    building = partial.with_name(partial.name + ".new")
    building.unlink(missing_ok=True)
    with h5py.File(building, "w", libver=schema.LIBVER, locking=False) as file:
        create_layout(file, plan)
    publish(building, partial)
    return h5py.File(partial, "r+", locking=False)


def _resume(partial: Path, plan: WritePlan) -> h5py.File:
    """The existing OUT.partial, checked against the plan read-only (a refused resume leaves the
    file byte for byte as it was), then opened for writing."""
    try:
        with h5py.File(partial, "r", locking=False) as file:
            check_resumable(file, partial, plan)
        file = h5py.File(partial, "r+", locking=False)
    except (OSError, KeyError, RuntimeError) as err:  # h5py: unreadable file, object or metadata
        raise InputError(
            f"{partial} cannot be resumed: it is not a readable HDF5 file ({err}); it was damaged outside "
            "fmpipe (fmpipe writes it so that a kill leaves it readable). Move it away, or pass --overwrite "
            "to start this output over."
        ) from None
    try:
        drop_unfinished_failures(file)
    except BaseException:
        file.close()
        raise
    done = int(np.count_nonzero(file[schema.DONE][:]))
    log.info("resuming %s: %d of %d images already done", partial, done, len(plan.keys))
    return file
