"""Site: the static gallery, HTML pages over a render folder that open from disk. No torch. Its modules
are internal and may change: import the verb `gallery` from `pipeline`.
"""

__all__: list[str] = []
