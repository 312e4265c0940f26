"""`ExtractConfig` (frozen, validated once; the CLI and the API take extract's defaults from it), the
`--size`, `--pool`, `--layers` and `--stages` parsers, and the one index-and-range parser of
`--stages`, `--images` and `--channels`. No torch.

The other commands' configs live in their parts (`rendering/config.py`, `site/config.py`,
`viewer/config.py`, `analysis/config.py`, `jobs/findings.py`); the run's fingerprint is
computed in `storage/format/identity.py` from the parts `extraction/planning.py` collects.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

DEFAULT_MODEL = "efficientnet_lite0"
DTYPES = ("float16", "float32", "uint8")
SHUFFLES = ("auto", "on", "off")
MANTISSA_BITS = {"float16": 10, "float32": 23}
COMPRESSIONS = ("zstd", "gzip", "none")
RESIZE_POLICY = "exact-HxW-pil-bicubic-no-crop-jpeg-draft"
_INDEX = re.compile(r"[+-]?\d+")
_RANGE = re.compile(r"([+-]?\d+)?:([+-]?\d+)?(?::([+-]?\d+)?)?")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `fmpipe extract` needs; built by the CLI or by `pipeline.extract`."""

    images: str
    out: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    weights_key: str | None = None  # dotted key of the state dict inside a training checkpoint
    weights_prefix: str | None = None  # take the tensors under this prefix (stripped), e.g. backbone.0.body.
    random_init: bool = False
    # Indices and ranges ("0:-1", Python's slice meaning), or their text "0,2,-1"; None: all of the
    # model's stages (none when layers are given).
    stages: tuple[int | str, ...] | str | None = None
    layers: tuple[str, ...] | None = None  # modules by name (`layer1.0.relu:2`), stored like stages
    size: tuple[int, int] | None = None  # None: the model's own input size
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float16"  # float16, float32, or uint8 scaled by each (image, channel) map's min and max
    keep_bits: int = 0  # float mantissa bits kept, rounded to nearest (0: all)
    shuffle: str = "auto"  # HDF5 byte shuffle before compression: auto (on for compressed floats), on, off
    pool: tuple[int, int] | None = None  # adaptive average pooling of every map to at most (H, W)
    compression: str = "zstd"
    workers: int = 2
    shard_index: int = 0
    num_shards: int = 1
    overwrite: bool = False
    dry_run: bool = False
    unsafe_pickle: bool = False
    seed: int = 0
    amp: bool = False  # bf16 autocast on CUDA (changes values: part of the fingerprint)
    null_writer: bool = False  # discard the maps (benchmarking the rest of the pipeline)

    def __post_init__(self) -> None:
        if self.stages is not None:  # checked before any model is built
            stages = parse_stages(self.stages) if isinstance(self.stages, str) else _stage_items(self.stages)
            object.__setattr__(self, "stages", stages)
        if isinstance(self.layers, str):  # the API's layers="avgpool, layer4": the CLI's text
            object.__setattr__(self, "layers", parse_layers(self.layers))
        elif self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.stages == () and not self.layers:
            raise UsageError("--stages selects no stage and no --layers are given: the file would hold no maps.")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}.")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        self._check_storage()
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}.")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise UsageError(
                f"--shard-index must be in 0..{self.num_shards - 1} for --num-shards "
                f"{self.num_shards}, got {self.shard_index}."
            )
        if self.weights and self.random_init:
            raise UsageError("--weights and --random-init exclude each other; pick one.")
        for option, value in (("--weights-key", self.weights_key), ("--weights-prefix", self.weights_prefix)):
            if value and not self.weights:
                raise UsageError(f"{option} {value} picks tensors of a weights file; give the file: --weights FILE.")

    def _check_storage(self) -> None:
        if isinstance(self.pool, int) and not isinstance(self.pool, bool):
            object.__setattr__(self, "pool", (self.pool, self.pool))  # the API's pool=7 means 7x7
        elif isinstance(self.pool, list):
            object.__setattr__(self, "pool", tuple(self.pool))
        if self.shuffle not in SHUFFLES:
            raise UsageError(f"--shuffle must be one of {', '.join(SHUFFLES)}, got {self.shuffle!r}.")
        if self.pool is not None and (
            not isinstance(self.pool, tuple)
            or len(self.pool) != 2
            or not all(isinstance(v, int) for v in self.pool)
            or min(self.pool) < 1
        ):
            raise UsageError(f"--pool must be H or HxW with positive integers, got {self.pool!r}.")
        if not self.keep_bits:
            return
        if self.dtype not in MANTISSA_BITS:
            raise UsageError(f"--keep-bits rounds float mantissas; it does not apply to --dtype {self.dtype}.")
        most = MANTISSA_BITS[self.dtype]
        if not 1 <= self.keep_bits <= most:
            raise UsageError(f"--keep-bits must be in 1..{most} for {self.dtype} (0: keep all), got {self.keep_bits}.")

    @property
    def shuffled(self) -> bool:
        """Whether chunks are byte-shuffled: `auto` shuffles compressed float maps (measured smaller:
        docs/benchmarks.md); bytes of a uint8 map have nothing to shuffle."""
        if self.shuffle != "auto":
            return self.shuffle == "on" and self.dtype != "uint8"
        return self.compression != "none" and self.dtype != "uint8"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExtractConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: dict) -> ExtractConfig:
        """The configuration as a file records it (`config_json`, parsed): JSON lists back to tuples."""
        raw = dict(raw)
        for name in ("stages", "size", "pool"):
            if raw.get(name) is not None:
                raw[name] = tuple(raw[name])
        return cls(**raw)


def default(config: type, name: str) -> Any:
    """A config dataclass field's default: the CLI and the Python API take every default from there, never twice."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    return field.default


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`"800x1200"` → (800, 1200); `"224"` → (224, 224) (a square); None → None."""
    if text is None or text == "":
        return None
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UsageError(f"--size must be H or HxW with positive integers (e.g. 800x1200), got {text!r}.")
    return values[0], values[1]


def parse_pool(text: str | None) -> tuple[int, int] | None:
    """`--pool`: `"7x7"` → (7, 7); `"1"` → (1, 1) (the global mean); `"none"`/None → None."""
    if text is None or text.strip().lower() in ("", "none", "off"):
        return None
    try:
        return parse_size(text)
    except UsageError:
        raise UsageError(f"--pool must be H or HxW with positive integers (e.g. 7x7, or 1), got {text!r}.") from None


def parse_layers(text: str | None) -> tuple[str, ...] | None:
    """`"layer3.1.conv2, avgpool"` → ("layer3.1.conv2", "avgpool"); None/"" → None."""
    if text is None or not text.strip():
        return None
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    return names or None


def parse_index(item: int | str) -> int | slice | None:
    """One index or range with Python's meaning: `5`, `-1` → an int; `0:-1`, `-2:`, `:3`, `::2` → a slice;
    anything else (a key, a name) → None. The one parser of `--stages`, `--images` and `--channels`."""
    if isinstance(item, int):
        return item
    text = item.strip()
    if _INDEX.fullmatch(text):
        return int(text)
    match = _RANGE.fullmatch(text)
    if match is None:
        return None
    lo, hi, step = (int(v) if v else None for v in match.groups())
    if step == 0:
        raise UsageError(f"range {text!r} has a step of 0; use a positive or negative step like ::2.")
    return slice(lo, hi, step)


def pick_indices(item: int | str, count: int, what: str, where: str) -> list[int] | None:
    """An index or range (see `parse_index`) → indices in 0..count-1 (a range in its own order);
    None when `item` is neither. An index out of range, or a range selecting nothing, is a UsageError."""
    parsed = parse_index(item)
    if parsed is None:
        return None
    if isinstance(parsed, int):
        if not -count <= parsed < count:
            raise UsageError(
                f"{what} {parsed} does not exist in {where}: valid indices are 0..{count - 1} (or -{count}..-1)."
            )
        return [parsed % count]
    indices = list(range(count))[parsed]
    if not indices:
        raise UsageError(
            f"{what} range {str(item).strip()!r} selects nothing in {where} (Python slice meaning; "
            f"valid indices are 0..{count - 1})."
        )
    return indices


def parse_stages(text: str | None) -> tuple[int | str, ...] | None:
    """`"0,2,-1"` → (0, 2, -1); `"0:-1"` → ("0:-1",) (a range stays text: it is resolved against the model's
    stage count, with Python's slice meaning); `"all"`/None → None."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    return _stage_items(text.split(","))


def resolve_stage_indices(requested: Sequence[int | str] | None, count: int) -> list[int]:
    """Map requested stage indices and ranges (negative allowed, Python's meaning) onto 0..count-1, sorted, unique.

    Raises UsageError listing the valid stages for an out-of-range index, or naming a selection that
    picks no stage (an extract that would store no maps).
    """
    if requested is None:
        return list(range(count))
    where = f"this model ({count} stages; `fmpipe stages MODEL` lists them)"
    resolved: set[int] = set()
    for item in _stage_items(requested):
        resolved.update(pick_indices(item, count, "stage", where) or ())
    return sorted(resolved)


def _stage_items(items: Sequence[int | str]) -> tuple[int | str, ...]:
    """Stage indices (ints) and ranges (their text), each checked by `parse_index`."""
    out: list[int | str] = []
    for item in items:
        parsed = parse_index(item)
        if parsed is None:
            raise UsageError(f"--stages takes indices and ranges like 0,2,-1 or 0:-1 or -2:, got {item!r}.")
        out.append(parsed if isinstance(parsed, int) else str(item).strip())
    return tuple(out)
