"""Storage, the HDF5 file in five rooms: format, writing, reading, locks and integrity. No torch."""
