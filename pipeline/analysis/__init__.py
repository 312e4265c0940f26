"""Analysis: the maps leaving fmpipe for other tools, decoded through `storage`'s one reader.

- config.py: `ExportConfig`, `ReduceConfig` (light, for the CLI's `--help`)
- dataset.py: `open_dataset`, a stage or layer as a lazy xarray Dataset
- export.py: `fmpipe export`, one .npy per image or a gzip HDF5 copy any HDF5 library reads
- reduction.py: `fmpipe reduce`, each image's flattened maps to D numbers (sparse random projection, PCA)
- features.py: the FEATURES.npz writer (streamed, so memory does not grow with the images) and pooling
"""
