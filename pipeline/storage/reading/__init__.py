"""Reading: the lazy `Store`, a merged file's virtual sources, top lists, `fmpipe info`'s text. No torch."""
