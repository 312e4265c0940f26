"""Storage: the HDF5 file's schema, its writer (locks, chunks, done markers) and its lazy reader. No torch."""
