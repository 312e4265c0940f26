"""`fmpipe view` and `fmpipe top`: look at any map on request, and the images that drive a channel.
Never imports torch."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import default
from ..viewer.config import MAX_K, TopConfig, ViewConfig
from .app import app, map_ref
from .look import Cmap, File, ImagesRoot, Normalize


@app.command()
def view(
    path: File,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = default(ViewConfig, "port"),
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on; anything but 127.0.0.1 serves the network (and warns): "
            "prefer SSH port forwarding."
        ),
    ] = default(ViewConfig, "host"),
    images_root: ImagesRoot = default(ViewConfig, "images_root"),
) -> None:
    """Browse the file in a local web viewer that draws any map on request (prints the URL; Ctrl-C stops)."""
    import pipeline

    pipeline.view(path, host=host, port=port, images_root=images_root)


@app.command()
def top(
    path: File,
    channel: Annotated[int, typer.Option(help="The channel.")],
    stage: Annotated[int | None, typer.Option(help="Stage of the channel (negative counts from the last).")] = None,
    layer: Annotated[str | None, typer.Option(help="Or a layer stored with --layers, by its name.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help=f"How many images (1 to {MAX_K}).")] = default(TopConfig, "k"),
    by: Annotated[str, typer.Option(help="Rank by each image's map max or mean.")] = default(TopConfig, "by"),
    json: Annotated[bool, typer.Option("--json", help="Print JSON, as the viewer's /api/top returns it.")] = False,
    out: Annotated[
        str | None, typer.Option(help="Also write one labelled grid of the K maps over their sources (PNG).")
    ] = default(TopConfig, "out"),
    images_root: ImagesRoot = default(TopConfig, "images_root"),
    cmap: Cmap = default(TopConfig, "cmap"),
    normalize: Normalize = default(TopConfig, "normalize"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = default(
        TopConfig, "overwrite"
    ),
    crop: Annotated[
        bool,
        typer.Option(
            "--crop",
            help="Also each image cut around where the channel peaks (stored argmax; a window of 4 strides), "
            "listed in the table and drawn beside each picture in --out.",
        ),
    ] = default(TopConfig, "crop"),
) -> None:
    """The images that drive one channel most (dataset examples), best first; ties to the lower row."""
    import pipeline

    result = pipeline.top(
        path,
        stage=map_ref(stage, layer),
        channel=channel,
        k=k,
        by=by,
        out=out,
        images_root=images_root,
        cmap=cmap,
        normalize=normalize,
        overwrite=overwrite,
        crop=crop,
    )
    typer.echo(result.to_json() if json else result.table())
    if out:
        typer.echo(f"wrote {out}", err=True)
