"""Writing: a shard file's plan and layout, opening or resuming it, rows, batches, finalise. No torch."""
