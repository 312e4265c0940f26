"""`fmpipe` command line: one module per group of commands, each one command → one library call.

- extract.py: extract, stages, layers (the model side; the only commands that import torch)
- files.py: info, merge, verify (what is in a file, job arrays, is it intact)
- look.py: render, gallery (pictures)
- view.py: view, top (the web viewer; the images that drive a channel)
- analysis.py: export, reduce (the maps for other tools, and as features)
"""

from . import analysis, extract, files, look, view  # noqa: F401  (each registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
