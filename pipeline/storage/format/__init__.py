"""Format: what an fmpipe file is and means (schema, encoding, codecs), what a valid one is. No torch."""
