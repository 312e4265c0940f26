"""Job arrays on top of storage: the state of a shards folder and `fmpipe merge`. No torch."""
