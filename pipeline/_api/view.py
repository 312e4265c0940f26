"""`pipeline.view` and `pipeline.top`: the web viewer, and the images that drive a channel. Never
imports torch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..config import default
from ..viewer.config import TopConfig, ViewConfig

if TYPE_CHECKING:
    from ..viewer.examples import TopResult


def view(
    path: str | os.PathLike,
    *,
    host: str = default(ViewConfig, "host"),
    port: int = default(ViewConfig, "port"),
    images_root: str | os.PathLike | None = default(ViewConfig, "images_root"),
) -> None:
    """Serve the local web viewer of an fmpipe file until Ctrl-C or SIGTERM; it draws any map on request.

    Prints the viewer's URL; the defaults are `pipeline.ViewConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file (``OUT.h5.partial`` is used while only it exists).
    host : str
        The address to listen on; anything but ``127.0.0.1`` serves the network (and warns): prefer SSH
        port forwarding.
    port : int
        The port to listen on (0: any free port).
    images_root : str or os.PathLike or None
        Where the source images are now, if they moved; None: as recorded in the file.

    Returns
    -------
    None
        When the server has stopped.
    """
    from ..viewer.server import serve

    serve(ViewConfig(path=str(path), host=host, port=port, images_root=images_root))


def _t(name: str):
    return default(TopConfig, name)


def top(
    path: str | os.PathLike,
    *,
    stage: int | str,
    channel: int,
    k: int = _t("k"),
    by: str = _t("by"),
    out: str | os.PathLike | None = _t("out"),
    images_root: str | os.PathLike | None = _t("images_root"),
    cmap: str = _t("cmap"),
    normalize: str = _t("normalize"),
    overwrite: bool = _t("overwrite"),
    crop: bool = _t("crop"),
) -> TopResult:
    """The images whose map of one channel has the largest max (or mean), best first; ties to the lower row.

    Read from the top lists stored at finalise; the defaults are `pipeline.TopConfig`'s.

    Parameters
    ----------
    path : str or os.PathLike
        An fmpipe file.
    stage : int or str
        A stage index (negative counts from the last), or a layer stored with ``layers=``, by name.
    channel : int
        The channel.
    k : int
        How many images (1 to 1000).
    by : str
        Rank by each image's map ``max`` or ``mean``.
    out : str or os.PathLike or None
        Also write one labelled grid of the K maps over their sources here (PNG).
    images_root : str or os.PathLike or None
        Where the source images are now, if they moved; None: as recorded in the file.
    cmap : str
        The colour table of the grid in `out`.
    normalize : str
        The colour scale of the grid in `out`: per ``channel``, ``image`` or ``stage``.
    overwrite : bool
        Replace an existing `out`.
    crop : bool
        Also each image cut around where the channel peaks (its receptive-field crop, from the stored
        argmax), in ``.crops`` and beside each picture in `out`.

    Returns
    -------
    TopResult
        ``.items`` (row, key, value), ``.to_json()`` as the viewer's ``/api/top`` returns it, ``.table()``.
    """
    from ..viewer.examples import top as run

    config = TopConfig(
        path=str(path),
        stage=stage,
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
    return run(config)
