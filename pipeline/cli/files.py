"""`fmpipe info`, `fmpipe merge` and `fmpipe verify`: what is in a file, job arrays, is it intact."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import default
from ..jobs.findings import VerifyConfig
from .app import app

ImagesRoot = Annotated[str | None, typer.Option(help="Where the source images are now, if they moved.")]


@app.command()
def info(
    path: Annotated[str, typer.Argument(help="An fmpipe HDF5 file, or a job array's OUT.shards/ folder.")],
) -> None:
    """Describe an fmpipe file (model, completeness, stages, sizes, failures) or a shards folder's progress."""
    import pipeline

    typer.echo(pipeline.info(path))


@app.command()
def merge(
    out: Annotated[str, typer.Argument(help="The merged file to write; the job array's shards are in OUT.shards/.")],
    copy: Annotated[
        bool,
        typer.Option("--copy", help="Self-contained file: copy the shards' compressed chunks (default: virtual)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT even if it is not an earlier merge of these shards.")
    ] = False,
) -> None:
    """Check a job array's shards (complete, same configuration, keys covered once) and combine them into OUT."""
    import pipeline

    summary = pipeline.merge(out, copy=copy, overwrite=overwrite)
    copied = f"; {summary.bytes_copied / 1e6:.1f} MB of chunks copied" if summary.mode == "copy" else ""
    typer.echo(
        f"{summary.out}: {summary.images} images ({summary.failed} failed) from {summary.num_shards} shards, "
        f"{summary.mode}, in {summary.seconds:.2f} s{copied}"
    )


@app.command()
def verify(
    path: Annotated[
        str, typer.Argument(help="An fmpipe file (single, merged or copied) or a job array's OUT.shards/.")
    ],
    recompute: Annotated[
        int, typer.Option(help="Also run N random stored rows through the recorded model again and compare.")
    ] = default(VerifyConfig, "recompute"),
    images_root: ImagesRoot = default(VerifyConfig, "images_root"),
    seed: Annotated[int, typer.Option(help="Seed of the rows picked for --recompute.")] = default(VerifyConfig, "seed"),
    workers: Annotated[int, typer.Option(help="Threads reading, decoding and hashing (0: one per core).")] = default(
        VerifyConfig, "workers"
    ),
    model: Annotated[
        str | None,
        typer.Option(
            help="With --recompute: the recorded model, named again by you. Needed for a package.module:factory "
            "model, whose code fmpipe never imports on a file's word alone."
        ),
    ] = default(VerifyConfig, "model"),
    trust_model: Annotated[
        bool,
        typer.Option(
            "--trust-model", help="With --recompute: build the recorded model even if that imports code it names."
        ),
    ] = default(VerifyConfig, "trust_model"),
) -> None:
    """Check a file is intact and true to its sources and model: every chunk's checksum and statistics,
    the seal written at finalise (keys, done markers, statistics, top lists, attributes, chunk layout,
    a merged file's shards), every source's digest, and with --recompute N the maps of N rows. Exit 1
    when a problem is found."""
    import pipeline

    report = pipeline.verify(
        path,
        recompute=recompute,
        images_root=images_root,
        seed=seed,
        workers=workers,
        model=model,
        trust_model=trust_model,
    )
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    if report.problem_count > len(report.problems):
        typer.echo(f"... and {report.problem_count - len(report.problems)} more problems")
    for warning in report.warnings:
        typer.echo(f"note: {warning}", err=True)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
