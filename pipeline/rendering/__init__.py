"""Rendering: feature maps to pictures (colour tables, PNG, grids, overlays, PCA), in worker processes.
No torch. Its modules are internal and may change: import the verbs `render` and `colorize` from
`pipeline`.
"""

__all__: list[str] = []
