"""Job arrays and commands over files, on top of storage: a shards folder's state, the collection's
manifest, `fmpipe merge` and `fmpipe verify`. No torch. Its modules are internal and may change:
import the verbs `merge`, `verify` and `info` from `pipeline`.
"""

__all__: list[str] = []
