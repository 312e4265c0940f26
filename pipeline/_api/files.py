"""`pipeline.open_store`, `info`, `merge` and `verify`: what is in a file, job arrays, is it intact.
None imports torch, but for `verify(recompute=N)`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..config import default
from ..jobs.findings import VerifyConfig

if TYPE_CHECKING:
    from ..jobs.findings import VerifyReport
    from ..jobs.merge import MergeSummary
    from ..storage.reading.store import Store


def open_store(path: str | os.PathLike, *, require_complete: bool = False) -> Store:
    """Open an fmpipe file (single, partial, merged or copied) lazily, read-only.

    Parameters
    ----------
    path : str or os.PathLike
        ``OUT.h5``, or ``OUT.h5.partial`` while it is being written.
    require_complete : bool
        Refuse a file that is not complete (an `IncompleteFileError`).

    Returns
    -------
    Store
        ``store.read(ref, image)``: (C, H, W) float32 maps of a stage (int) or layer (str), decoded;
        ``store.stage(i)``: the stored datasets, lazily. Use it as a context manager or call ``close()``.
    """
    from ..storage.reading.store import open_store as _open

    return _open(path, require_complete=require_complete)


def info(path: str | os.PathLike) -> str:
    """What `fmpipe info` prints about a file or a job array's shards folder.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file, or a job array's ``OUT.shards/`` folder.

    Returns
    -------
    str
        A file's run, completeness, storage, stages and failures; a shards folder's progress per shard.
    """
    from pathlib import Path

    if Path(path).is_dir():
        from ..jobs.shards import describe_folder

        return describe_folder(path)
    from ..storage.reading.info import describe_store

    with open_store(path) as store:
        return describe_store(store)


def merge(out: str | os.PathLike, *, copy: bool = False, overwrite: bool = False) -> MergeSummary:
    """Check a job array's shards (``OUT.shards/``: complete, one configuration, keys covered once) and combine them.

    Parameters
    ----------
    out : str or os.PathLike
        The merged file to write; the shards are in ``OUT.shards/``.
    copy : bool
        Copy the shards' compressed chunks into a self-contained file; False: virtual datasets over them.
    overwrite : bool
        Replace `out` even when it is not an earlier merge of these shards.

    Returns
    -------
    MergeSummary
        Images, failures, shards, mode (virtual or copy), bytes copied, seconds.
    """
    from ..jobs.merge import merge as run

    return run(out, copy=copy, overwrite=overwrite)


def _v(name: str):
    return default(VerifyConfig, name)


def verify(
    path: str | os.PathLike,
    *,
    recompute: int = _v("recompute"),
    images_root: str | os.PathLike | None = _v("images_root"),
    seed: int = _v("seed"),
    workers: int = _v("workers"),
    model: str | None = _v("model"),
    trust_model: bool = _v("trust_model"),
) -> VerifyReport:
    """Check that an fmpipe file (single, merged or copied) or a shards folder is intact and true to its
    sources and model.

    Every chunk of every stage and layer is decoded with its checksum verified and compared with the
    stored statistics; the seal written at finalise is recomputed; every source file is hashed and
    compared with its recorded digest. Only `recompute` imports torch. The defaults are
    `pipeline.VerifyConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file, or a job array's ``OUT.shards/`` folder.
    recompute : int
        Also run this many stored rows (picked with `seed`) through the recorded model again and
        compare their maps; 0: none.
    images_root : str or os.PathLike or None
        Where the source images are now, if they moved; None: as recorded in the file.
    seed : int
        The seed that picks the rows to recompute.
    workers : int
        Threads reading, decoding and hashing (0: one per core).
    model : str or None
        With `recompute`: the recorded model, named again by you. Needed for a
        ``package.module:factory`` model, whose code fmpipe never imports on a file's word alone.
    trust_model : bool
        With `recompute`: build the recorded model even if that imports code it names.

    Returns
    -------
    VerifyReport
        ``.ok``, ``.problems`` (the first 1000; ``.problem_count`` counts all), ``.warnings``, what was
        checked (chunks, rows, sources, rows recomputed) and ``.summary()``, one line.
    """
    import time
    from pathlib import Path

    from ..jobs.findings import VerifyReport
    from ..jobs.verify import check_integrity

    config = VerifyConfig(
        path=str(path),
        recompute=recompute,
        images_root=images_root,
        seed=seed,
        workers=workers,
        model=model,
        trust_model=trust_model,
    )
    report = VerifyReport(Path(config.path))
    prepared = None
    if config.recompute:  # rebuild the model first: a missing or different weights file fails fast
        from ..extraction.recompute import prepare

        prepared = prepare(config)
    check_integrity(config, report)
    if prepared is not None:
        from ..extraction.recompute import recompute as run

        run(prepared, config, report)
    report.seconds = time.perf_counter() - report.started
    return report
