"""`fmpipe` command line: parses, validates, calls one library function, maps errors to exit codes.

Exit codes: 0 done; 1 runtime failure; 2 bad usage or bad input. Tracebacks only with --debug.
torch is imported only by the commands that run a model (extract, stages).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from .config import DEFAULT_MODEL, ExtractConfig, parse_size, parse_stages
from .errors import FmpipeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Extract every stage's feature maps of a vision network into one HDF5 file, and render them.",
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if not sys.stderr.isatty() else "%(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@app.command()
def extract(
    images: Annotated[str, typer.Argument(help="Folder of images (searched recursively).")],
    out: Annotated[str, typer.Argument(help="Output HDF5 file.")],
    model: Annotated[str, typer.Option(help="timm name, tv:NAME (torchvision) or module:factory.")] = DEFAULT_MODEL,
    weights: Annotated[str | None, typer.Option(help="State dict file to load into the model.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Random weights (seeded); no download.")] = False,
    stages: Annotated[str | None, typer.Option(help="Stages to keep, e.g. 0,2,-1 (default: all).")] = None,
    size: Annotated[
        str | None,
        typer.Option(
            help="Resize every image to exactly HxW; one number S means SxS. Default: the model's input size."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Storage dtype: float16 or float32.")] = "float16",
    compression: Annotated[str, typer.Option(help="zstd, gzip or none.")] = "zstd",
    workers: Annotated[int, typer.Option(help="Decoding processes (0: decode in the main process).")] = 2,
    shard_index: Annotated[int, typer.Option(help="This task's shard (job arrays).")] = 0,
    num_shards: Annotated[int, typer.Option(help="Number of shards (job arrays).")] = 1,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output (and its partial file).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan and size estimate; compute nothing.")
    ] = False,
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            "--unsafe-pickle",
            help="DANGEROUS: let --weights unpickle arbitrary objects (can run code). Only for files you trust.",
        ),
    ] = False,
    amp: Annotated[
        bool, typer.Option("--amp", help="bf16 autocast on CUDA (faster, less exact; recorded in the file).")
    ] = False,
    null_writer: Annotated[
        bool, typer.Option("--null-writer", help="Benchmarking: run everything but discard the maps (writes no file).")
    ] = False,
) -> None:
    """Stream images through a model in batches and store every stage's activations."""
    config = ExtractConfig(
        images=images,
        out=out,
        model=model,
        weights=weights,
        random_init=random_init,
        stages=parse_stages(stages),
        size=parse_size(size),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        compression=compression,
        workers=workers,
        shard_index=shard_index,
        num_shards=num_shards,
        overwrite=overwrite,
        dry_run=dry_run,
        unsafe_pickle=unsafe_pickle,
        amp=amp,
        null_writer=null_writer,
    )
    from .extraction.runner import estimate_bytes
    from .extraction.runner import extract as run

    summary = run(config)
    per_image = estimate_bytes(summary.stages, dtype)
    if summary.dry_run:
        from .storage.info import describe_stages

        typer.echo(
            describe_stages(
                model,
                summary.input_hw,
                summary.stages,
                2 if dtype == "float16" else 4,
            )
        )
        typer.echo(
            f"dry run: {summary.images} images → {summary.out}, about "
            f"{per_image * summary.images / 1e6:.1f} MB before compression; nothing computed."
        )
        return
    typer.echo(
        f"{summary.out}: {summary.stored} images stored, {summary.failed} failed"
        f"{f', {summary.done_before} already done' if summary.done_before else ''}; "
        f"{summary.mb_written:.1f} MB written in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.1f} images/s) on {summary.device}"
    )
    if summary.failed:
        typer.echo(f"{summary.failed} images could not be used; `fmpipe info {summary.out}` lists them.")


@app.command()
def stages(
    model: Annotated[str, typer.Argument(help="timm name, tv:NAME or module:factory.")] = DEFAULT_MODEL,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the model's own).")] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype for the MB/image column.")] = "float16",
) -> None:
    """List a model's stages: index, module, channels, stride, shape and MB per image."""
    import torch

    from .extraction.models import resolve
    from .extraction.taps import build
    from .storage.info import describe_stages

    resolved = resolve(model, random_init=True)  # shapes do not depend on the weights
    size_hw = parse_size(size) or resolved.input_hw
    _, found = build(resolved, size_hw, None, torch.device("cpu"))
    typer.echo(describe_stages(model, size_hw, found, 2 if dtype == "float16" else 4))


@app.command()
def info(
    path: Annotated[str, typer.Argument(help="An fmpipe HDF5 file, or a job array's OUT.shards/ folder.")],
) -> None:
    """Describe an fmpipe file (model, completeness, stages, sizes, failures) or a shards folder's progress."""
    from pathlib import Path

    from .storage.info import describe_store
    from .storage.store import open_store

    if Path(path).is_dir():
        from .jobs.shards import describe_folder

        typer.echo(describe_folder(path))
        return
    with open_store(path) as store:
        typer.echo(describe_store(store))


@app.command()
def merge(
    out: Annotated[str, typer.Argument(help="The merged file to write; the job array's shards are in OUT.shards/.")],
    copy: Annotated[
        bool,
        typer.Option(
            "--copy", help="Self-contained file: copy the shards' compressed chunks (default: virtual datasets)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT even if it is not an earlier merge of these shards.")
    ] = False,
) -> None:
    """Check a job array's shards (complete, same configuration, keys covered once) and combine them into OUT."""
    from .jobs.merge import merge as run

    summary = run(out, copy=copy, overwrite=overwrite)
    typer.echo(
        f"{summary.out}: {summary.images} images ({summary.failed} failed) from {summary.num_shards} shards, "
        f"{summary.mode}, in {summary.seconds:.2f} s"
        + (f"; {summary.bytes_copied / 1e6:.1f} MB of chunks copied" if summary.mode == "copy" else "")
    )


@app.command()
def verify(
    path: Annotated[
        str, typer.Argument(help="An fmpipe file (single, merged or copied) or a job array's OUT.shards/.")
    ],
    recompute: Annotated[
        int, typer.Option(help="Also run N random stored rows through the recorded model again and compare.")
    ] = 0,
    images_root: Annotated[
        str | None, typer.Option(help="Where the source images are now, if they moved (default: as recorded).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the rows picked for --recompute.")] = 0,
    workers: Annotated[int, typer.Option(help="Threads reading, decoding and hashing (0: one per core).")] = 0,
) -> None:
    """Check a file is intact and true to its sources and model: every chunk's checksum and statistics,
    every source's digest, and with --recompute N the maps of N rows. Exit 1 when a problem is found."""
    from . import verify as run

    report = run(path, recompute=recompute, images_root=images_root, seed=seed, workers=workers)
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    if report.problem_count > len(report.problems):
        typer.echo(f"... and {report.problem_count - len(report.problems)} more problems")
    for warning in report.warnings:
        typer.echo(f"note: {warning}", err=True)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def render(
    path: Annotated[str, typer.Argument(help="An fmpipe HDF5 file (single, merged or copied).")],
    stage: Annotated[int, typer.Option(help="Stage to draw (0 is the first; negative counts from the last).")],
    out: Annotated[str | None, typer.Option(help="Output folder (default: FILE-render/ beside the file).")] = None,
    images: Annotated[
        str | None, typer.Option(help="Images: indices, ranges, keys, e.g. 0:4,7,cats/a.jpg (default: all).")
    ] = None,
    channels: Annotated[str | None, typer.Option(help="Channels, e.g. 5,9,16:32 (default: all).")] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Only each image's K most active channels (by stored mean).")
    ] = None,
    layout: Annotated[
        str,
        typer.Option(help="channels (one PNG each), grid (one per image), both, or pca (3 components as RGB)."),
    ] = "both",
    cmap: Annotated[str, typer.Option(help="viridis, gray, magma, inferno, plasma, cividis or turbo.")] = "viridis",
    normalize: Annotated[
        str, typer.Option(help="Colour scale per channel, image, or stage (comparable across images).")
    ] = "channel",
    overlay: Annotated[bool, typer.Option("--overlay", help="Blend each map onto its source image.")] = False,
    images_root: Annotated[
        str | None, typer.Option(help="Where the source images are now, if they moved (--overlay).")
    ] = None,
    scale: Annotated[int, typer.Option(help="Nearest-neighbour upscale factor (0: automatic, small maps grow).")] = 0,
    workers: Annotated[int, typer.Option(help="Processes (0: all cores).")] = 0,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Render the done images of an incomplete file.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace PNGs of an earlier render.")] = False,
    html: Annotated[
        bool, typer.Option("--html", help="Then write the gallery (index.html) of everything rendered in the folder.")
    ] = False,
    pca_samples: Annotated[
        int, typer.Option(help="--layout pca: channel vectors sampled across the file to fit the components.")
    ] = 20_000,
    pca_seed: Annotated[int, typer.Option(help="--layout pca: seed of the sample.")] = 0,
) -> None:
    """Draw one stage's feature maps as PNGs: per channel, per-image grids, overlays, or a PCA picture."""
    from .rendering.run import RenderConfig
    from .rendering.run import render as run

    summary = run(
        RenderConfig(
            path=path,
            stage=stage,
            out=out,
            images=images,
            channels=channels,
            top_k=top_k,
            layout=layout,
            cmap=cmap,
            normalize=normalize,
            overlay=overlay,
            images_root=images_root,
            scale=scale,
            workers=workers,
            allow_partial=allow_partial,
            overwrite=overwrite,
            pca_samples=pca_samples,
            pca_seed=pca_seed,
        )
    )
    typer.echo(
        f"{summary.out_dir}/stage{summary.stage}: {summary.pngs} PNGs written ({summary.grids} grids) for "
        f"{summary.images - len(summary.failed)} images in {summary.seconds:.2f} s "
        f"({summary.ms_per_png:.2f} ms/PNG, {summary.workers} worker{'' if summary.workers == 1 else 's'})"
    )
    if summary.failed:
        typer.echo(f"{len(summary.failed)} images skipped, first: {summary.failed[0][0]}: {summary.failed[0][1]}")
    if html:  # the CLI orchestrates: render, then the gallery of the whole folder
        from .site.build import GalleryConfig, write_gallery

        config = GalleryConfig(str(summary.source), str(summary.out_dir), images_root, allow_partial=allow_partial)
        typer.echo(f"gallery: {write_gallery(config).index.resolve().as_uri()}")


@app.command()
def gallery(
    path: Annotated[str, typer.Argument(help="The fmpipe HDF5 file that was rendered.")],
    out: Annotated[str | None, typer.Option(help="The render folder (default: FILE-render/ beside the file).")] = None,
    images_root: Annotated[
        str | None, typer.Option(help="Where the source images are now, if they moved (thumbnails).")
    ] = None,
    per_page: Annotated[int, typer.Option(help="Images per index page.")] = 100,
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="Pages for the done images of an incomplete file.")
    ] = False,
) -> None:
    """Write static HTML pages (index.html) to browse every rendered image × stage; opens from disk."""
    from .site.build import GalleryConfig, write_gallery

    summary = write_gallery(
        GalleryConfig(path, out=out, images_root=images_root, per_page=per_page, allow_partial=allow_partial)
    )
    typer.echo(
        f"{summary.index.resolve().as_uri()}: {summary.images} images on {summary.index_pages} index pages, "
        f"stages {','.join(map(str, summary.stages))}, {summary.thumbs_written} thumbnails written, "
        f"{summary.failures} failures listed, in {summary.seconds:.2f} s"
    )
    if summary.sources_missing:
        typer.echo(f"{summary.sources_missing} source images not found: pass --images-root DIR if they moved.")


def main() -> None:
    """Console entry point: run the app, turning FmpipeError into a message and exit code."""
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except FmpipeError as err:
        if _state["debug"]:
            raise
        typer.echo(f"fmpipe: error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
