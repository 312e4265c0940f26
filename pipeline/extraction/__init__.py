"""Extraction: models, stage and layer taps, decode workers, the device side of a batch and the shard
runner. The only part of fmpipe that imports torch, torchvision or timm (a ruff rule keeps it so). Its
modules are internal and may change: import the verbs `extract`, `stages` and `layers` from `pipeline`.
"""

__all__: list[str] = []
