"""Locks: `OUT.lock`, one writer per output, and who holds it. No torch."""
