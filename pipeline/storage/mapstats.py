"""A decoded chunk against the statistics stored beside it (`stages/<i>/min,max,mean`). No torch.

The statistics were computed on the device from the float32 activations before the storage
cast. Rounding to float16 is monotonic, so a channel's stored min and max are the float16
data's min and max rounded back: they agree within half a float16 ulp. Each value moves by at
most half an ulp (2^-11 of its magnitude), so the means agree within 2^-11 of the channel's
largest |x|; MEAN_TOLERANCE allows twice that, for float32 summation noise on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import schema
from .chunks import ChunkError, RawSource, decode, read_raw

MEAN_TOLERANCE = 2.0**-10  # of the channel's largest |x|
SUBNORMAL = 2.0**-24  # float16's smallest step: rounding near zero is absolute, not relative
TINY = 2.0**-40  # min and max: half an ulp plus this
_F16_FINITE = 65504.0


@dataclass(frozen=True)
class ChunkSpec:
    """What checking a chunk of one stage needs: its (1, k, H, W) shape, dtype, checksum rule."""

    dtype: np.dtype  # float16 or float32
    k: int  # channels per chunk (the stage's last chunk is padded to k)
    channels: int  # C
    hw: int  # H * W
    checksum_required: bool  # format v2: a chunk without a checksum is a problem

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of one chunk, padding included."""
        return self.k * self.hw * self.dtype.itemsize


@dataclass(frozen=True)
class ChunkRef:
    """Where one stored chunk lies: its file, byte range, filter mask and first channel."""

    source: RawSource
    offset: int
    size: int
    mask: int
    c0: int


def check_chunk(spec: ChunkSpec, ref: ChunkRef, stored: np.ndarray) -> tuple[int, str | None]:
    """(bytes checked, why it is wrong or None) for one chunk; runs in a worker thread.

    `stored`: (3, n) float32 min, max, mean of the chunk's n real channels (the rest is padding).
    """
    n = stored.shape[1]
    try:
        data = decode(
            read_raw(ref.source, ref.offset, ref.size), ref.source.kind, ref.mask, spec.nbytes, spec.checksum_required
        )
    except ChunkError as err:
        return n * spec.hw * spec.dtype.itemsize, str(err)
    values = np.frombuffer(data, dtype=spec.dtype).reshape(spec.k, spec.hw)[:n]
    return values.nbytes, stats_mismatch(values, stored, ref.c0)


def stats_mismatch(values: np.ndarray, stored: np.ndarray, c0: int = 0) -> str | None:
    """Why the stored statistics (3, n) float32 do not describe `values` (n, H*W), or None.

    `c0` is the first channel's index, for the message.

    The statistics were computed from the float32 activations before the storage cast, so
    min and max may differ from the data's by half a storage ulp (rounding is monotonic);
    the mean by at most half an ulp of the channel's largest |x| (MEAN_TOLERANCE: twice that).
    """
    found = channel_stats(values)
    peak = np.maximum(np.abs(found[0]), np.abs(found[1]))
    with np.errstate(invalid="ignore", over="ignore"):
        ulp = np.spacing(np.abs(found[:2]).astype(values.dtype)).astype(np.float64)
        tolerance = np.concatenate([0.5 * ulp + TINY, (MEAN_TOLERANCE * peak + SUBNORMAL)[None]])
        stored64 = stored.astype(np.float64)
        good = (stored64 == found) | (np.isnan(stored64) & np.isnan(found)) | (np.abs(stored64 - found) <= tolerance)
    bad = np.argwhere(~good)
    if not len(bad):
        return None
    which, channel = bad[0]
    name = schema.STAT_NAMES[which]
    return (
        f"disagrees with its stored statistics in {len(set(bad[:, 1].tolist()))} channels (first: channel "
        f"{c0 + channel}, {name} stored {stored[which, channel]:.6g}, in the data {found[which, channel]:.6g})"
    )


def channel_stats(values: np.ndarray) -> np.ndarray:
    """(3, n) float64 min, max, mean of `values` (n, H*W) float16/float32, NaN where a channel has NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        found = _reduce(as_float32(values))
        if values.dtype == np.float16 and (np.abs(found[:2]) > _F16_FINITE).any():  # inf/NaN: the exact cast
            found = _reduce(values.astype(np.float32))
    return found


def _reduce(floats: np.ndarray) -> np.ndarray:
    return np.stack([floats.min(1), floats.max(1), floats.sum(1, dtype=np.float64) / floats.shape[1]])


def as_float32(values: np.ndarray) -> np.ndarray:
    """float16 → float32 by bit arithmetic, in 4 passes: numpy's cast is 5× slower on zeros (measured
    1.1 vs 0.2 ms a 512 KiB chunk). Exact for finite values (subnormals too); inf and NaN come out as
    |x| ≥ 65536 (callers fall back to the cast)."""
    if values.dtype != np.float16:
        return values
    bits = values.view(np.int16).astype(np.int32)  # sign-extended: a negative value sets bits 31..15
    bits <<= 13  # the 5-bit exponent and 10-bit mantissa into float32's places; bits 31..28 = sign
    bits &= _SIGN_EXPONENT_LOW  # keep the sign in bit 31, clear bits 30..28 (the exponent's high bits)
    out = bits.view(np.float32)
    out *= np.float32(2.0**112)  # rebias the exponent 15 → 127 (also scales subnormals exactly)
    return out


_SIGN_EXPONENT_LOW = np.uint32(0x8FFFFFFF).view(np.int32)
