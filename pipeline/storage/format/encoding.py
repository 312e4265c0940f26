"""How maps are stored and read back: the storage dtype (float16, float32, or uint8 with a scale
and offset per image and channel), mantissa rounding (`--keep-bits`), HDF5's byte shuffle, and
pooling (`--pool`). `decode_maps` is the one place stored values become float32. No torch.

uint8: each (image, channel) map is stored as q = round((v - lo) / (hi - lo) * 255), with lo, hi
that map's own min and max (the statistics beside it, `min` and `max`). It reads back as
lo + q * (hi - lo) / 255: within (hi - lo) / 510 of the float32 activations. A constant map
(hi == lo) stores q = 0 and reads back as lo; a map with NaN or inf reads back as NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...config import DTYPES, MANTISSA_BITS
from ...errors import InputError
from ...records import StageInfo
from . import schema

LEVELS = 255  # uint8: q in 0..255


@dataclass(frozen=True)
class Encoding:
    """A file's storage choice, as its root attributes record it."""

    dtype: str = "float16"  # float16, float32 or uint8 (scaled by each map's min and max)
    keep_bits: int = 0  # mantissa bits kept (rounded to nearest); 0: all of them
    shuffle: bool = False  # HDF5's byte shuffle before compression (declared as its filter)
    pool: tuple[int, int] | None = None  # adaptive average pooling to at most (H, W); None: none

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def quantized(self) -> bool:
        return self.dtype == "uint8"

    def describe(self) -> str:
        """`uint8 (scale and offset per image and channel), pooled to at most 7x7, byte shuffle`."""
        parts = [f"{self.dtype} (scaled by each map's min and max)" if self.quantized else self.dtype]
        if self.keep_bits:
            parts.append(f"{self.keep_bits} mantissa bits kept")
        if self.pool:
            parts.append(f"pooled to at most {self.pool[0]}x{self.pool[1]}")
        if self.shuffle:
            parts.append("byte shuffle")
        return ", ".join(parts)

    def attrs(self) -> dict:
        """The root attributes that record it (absent ones mean the defaults of older files)."""
        out: dict = {schema.ATTR_DTYPE: self.dtype, schema.ATTR_KEEP_BITS: self.keep_bits}
        out[schema.ATTR_SHUFFLE] = self.shuffle
        if self.pool:
            out[schema.ATTR_POOL] = list(self.pool)
        return out


def encoding_of(attrs: Mapping) -> Encoding:
    """A file's `Encoding` from its root attributes (files before these options: plain float).
    InputError for values fmpipe never writes (a damaged or crafted file)."""
    dtype = schema.text(attrs.get(schema.ATTR_DTYPE, "float16"))
    try:
        keep_bits = int(attrs.get(schema.ATTR_KEEP_BITS, 0))
        pool = attrs.get(schema.ATTR_POOL)
        pool = None if pool is None else tuple(int(v) for v in np.asarray(pool).reshape(-1))
    except (TypeError, ValueError) as err:
        raise InputError(f"the file's storage attributes are malformed ({err}); fmpipe never writes that.") from None
    if dtype not in DTYPES or not 0 <= keep_bits <= MANTISSA_BITS.get(dtype, 0):
        raise InputError(f"the file's storage attributes (dtype {dtype!r}, keep_bits {keep_bits}) are not fmpipe's.")
    if pool is not None and (len(pool) != 2 or min(pool) < 1):
        raise InputError(f"the file's pool attribute {pool} is not two positive sizes.")
    return Encoding(dtype, keep_bits, bool(attrs.get(schema.ATTR_SHUFFLE, False)), pool)


def decode_maps(
    stored: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None, dtype: str, plane_axes: int = 2
) -> np.ndarray:
    """Stored maps as float32 values: the one decoding every reader uses.

    `stored` (..., C, H, W) as read from `data` (float16, float32 or uint8); `lo`, `hi` (..., C)
    float32 the same rows' and channels' `min` and `max` (needed for uint8 only), broadcast over
    the last `plane_axes` axes (2: H and W; 0 for single values). uint8 reads as
    lo + q * (hi - lo) / 255; NaN bounds (failed or unwritten rows, NaN maps) give NaN.
    """
    if dtype != "uint8":
        return np.asarray(stored, dtype=np.float32)
    tail = (1,) * plane_axes
    lo32 = np.asarray(lo, dtype=np.float32)
    lo32 = lo32.reshape(lo32.shape + tail)
    hi32 = np.asarray(hi, dtype=np.float32)
    step = (hi32.reshape(hi32.shape + tail) - lo32) / np.float32(LEVELS)
    with np.errstate(invalid="ignore"):
        return lo32 + np.asarray(stored).astype(np.float32) * step


class DecodedMaps:
    """A uint8 stage's `data` read as float32 values: `maps[row]`, `maps[row, c0:c1]` decode the
    stored q through the same rows' and channels' min and max. Otherwise like the h5py dataset it
    wraps (`stored`): shape, chunks, len; `dtype` is float32, what reads give."""

    def __init__(self, stored, lo, hi):
        self.stored, self.lo, self.hi = stored, lo, hi  # h5py datasets: (N, C, H, W) uint8, (N, C) float32

    dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored.shape

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self.stored.chunks

    @property
    def ndim(self) -> int:
        return self.stored.ndim

    @property
    def size(self) -> int:
        return self.stored.size

    def __len__(self) -> int:
        return len(self.stored)

    def __getattr__(self, name: str):  # id, is_virtual, name, attrs, ...: the stored dataset's
        return getattr(self.stored, name)

    def __getitem__(self, key) -> np.ndarray:
        key = _full_key(key if isinstance(key, tuple) else (key,), self.stored.ndim)
        q = self.stored[key]
        plane_axes = sum(1 for k in key[2:] if not isinstance(k, (int, np.integer)))
        return decode_maps(q, self.lo[key[:2]], self.hi[key[:2]], "uint8", plane_axes)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[()]
        return values if dtype is None else values.astype(dtype)


def _full_key(key: tuple, ndim: int) -> tuple:
    """An index for (N, C, H, W) with every axis named (an Ellipsis expanded, missing ones `:`)."""
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for maps of {ndim} axes: {key}")
    return key + (slice(None),) * (ndim - len(key))


def maps_reader(group, data=None):
    """What readers index for a stage or layer group's maps: its `data` dataset for float files
    (values as stored), a `DecodedMaps` for uint8 ones. `data`: that dataset already opened (with
    another chunk cache)."""
    data = group[schema.DATA] if data is None else data
    if data.dtype != np.uint8:
        return data
    return DecodedMaps(data, group[schema.STAT_MIN], group[schema.STAT_MAX])


def quantization_step(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """uint8: the largest error of a decoded value, (hi - lo) / 510, per (image, channel)."""
    return (np.asarray(hi, np.float64) - np.asarray(lo, np.float64)) / (2 * LEVELS)


def pooled_shape(height: int, width: int, pool: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) after `--pool`: each side at most the pool's (a smaller map stays as it is)."""
    if pool is None:
        return height, width
    return min(height, pool[0]), min(width, pool[1])


def pooled(info: StageInfo, pool: tuple[int, int] | None) -> StageInfo:
    """The stage or layer as stored with `--pool` (its map shape pooled; stride 0 once pooled:
    a pooled pixel covers a varying number of input pixels)."""
    height, width = pooled_shape(info.height, info.width, pool)
    if (height, width) == (info.height, info.width):
        return info
    return dataclasses.replace(info, height=height, width=width, stride=0)


def shuffle_bytes(raw: bytes | memoryview, itemsize: int) -> bytes:
    """HDF5's shuffle filter: byte j of every element together, for j = 0..itemsize-1 (a tail of
    fewer than itemsize bytes stays at the end, as HDF5 leaves it).

    Each plane is a shift of the little-endian words cast to uint8: 4x faster than a transposed
    copy (0.04 vs 0.16 ms a 512 KiB float16 chunk)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    whole = len(data) // itemsize * itemsize
    if itemsize <= 1 or whole == 0:
        return bytes(data)
    if itemsize not in (2, 4, 8):
        return data[:whole].reshape(-1, itemsize).T.tobytes() + data[whole:].tobytes()
    words = data[:whole].view(f"<u{itemsize}")
    planes = np.empty((itemsize, len(words)), dtype=np.uint8)
    for j in range(itemsize):
        np.right_shift(words, 8 * j, out=planes[j], casting="unsafe")  # the cast keeps the low byte
    return planes.tobytes() + data[whole:].tobytes()


def unshuffle_bytes(raw: bytes | memoryview, itemsize: int) -> bytes:
    """The inverse of `shuffle_bytes` (what HDF5's shuffle filter does on read)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    whole = len(data) // itemsize * itemsize
    if itemsize <= 1 or whole == 0:
        return bytes(data)
    if itemsize not in (2, 4, 8):
        return data[:whole].reshape(itemsize, -1).T.tobytes() + data[whole:].tobytes()
    planes = data[:whole].reshape(itemsize, -1)
    words = planes[0].astype(f"<u{itemsize}")
    for j in range(1, itemsize):
        words |= planes[j].astype(words.dtype) << np.array(8 * j, words.dtype)
    return words.tobytes() + data[whole:].tobytes()
