"""`fmpipe` command line: one module per group of commands, each one command → one library call.

extract.py   extract, stages            (the model side; the only ones that import torch)
files.py     info, merge, verify        (what is in a file, job arrays, is it intact)
look.py      render, gallery            (pictures)
"""

from . import extract, files, look  # noqa: F401  (each registers its commands on the app)
from .app import app, main

__all__ = ["app", "main"]
