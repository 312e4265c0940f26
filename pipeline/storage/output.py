"""Opening a shard's output: start it as `OUT.partial`, resume it, or find it already complete.

A new `OUT.partial` is built under a temporary name and renamed, so a kill at any moment leaves
no partial file or a readable one. An existing one is checked read-only against the plan before
anything is written. HDF5's own file lock is off (`locking=False`): `OUT.lock` guards the
output, and an HDF5 flock would be inherited by forked decode workers that outlive a killed
run, which then refused an immediate rerun ("unable to lock file, errno = 11"). No torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from . import schema
from .files import partial_path, publish
from .layout import WritePlan, check_finished, check_resumable, create_layout, drop_unfinished_failures

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
