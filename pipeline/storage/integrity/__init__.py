"""Integrity: checksummed chunk reads, the seal, maps against statistics, sources against digests. No torch."""
