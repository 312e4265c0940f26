"""Where a stored stage or layer lives in the HDF5 file: its group's path. No torch.

Shared below `storage` because `records.StageInfo.group` needs the same paths that
`storage/format/schema.py` names, and a shared module may not import storage. `schema` re-exports
every name here, so storage code and `docs/format.md` keep one place to look.
"""

from __future__ import annotations

STAGES = "stages"  # stages/<i>: a model's declared stage i (0-based, in the model's own order)
LAYERS = "layers"  # layers/<name>: a module's output picked by name (--layers), stored like a stage


def stage_group(index: int) -> str:
    """Group path of stage `index` (0-based, in the model's own order)."""
    return f"{STAGES}/{index}"


def layer_group(name: str) -> str:
    """Group path of the layer stored under `name` (as given to --layers: `layer1.0.relu:2`)."""
    return f"{LAYERS}/{name}"


def group_of(ref: int | str) -> str:
    """The group of a stage (an index) or a layer (a name)."""
    return stage_group(int(ref)) if not isinstance(ref, str) else layer_group(ref)


def group_label(path: str) -> int | str:
    """`stages/2` → 2 (a stage index); `layers/NAME` → "layer NAME" (for messages)."""
    kind, _, name = path.partition("/")
    return int(name) if kind == STAGES else f"layer {name}"
