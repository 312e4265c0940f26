"""Viewer: `fmpipe view`, a local web server that draws any map of any image from the file on request,
and `fmpipe top`, the images that drive a channel most (dataset examples). No torch. Its modules are
internal and may change: import the verbs `view` and `top` from `pipeline`.
"""

__all__: list[str] = []
