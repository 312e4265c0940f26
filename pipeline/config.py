"""Frozen configuration of each command, option parsing helpers, and the run fingerprint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UsageError

DEFAULT_MODEL = "efficientnet_lite0"
DTYPES = ("float16", "float32", "uint8")
SHUFFLES = ("auto", "on", "off")
MANTISSA_BITS = {"float16": 10, "float32": 23}
COMPRESSIONS = ("zstd", "gzip", "none")
RESIZE_POLICY = "exact-HxW-pil-bicubic-no-crop-jpeg-draft"


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
    stages: tuple[int, ...] | None = None  # None: all of the model's stages (none when layers are given)
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
        raw = json.loads(text)
        for name in ("stages", "size", "pool"):
            if raw.get(name) is not None:
                raw[name] = tuple(raw[name])
        return cls(**raw)


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


def parse_stages(text: str | None) -> tuple[int, ...] | None:
    """`"0,2,-1"` → (0, 2, -1); `"all"`/None → None. Ranges `1:3` are accepted too."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if ":" in part:
                lo, hi = part.split(":")
                out.extend(range(int(lo), int(hi)))
            else:
                out.append(int(part))
    except ValueError:
        raise UsageError(f"--stages must be a comma list of indices like 0,2,-1, got {text!r}.") from None
    return tuple(out)


def resolve_stage_indices(requested: Sequence[int] | None, count: int) -> list[int]:
    """Map requested stage indices (negative allowed) onto 0..count-1, sorted, unique.

    Raises UsageError listing the valid stages for an out-of-range index.
    """
    if requested is None:
        return list(range(count))
    resolved = set()
    for index in requested:
        if not -count <= index < count:
            raise UsageError(
                f"stage {index} does not exist: this model has {count} stages, "
                f"valid indices are 0..{count - 1} (or -{count}..-1). "
                "Run `fmpipe stages MODEL` to list them."
            )
        resolved.add(index % count)
    return sorted(resolved)
