"""A decoded chunk against the statistics stored beside it (`stages/<i>/min,max,mean`). No torch.

The statistics were computed on the device from the float32 activations before the storage
cast. Rounding to float16 is monotonic, so a channel's stored min and max are the float16
data's min and max rounded back: they agree within half a float16 ulp. Each value moves by at
most half an ulp (2^-11 of its magnitude), so the means agree within 2^-11 of the channel's
largest |x|; MEAN_TOLERANCE allows twice that, for float32 summation noise on the device.

Other encodings widen the same rules: `--keep-bits N` rounds to half an ulp of N mantissa bits
(min, max and mean), and uint8 maps are decoded through their own min and max first (so min and
max agree within float32 rounding, the mean within the quantisation step (hi - lo) / 510).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...config import MANTISSA_BITS
from ..format import schema
from ..format.encoding import decode_maps, quantization_step
from .chunks import ChunkError, RawSource, decode, read_raw

MEAN_TOLERANCE = 2.0**-10  # of the channel's largest |x|
SUBNORMAL = 2.0**-24  # float16's smallest step: rounding near zero is absolute, not relative
TINY = 2.0**-40  # min and max: half an ulp plus this
FLOAT32_NOISE = 2.0**-20  # uint8: decoding lo + q * (hi - lo) / 255 in float32, of the channel's largest |x|
_F16_FINITE = 65504.0


def max_stored_bytes(nbytes: int) -> int:
    """The most a chunk of `nbytes` can take stored: zstd's and zlib's worst case is under 1 % over
    the input plus a header, Fletcher-32 adds 4 bytes."""
    return nbytes + nbytes // 64 + 4096


@dataclass(frozen=True)
class ChunkSpec:
    """What checking a chunk of one stage needs: its (1, k, H, W) shape, dtype, checksum rule."""

    dtype: np.dtype  # float16, float32 or uint8
    k: int  # channels per chunk (the stage's last chunk is padded to k)
    channels: int  # C
    hw: int  # H * W
    checksum_required: bool  # format v2: a chunk without a checksum is a problem
    keep_bits: int = 0  # --keep-bits the maps were rounded to (0: none)

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of one chunk, padding included."""
        return self.k * self.hw * self.dtype.itemsize


@dataclass(frozen=True)
class ChunkRef:
    """Where one stored chunk lies (file, byte range, filter mask), its first channel and the
    stored statistics of its n real channels (the rest of the chunk is padding)."""

    source: RawSource
    offset: int
    size: int
    mask: int
    c0: int
    stored: np.ndarray  # (3, n) float32 min, max, mean


def check_chunks(spec: ChunkSpec, refs: list[ChunkRef]) -> list[tuple[int, str | None]]:
    """(bytes checked, why it is wrong or None) per chunk; runs in a worker thread.

    Small chunks come several to a job: their statistics are computed in one go, so numpy's
    per-call overhead is paid once (a 7x7 stage's chunk cost 0.13 ms alone).
    """
    results: list[tuple[int, str | None]] = []
    blocks: list[np.ndarray] = []
    for ref in refs:
        n = ref.stored.shape[1]
        try:
            if ref.size > max_stored_bytes(spec.nbytes):  # a damaged index may claim any size: never read it
                raise ChunkError(f"claims {ref.size} stored bytes for {spec.nbytes} bytes of maps")
            raw = read_raw(ref.source, ref.offset, ref.size)
            data = decode(raw, ref.source.kind, ref.mask, spec.nbytes, spec.checksum_required, spec.dtype.itemsize)
        except ChunkError as err:
            results.append((n * spec.hw * spec.dtype.itemsize, str(err)))
            continue
        chunk = np.frombuffer(data, dtype=spec.dtype).reshape(spec.k, 1, spec.hw)[:n]
        if spec.dtype == np.uint8:  # decoded through the stored min and max; floats are compared as stored
            blocks.append(decode_maps(chunk, ref.stored[0], ref.stored[1], "uint8")[:, 0])
        else:
            blocks.append(chunk[:, 0])
        results.append((chunk.nbytes, None))
    if not blocks:
        return results
    decoded = [ref for ref, (_, why) in zip(refs, results, strict=True) if why is None]
    values = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    stored = np.concatenate([ref.stored for ref in decoded], axis=1)
    found = channel_stats(values)
    bad = mismatches(found, stored, spec.dtype, spec.keep_bits)
    start, b = 0, 0
    for i, (nbytes, why) in enumerate(results):
        if why is None:
            n = decoded[b].stored.shape[1]
            results[i] = (
                nbytes,
                describe(
                    bad[:, start : start + n], found[:, start : start + n], stored[:, start : start + n], decoded[b].c0
                ),
            )
            start, b = start + n, b + 1
    return results


def stats_mismatch(values: np.ndarray, stored: np.ndarray, c0: int = 0, keep_bits: int = 0) -> str | None:
    """Why the stored statistics (3, n) float32 do not describe `values` (n, H*W) float16 or
    float32 (decoded), or None. `c0` is the first channel's index, for the message."""
    found = channel_stats(values)
    return describe(mismatches(found, stored, values.dtype, keep_bits), found, stored, c0)


def mismatches(found: np.ndarray, stored: np.ndarray, dtype: np.dtype, keep_bits: int = 0) -> np.ndarray:
    """(3, n) bool: which stored min, max, mean (float32) disagree with the data's `found` ones.

    The statistics were computed from the float32 activations before the storage cast, so
    min and max may differ from the data's by half a storage ulp (rounding is monotonic);
    the mean by at most half an ulp of the channel's largest |x| (MEAN_TOLERANCE: twice that).
    `keep_bits` widens the ulp to that many mantissa bits; uint8 (`dtype`) data was decoded
    through the stored min and max, so those agree within float32 rounding.
    """
    peak = np.maximum(np.abs(found[0]), np.abs(found[1]))
    with np.errstate(invalid="ignore", over="ignore"):
        if np.dtype(dtype) == np.uint8:
            noise = FLOAT32_NOISE * peak + TINY
            step = quantization_step(stored[0], stored[1])
            tolerance = np.stack([noise, noise, step + noise + SUBNORMAL])
        else:
            ulp = np.spacing(np.abs(found[:2]).astype(dtype)).astype(np.float64)
            relative = MEAN_TOLERANCE
            if keep_bits:
                coarser = 2.0 ** (MANTISSA_BITS[np.dtype(dtype).name] - keep_bits)
                ulp, relative = ulp * (1 + coarser), max(MEAN_TOLERANCE, 2.0**-keep_bits)
            tolerance = np.concatenate([0.5 * ulp + TINY, (relative * peak + SUBNORMAL)[None]])
        stored64 = stored.astype(np.float64)
        good = (stored64 == found) | (np.isnan(stored64) & np.isnan(found)) | (np.abs(stored64 - found) <= tolerance)
        if np.dtype(dtype) == np.uint8:  # a map with inf has no finite scale: it is stored as NaN, by design
            good |= (~np.isfinite(stored64[:2]).all(axis=0) & np.isnan(found[0]))[None]
    return ~good


def describe(bad: np.ndarray, found: np.ndarray, stored: np.ndarray, c0: int) -> str | None:
    """The message for one chunk's (3, n) `bad` mask, or None when nothing is bad."""
    where = np.argwhere(bad)
    if not len(where):
        return None
    which, channel = where[0]
    return (
        f"disagrees with its stored statistics in {len(set(where[:, 1].tolist()))} channels (first: channel "
        f"{c0 + channel}, {schema.STAT_NAMES[which]} stored {stored[which, channel]:.6g}, in the data "
        f"{found[which, channel]:.6g})"
    )


def channel_stats(values: np.ndarray) -> np.ndarray:
    """(3, n) float64 min, max, mean of `values` (n, H*W) float16/float32, NaN where a channel has NaN."""
    with np.errstate(invalid="ignore", over="ignore"):
        found = _reduce(as_float32(values))
        if values.dtype == np.float16 and (np.abs(found[:2]) > _F16_FINITE).any():  # inf/NaN: the exact cast
            found = _reduce(values.astype(np.float32))
    return found


def _reduce(floats: np.ndarray) -> np.ndarray:
    # numpy sums a contiguous row pairwise: float32 error ~log2(H*W) ulps of the sum of |x|, far inside
    # MEAN_TOLERANCE, and 1.8x faster than accumulating in float64.
    found = np.stack([floats.min(1), floats.max(1), floats.sum(1)]).astype(np.float64)
    found[2] /= floats.shape[1]
    return found


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
