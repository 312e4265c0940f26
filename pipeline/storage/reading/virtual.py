"""Checks of a merged file's virtual sources: HDF5 reads a missing source as fill values, silently.

Every source of a virtual dataset must exist beside the merged file, stay inside its folder,
be a complete fmpipe shard of the same run, and fit in the open-file limit. No torch.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

import h5py

from ...errors import InputError
from ..format import schema
from ..format.metadata import run_info
from ..format.structure import check_structure
from ..integrity.seal import recorded_seal, virtual_source_names

log = logging.getLogger(__name__)

# File handles kept free for everything else when a virtual file opens its sources.
SPARE_FILE_HANDLES = 64


def check_virtual_sources(path: Path, file: h5py.File) -> list[str]:
    """Check every source file of the virtual datasets below /stages; returns their names.

    HDF5 reads a missing source, or one it cannot open, as fill values without an error,
    so each source must exist beside `path`, stay inside its folder, be a complete fmpipe
    shard of the same run (fingerprint), and the process must be allowed enough open files.
    """
    names = virtual_source_names(file)
    # Lexical, not resolved: OUT.shards may be a symlink to scratch space; ".." may not escape.
    base = Path(os.path.abspath(path)).parent
    fingerprint = run_info(file.attrs, path).fingerprint
    sealed = recorded_seal(file) or {}
    for source in names:
        seal = sealed.get(f"{schema.SHARD_ITEM}{source}")
        _check_source(path, base, source, fingerprint, seal)
    _ensure_file_handles(path, len(names))
    return names


def _check_source(path: Path, base: Path, source: str, fingerprint: str | None, seal: str | None) -> None:
    target = Path(os.path.normpath(base / source))
    if os.path.isabs(source) or base not in target.parents:
        raise InputError(f"{path}: virtual source {source!r} points outside {base}; refusing to read it.")
    hint = f"Restore it, or re-extract that shard and run `fmpipe merge {path}` again."
    if not target.exists():
        raise InputError(f"{path}: its shard {source!r} is missing (looked in {base}). {hint}")
    try:
        with h5py.File(target, "r", locking="best-effort") as shard:
            check_structure(target, shard)  # no links, no external storage, shapes that fit the file
            run = run_info(shard.attrs, target)
            same, complete, now = run.fingerprint == fingerprint, run.complete, run.seal_sha256 or ""
    except OSError as err:
        raise InputError(f"{path}: its shard {source!r} cannot be read ({err}). {hint}") from None
    if not same:
        raise InputError(f"{path}: its shard {source!r} now holds a different run (fingerprint differs). {hint}")
    if not complete:
        raise InputError(f"{path}: its shard {source!r} is not complete. {hint}")
    if seal is not None and now != seal:
        raise InputError(
            f"{path}: its shard {source!r} is not the shard it was merged from (its seal differs: replaced "
            f"or rewritten since the merge). Run `fmpipe merge {path}` again if the shards are right."
        )


def _ensure_file_handles(path: Path, sources: int) -> None:
    """Raise the soft open-file limit if the sources need it; fail loudly if it cannot be raised."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sources + SPARE_FILE_HANDLES
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise InputError(
            f"{path} reads {sources} shard files but this process may open only {hard} files. "
            f"Raise the limit (ulimit -n {needed}) or make a self-contained file: fmpipe merge --copy."
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.debug("raised the open-file limit to %d for %d shard files", needed, sources)
