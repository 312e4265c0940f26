"""`fmpipe verify`'s integrity checks: every chunk of every stage decodes with its checksum and
agrees with the statistics stored beside it, and every source file still has its recorded
digest. No torch (`extraction/recompute.py` adds the model side, `--recompute`).

Chunks are read raw and decoded in threads (`chunks.py`), a bounded number at a time; only
rows that are done and not failed are checked. Format v1 files have no checksums and no
digests: they are checked by their statistics alone, and the report says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..sources import keys_sha256
from ..storage.format import schema
from ..storage.format.encoding import encoding_of
from ..storage.format.identity import fingerprint
from ..storage.format.metadata import RunInfo, run_info
from ..storage.format.structure import open_fmpipe, top_rows_problem
from ..storage.integrity.chunks import C0, ROW, RawFiles, Window, index_chunks
from ..storage.integrity.digests import check_sources, recorded_rows
from ..storage.integrity.mapstats import ChunkRef, ChunkSpec, check_chunks
from ..storage.integrity.seal import changed_items, chunk_table_sha256, recorded_seal, seal_items, table_sha256
from ..storage.reading.virtual import check_virtual_sources
from ..storage.writing.files import SHARD_RE
from .findings import MAX_PROBLEMS_KEPT, Problem, Progress, VerifyConfig, VerifyReport
from .shardfolder import scan_folder

log = logging.getLogger(__name__)

STATS_BLOCK_BYTES = 16 * 1024 * 1024  # (3, rows, C) float32 statistics read per step
IN_FLIGHT_PER_WORKER = 4  # jobs read or decoded at once per thread: bounded memory
JOB_BYTES = 256 * 1024  # uncompressed bytes of chunks checked in one job (at least one chunk)


def check_integrity(config: VerifyConfig, report: VerifyReport) -> None:
    """Check every file `config.path` names (a file, or a shards folder's shard files) into `report`."""
    paths = files_to_verify(Path(config.path), report)
    workers = config.workers or os.cpu_count() or 1
    runs: dict[str, list[str]] = {}  # fingerprint → files: the shards of a folder must be one run
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        for path in paths:
            label = path.name if path != Path(config.path) else None
            try:
                file = open_fmpipe(path)
            except InputError as err:
                if label is None:
                    raise  # the one file asked for is not an fmpipe file: bad input (exit 2)
                report.add(Problem(str(err), file=label))  # a damaged shard among others
                continue
            recorded = run_info(file.attrs, path)  # parsed once open_fmpipe checked it
            runs.setdefault(str(recorded.fingerprint), []).append(path.name)
            if label is not None:
                _check_shard_name(recorded, path, report)
            with file, RawFiles() as files:
                window = Window(pool, workers * IN_FLIGHT_PER_WORKER)
                _FileCheck(file, path, label, recorded, config, report, window, files).run()
                report.files += 1
    if len(runs) > 1:
        odd = sorted(runs.values(), key=len)[0]
        report.add(Problem(f"{', '.join(odd)} belong to another run than the other shards (fingerprint differs)"))


def _check_shard_name(recorded: RunInfo, path: Path, report: VerifyReport) -> None:
    """A shard file holds the shard its name says (not another one copied over it)."""
    match = SHARD_RE.match(path.name)
    said = (recorded.shard_index, recorded.num_shards)
    if match and tuple(int(g) for g in match.groups()[:2]) != said:
        report.add(Problem(f"it holds shard {said[0]} of {said[1]}, not the shard its name says", file=path.name))


def files_to_verify(path: Path, report: VerifyReport | None = None) -> list[Path]:
    """[path] for a file; for a shards folder its job array's shard files, each the complete file
    (else the partial one), by index (`jobs.shardfolder`). Into `report`: the shards not there
    (yet), a warning; shards of another --num-shards, a problem naming them (none is checked)."""
    if not path.exists():
        raise InputError(f"{path} does not exist.")
    if not path.is_dir():
        return [path]
    found = scan_folder(path)
    files = [s.file for s in found.shards if s.file is not None]
    if not files:
        strays = found.strays_problem()
        raise InputError(
            f"{path}/ holds no shard file of its job array of {found.num_shards} shards yet (its tasks are "
            f"starting: `fmpipe info {path}`); verify it once they wrote their files.{f' {strays}' if strays else ''}"
        )
    missing = found.missing
    if report is not None and found.strays:
        report.add(Problem(found.strays_problem()))
    if report is not None and missing:
        report.warn(f"{len(missing)} shards are not in {path}/ yet (first: shard {missing[0]}); they were not checked")
    return files


@dataclass
class _FileCheck:
    file: h5py.File
    path: Path
    label: str | None  # the file's name when several are checked (a shards folder)
    recorded: RunInfo  # its root attributes
    config: VerifyConfig
    report: VerifyReport
    window: Window
    files: RawFiles
    version: int = field(init=False, default=2)
    ok: np.ndarray = field(init=False, default=None)  # (N,) bool: done and not failed
    seal: dict | None = field(init=False, default=None)  # the items sealed at finalise (None: unsealed)
    chunk_digests: dict = field(init=False, default_factory=dict)  # map data path → its chunk table's sha256

    def run(self) -> None:
        self.version = self.recorded.format_version
        if self.version < 2:
            self.report.warn(
                f"{self.path.name} is format v1: no chunk checksums and no source digests; "
                "its maps were checked against their statistics alone"
            )
        if any(self.file[f"{path}/{schema.DATA}"].is_virtual for path in self._groups()):
            try:
                check_virtual_sources(self.path, self.file)
            except InputError as err:
                self.problem(str(err))
                return
        done = self.file[schema.DONE][:].astype(bool)
        self.ok = done.copy()
        failed = self.file[schema.FAILURE_INDEX][:]
        if len(failed) and (failed.min() < 0 or failed.max() >= len(done)):
            self.problem(f"/{schema.FAILURE_INDEX} lists rows outside 0..{len(done) - 1}")
            failed = failed[(failed >= 0) & (failed < len(done))]
        self.ok[failed] = False
        self.report.rows += int(self.ok.sum())
        self.seal = recorded_seal(self.file)
        log.info("%s: checking %d stages and layers of %d rows", self.path, len(self._groups()), int(self.ok.sum()))
        for path in self._groups():
            self._check_stage(path)
        self._check_run_attributes()
        self._check_seal(done)
        self._check_sources(done)

    def _check_run_attributes(self) -> None:
        """The run attributes against `fingerprint_json`, the parts the fingerprint hashes (files
        without a seal too): the fingerprint, the model, the weights' digest and, for a file of the
        whole collection, the keys."""
        run = self.recorded
        parts = run.fingerprint_parts
        if not parts:
            return
        if run.fingerprint != fingerprint(parts):
            self.problem("the 'fingerprint' attribute is not the sha256 of 'fingerprint_json': one was changed")
        for name, value in (("model", run.model), ("weights_sha256", run.weights_sha256)):
            if name in parts and value is not None and value != str(parts[name]):
                self.problem(f"the {name!r} attribute ({value}) disagrees with 'fingerprint_json' ({parts[name]})")
        if parts.get("num_keys") != len(self.ok) or "keys_sha256" not in parts:
            return  # a shard holds part of the collection; merge checks the shards' keys together
        keys = [schema.text(k) for k in self.file[schema.KEY][:]]
        # Undecodable names are stored escaped ("\\x.."), so their hash cannot match (as in merge).
        if not any("\\" in k for k in keys) and keys_sha256(keys) != parts["keys_sha256"]:
            self.problem(f"/{schema.KEY} is not the collection the fingerprint names: a key was changed")

    def _check_seal(self, done: np.ndarray) -> None:
        """Everything a reader relies on against the seal written at finalise (or merge)."""
        complete = self.recorded.complete
        if complete and not done.all():
            self.problem(f"the file is marked complete but {int((~done).sum())} rows are not marked done")
        if self.seal is None:
            if complete and self.version >= 2:
                self.report.warn(
                    f"{self.path.name} has no seal (written before fmpipe sealed its files); "
                    "its keys, statistics, top lists and attributes were not checked against one"
                )
            return
        now = seal_items(self.file, self.path, self.files, self.chunk_digests)
        if table_sha256(self.seal) != (self.recorded.seal_sha256 or ""):
            self.problem("the seal itself (/seal or its seal_sha256 attribute) was altered")
        for line in changed_items(self.seal, now):
            self.problem(line)

    def _groups(self) -> list[str]:
        """Every stage's and layer's group path."""
        return schema.map_groups(self.file)

    def problem(self, what: str, stage: int | str | None = None, row: int | None = None) -> None:
        kept = len(self.report.problems) < MAX_PROBLEMS_KEPT  # past that only counted: no key to read
        key = schema.text(self.file[schema.KEY][row]) if row is not None and kept else None
        self.report.add(Problem(what, stage, key, self.label))

    def _check_stage(self, path: str) -> None:
        group = self.file[path]
        index = schema.group_label(path)
        data = group[schema.DATA]
        n, channels, height, width = data.shape
        found = index_chunks(data, self.path, self.files)
        if self.seal is not None:
            self.chunk_digests[f"{path}/{schema.DATA}"] = chunk_table_sha256(found)
        checksums = self.version >= 2 and self.recorded.chunk_checksum is not None
        keep_bits = encoding_of(self.file.attrs).keep_bits
        spec = ChunkSpec(np.dtype(data.dtype), found.k, channels, height * width, checksums, keep_bits)
        self._report_missing(index, found.table, spec)
        table = found.table[self.ok[found.table[:, ROW]]]
        valid = int(np.minimum(channels - table[:, C0], spec.k).sum()) * spec.hw * spec.dtype.itemsize
        progress = Progress(f"{self.label or self.path.name} {path}", valid)
        step = max(1, STATS_BLOCK_BYTES // (12 * channels))
        for lo in range(0, n, step):
            block = table[np.searchsorted(table[:, ROW], lo) : np.searchsorted(table[:, ROW], lo + step)]
            if not len(block):
                continue
            stats = np.stack([group[name][lo : lo + step] for name in schema.STAT_NAMES])  # (3, R, C)
            per_job = max(1, JOB_BYTES // spec.nbytes)  # small chunks go several to a job
            for first in range(0, len(block), per_job):
                jobs = block[first : first + per_job].tolist()
                refs = [
                    ChunkRef(found.sources[src], off, size, mask, c0, stats[:, row - lo, c0 : c0 + spec.k])
                    for row, c0, src, off, size, mask in jobs
                ]
                self.window.submit(self._handler(index, spec, jobs, progress), check_chunks, spec, refs)
        self.window.drain()
        progress.close()
        self._check_top_rows(group, index)

    def _check_top_rows(self, group: h5py.Group, index: int | str) -> None:
        """Top lists name rows of this file only (also in files without a seal)."""
        top = group.get(schema.TOP)
        for by in ("max", "mean") if top is not None else ():
            problem = top_rows_problem(top[f"{by}_rows"][:], len(self.ok))
            if problem:
                self.problem(f"{by} list: {problem}", index)

    def _handler(self, index: int | str, spec: ChunkSpec, jobs: list, progress: Progress) -> Callable:
        def handle(results: list[tuple[int, str | None]]) -> None:
            for (row, c0, *_), (nbytes, why) in zip(jobs, results, strict=True):
                self.report.chunks += 1
                self.report.bytes_checked += nbytes
                progress.update(nbytes)
                if why:
                    c1 = min(spec.channels, c0 + spec.k)
                    self.problem(f"chunk (row {row}, channels {c0}-{c1 - 1}) {why}", index, row)

        return handle

    def _report_missing(self, index: int | str, table: np.ndarray, spec: ChunkSpec) -> None:
        """A done, not failed row without all its chunks reads NaN where one is missing."""
        counts = np.bincount(table[:, ROW], minlength=len(self.ok))
        for row in np.flatnonzero(self.ok & (counts < -(-spec.channels // spec.k))).tolist():
            present = set(table[np.searchsorted(table[:, ROW], row) : np.searchsorted(table[:, ROW], row + 1), C0])
            for lo in range(0, spec.channels, spec.k):
                if lo not in present:
                    hi = min(spec.channels, lo + spec.k) - 1
                    self.problem(f"chunk (row {row}, channels {lo}-{hi}) is missing: it reads as NaN", index, row)

    def _check_sources(self, done: np.ndarray) -> None:
        rows = recorded_rows(self.file, done)
        if rows is None:
            if self.version >= 2:
                self.report.warn(f"{self.path.name} records no source digests; its sources were not checked")
            return
        root = self.config.images_root or self.recorded.images_root
        progress = Progress(f"{self.label or self.path.name} sources", len(rows), unit="file")
        found = check_sources(self.file, rows, root, self.window, progress.update)
        progress.close()
        for row, what in found.problems:
            self.problem(what, None, row)
        for text in found.warnings:
            self.report.warn(f"{self.label}: {text}" if self.label else text)
        self.report.sources_checked += found.checked
        self.report.sources_unchecked += found.unchecked
        if self.config.images_root is not None and found.unchecked and not found.checked:
            # The user named the folder to check against and nothing in it matched: say so loudly.
            self.problem(f"none of the {found.unchecked} recorded sources was found below --images-root {root}")
