"""Analysis: the maps leaving fmpipe for other tools (one .npy per image, a gzip HDF5 copy), as features
(random projection, PCA) and as a lazy xarray Dataset, all decoded through `storage`'s one reader. No
torch. Its modules are internal and may change: import the verbs `export`, `reduce` and `open_dataset`
from `pipeline`.
"""

__all__: list[str] = []
