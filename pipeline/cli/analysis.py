"""`fmpipe export` and `fmpipe reduce`: the maps for other tools, and as features for analysis.
Never imports torch; `reduce` imports scikit-learn when it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from ..analysis.config import ExportConfig, ReduceConfig
from ..config import default, parse_pool
from .app import app, map_ref
from .look import AllowPartial, File, ImagesSpec, Layer

Stage = Annotated[int | None, typer.Option(help="Stage (0 is the first; negative counts from the last).")]


@app.command(rich_help_panel="Analysis: the maps for other tools")
def export(
    path: File,
    dest: Annotated[str, typer.Argument(help="npy: a folder (one FILE per image); hdf5: the new .h5 file.")],
    stage: Stage = None,
    layer: Layer = None,
    images: ImagesSpec = default(ExportConfig, "images"),
    format: Annotated[
        str,
        typer.Option(
            help="npy: one (C, H, W) float32 .npy per image, named by key as render names folders "
            "(cats/a.jpg → DEST/cats/a.npy); hdf5: a copy of the file any HDF5 library reads (MATLAB, R, "
            "Julia, h5py without hdf5plugin), every stage and layer unless --stage/--layer."
        ),
    ] = default(ExportConfig, "format"),
    compression: Annotated[str, typer.Option(help="hdf5: gzip (deflate, built into every HDF5 library).")] = default(
        ExportConfig, "compression"
    ),
    allow_partial: AllowPartial = default(ExportConfig, "allow_partial"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files an earlier export wrote.")] = default(
        ExportConfig, "overwrite"
    ),
) -> None:
    """Write the maps for tools without fmpipe: .npy files per image, or a gzip HDF5 copy."""
    import pipeline

    ref = None if format == "hdf5" and stage is None and layer is None else map_ref(stage, layer)
    summary = pipeline.export(
        path,
        dest,
        stage=ref,
        images=images,
        format=format,
        compression=compression,
        allow_partial=allow_partial,
        overwrite=overwrite,
    )
    typer.echo(summary.line())


@app.command(rich_help_panel="Analysis: the maps for other tools")
def reduce(
    path: File,
    method: Annotated[
        str,
        typer.Option(
            help="srp: very sparse random projection (density 1/sqrt(features)), pairwise distances kept within "
            "the Johnson-Lindenstrauss bound; pca: incremental PCA in two passes, which needs about 11 times its "
            "D×F float32 components: 44·D·F bytes (F numbers per image after --pool; D=1000 of ResNet-50's "
            "stage 4, F=100,352, is 4.4 GB); refused up front, with the number, when that does not fit."
        ),
    ],
    dim: Annotated[int, typer.Option(help="D: numbers per image in the output.")],
    out: Annotated[
        str,
        typer.Option(
            help="FEATURES.npz: features (N, D) float32, keys (N,); pca adds "
            "explained_variance_ratio (D,) and mean (F,)."
        ),
    ],
    stage: Stage = None,
    layer: Layer = None,
    seed: Annotated[int, typer.Option(help="srp: the projection's seed (same seed, same features).")] = default(
        ReduceConfig, "seed"
    ),
    pool: Annotated[
        str | None, typer.Option(help="Average-pool every map to HxW (or S: SxS) before flattening.")
    ] = None,
    max_memory: Annotated[
        float | None, typer.Option(help="pca: GB it may use (default: the memory available now).")
    ] = default(ReduceConfig, "max_memory_gb"),
    allow_partial: AllowPartial = default(ReduceConfig, "allow_partial"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = default(
        ReduceConfig, "overwrite"
    ),
) -> None:
    """Reduce each image's flattened maps to D numbers (srp or pca), streaming the file in row blocks:
    memory does not grow with the number of images. Failed images are left out, and said so."""
    import pipeline

    summary = pipeline.reduce(
        path,
        stage=map_ref(stage, layer),
        method=method,
        dim=dim,
        out=out,
        seed=seed,
        pool=parse_pool(pool),
        max_memory_gb=max_memory,
        allow_partial=allow_partial,
        overwrite=overwrite,
    )
    typer.echo(summary.line())
