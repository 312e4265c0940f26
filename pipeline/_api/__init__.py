"""The verbs of the Python API, one module per group of commands as in `cli/` (extract, files, look,
view, analysis). Internal: `pipeline` re-exports every verb, so import them from there. Each verb's
options are keyword-only, with the defaults of its config dataclass read from the dataclass itself.
"""

__all__: list[str] = []
