"""`fmpipe render` and `fmpipe gallery`: pictures of the maps. Never imports torch."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import default
from ..rendering.config import RenderConfig
from ..site.config import GalleryConfig
from .app import app, map_ref

File = Annotated[str, typer.Argument(help="An fmpipe HDF5 file (single, merged or copied).")]
Stage = Annotated[int | None, typer.Option(help="Stage to draw (0 is the first; negative counts from the last).")]
Layer = Annotated[str | None, typer.Option(help="Or a layer stored with --layers, by its name (e.g. layer1.0.relu:2).")]
RenderOut = Annotated[str | None, typer.Option(help="Output folder (default: FILE-render/ beside the file).")]
ImagesSpec = Annotated[
    str | None, typer.Option("--images", help="Images: indices, ranges, keys, e.g. 0:4,7,cats/a.jpg (default: all).")
]
ChannelsSpec = Annotated[str | None, typer.Option("--channels", help="Channels, e.g. 5,9,16:32 (default: all).")]
TopK = Annotated[int | None, typer.Option(help="Only each image's K most active channels (by stored mean).")]
Layout = Annotated[
    str, typer.Option(help="channels (one PNG each), grid (one per image), both, or pca (3 components as RGB).")
]
Cmap = Annotated[str, typer.Option(help="viridis, gray, magma, inferno, plasma, cividis or turbo.")]
Normalize = Annotated[str, typer.Option(help="Colour scale per channel, image, or stage (comparable across images).")]
Overlay = Annotated[bool, typer.Option("--overlay", help="Blend each map onto its source image.")]
ImagesRoot = Annotated[str | None, typer.Option(help="Where the source images are now, if they moved.")]
Scale = Annotated[int, typer.Option(help="Nearest-neighbour upscale factor (0: automatic, small maps grow).")]
Processes = Annotated[int, typer.Option("--workers", help="Processes (0: all cores).")]
AllowPartial = Annotated[bool, typer.Option("--allow-partial", help="Use the done images of an incomplete file.")]
OverwritePngs = Annotated[bool, typer.Option("--overwrite", help="Replace PNGs of an earlier render.")]
Html = Annotated[
    bool, typer.Option("--html", help="Then write the gallery (index.html) of everything rendered in the folder.")
]
PcaSamples = Annotated[
    int, typer.Option(help="--layout pca: channel vectors sampled across the file to fit the components.")
]
PcaSeed = Annotated[int, typer.Option(help="--layout pca: seed of the sample.")]


def _r(name: str):
    return default(RenderConfig, name)


@app.command()
def render(
    path: File,
    stage: Stage = None,
    layer: Layer = None,
    out: RenderOut = _r("out"),
    images: ImagesSpec = _r("images"),
    channels: ChannelsSpec = _r("channels"),
    top_k: TopK = _r("top_k"),
    layout: Layout = _r("layout"),
    cmap: Cmap = _r("cmap"),
    normalize: Normalize = _r("normalize"),
    overlay: Overlay = _r("overlay"),
    images_root: ImagesRoot = _r("images_root"),
    scale: Scale = _r("scale"),
    workers: Processes = _r("workers"),
    allow_partial: AllowPartial = _r("allow_partial"),
    overwrite: OverwritePngs = _r("overwrite"),
    html: Html = False,
    pca_samples: PcaSamples = _r("pca_samples"),
    pca_seed: PcaSeed = _r("pca_seed"),
) -> None:
    """Draw one stage's (or layer's) feature maps as PNGs: per channel, per-image grids, overlays, or a PCA picture."""
    import pipeline

    summary = pipeline.render(
        path,
        map_ref(stage, layer),
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
    plural = "" if summary.workers == 1 else "s"
    typer.echo(
        f"{summary.out_dir}/{summary.folder}: {summary.pngs} PNGs written ({summary.grids} grids) for "
        f"{summary.images - len(summary.failed)} images in {summary.seconds:.2f} s "
        f"({summary.ms_per_png:.2f} ms/PNG, {summary.workers} worker{plural})"
    )
    if summary.failed:
        typer.echo(f"{len(summary.failed)} images skipped, first: {summary.failed[0][0]}: {summary.failed[0][1]}")
    if html:  # the CLI orchestrates: render, then the gallery of the whole folder
        site = pipeline.gallery(
            str(summary.source), out=str(summary.out_dir), images_root=images_root, allow_partial=allow_partial
        )
        typer.echo(f"gallery: {site.index.resolve().as_uri()}")


@app.command()
def gallery(
    path: Annotated[str, typer.Argument(help="The fmpipe HDF5 file that was rendered.")],
    out: Annotated[
        str | None, typer.Option(help="The render folder (default: FILE-render/ beside the file).")
    ] = default(GalleryConfig, "out"),
    images_root: ImagesRoot = default(GalleryConfig, "images_root"),
    per_page: Annotated[int, typer.Option(help="Images per index page.")] = default(GalleryConfig, "per_page"),
    allow_partial: AllowPartial = default(GalleryConfig, "allow_partial"),
) -> None:
    """Write static HTML pages (index.html) to browse every rendered image × stage; opens from disk."""
    import pipeline

    summary = pipeline.gallery(path, out=out, images_root=images_root, per_page=per_page, allow_partial=allow_partial)
    typer.echo(
        f"{summary.index.resolve().as_uri()}: {summary.images} images on {summary.index_pages} index pages, "
        f"stages {','.join(map(str, summary.stages))}, {summary.thumbs_written} thumbnails written, "
        f"{summary.failures} failures listed, in {summary.seconds:.2f} s"
    )
    if summary.sources_missing:
        typer.echo(f"{summary.sources_missing} source images not found: pass --images-root DIR if they moved.")
