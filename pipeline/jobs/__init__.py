"""Jobs: job arrays on top of storage, the state of a shards folder and `fmpipe merge`. No torch. Its
modules are internal and may change: import the verbs `merge` and `info` from `pipeline`.
"""

__all__: list[str] = []
