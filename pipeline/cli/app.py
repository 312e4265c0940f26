"""The typer app every command registers on, the global options, and the error → exit code mapping.

Exit codes: 0 done; 1 runtime failure (or `verify` found a problem); 2 bad usage or bad input.
Tracebacks only with --debug. Commands import their library code lazily, so `--help`, `info`,
`render` and `view` never import torch.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from ..errors import FmpipeError, UsageError

# Plain click help: typer's rich panels print `<bool>` beside every flag (`--overlay <bool>`), as if
# it took a value, and importing rich costs start-up time on every command.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Extract every stage's feature maps of a vision network into one HDF5 file, and look at them.",
)
_state = {"debug": False}


def _version(show: bool) -> None:
    if show:
        from ..version import __version__

        typer.echo(f"fmpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print fmpipe's version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    sys.excepthook = _quiet_hdf5_dealloc(sys.excepthook)  # typer set its own before this callback runs
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s" if not sys.stderr.isatty() else "%(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def map_ref(stage: int | None, layer: str | None) -> int | str:
    """The stored map a command is about: `--stage S` (an index) or `--layer NAME`, exactly one."""
    if (stage is None) == (layer is None):
        raise UsageError("give --stage S or --layer NAME (one of them).")
    return stage if layer is None else layer


def main() -> None:
    """Console entry point: run the app, turning FmpipeError into a message and exit code."""
    sys.unraisablehook = _quiet_hdf5_teardown
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except FmpipeError as err:
        if _state["debug"]:
            raise
        typer.echo(f"fmpipe: error: {err}", err=True)
        if getattr(err, "exit_now", False):  # HDF5 holds a file it cannot close: tearing it down may crash
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(err.exit_code)
        sys.exit(err.exit_code)


def _quiet_hdf5_dealloc(previous):
    """Cython prints a failing h5py destructor's traceback through sys.excepthook too (see below);
    wraps the hook typer installs when the app starts."""

    def hook(kind, value, tb) -> None:
        frames, at = [], tb
        while at is not None:
            frames.append(at.tb_frame.f_code.co_filename)
            at = at.tb_next
        if not _state["debug"] and frames and all(name.startswith("h5py/") for name in frames):
            return
        previous(kind, value, tb)

    return hook


def _quiet_hdf5_teardown(unraisable) -> None:
    """h5py objects freed after a failed write (disk full) report HDF5's errors again from their
    destructors; the error was already said once. Anything else (or --debug) is printed as usual."""
    where = unraisable.object  # an h5py object, or (Cython) the name of the destructor
    if not _state["debug"] and (type(where).__module__.startswith("h5py") or str(where).startswith("h5py.")):
        return
    sys.__unraisablehook__(unraisable)
