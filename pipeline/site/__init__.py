"""The static gallery site: HTML pages over a render folder that open from disk. No torch."""
