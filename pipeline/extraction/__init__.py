"""Extraction: models, stage taps, decode workers, the device side of a batch and the shard runner.

The only part of fmpipe that imports torch, torchvision or timm (a ruff rule keeps it so).
"""
