"""A small PNG encoder tuned for feature maps: zlib level 1 and the "Up" row filter.

PNG encoding is most of render's cost, so the choices are deliberate (measured on smooth
200×300 maps, 2-core VM): indexed colour (one byte per pixel, the colour table goes in
PLTE) instead of RGB cuts the bytes to compress by 3×; the Up filter (row minus the row
above) makes zlib level 1 both faster and 25 % smaller than no filter (0.54 ms, 23 KB vs
0.58 ms, 31 KB per map); higher levels cost 1.5–3× for under 10 % smaller files. Pillow's
PNG writer at the same level took 0.69 ms for the indexed map and 1.07 ms for grey.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

LEVEL = 1  # zlib level used for every PNG fmpipe writes
SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2
_COLOR_INDEXED = 3
_COLOR_RGB = 2


def encode_indexed(indices: np.ndarray, palette: np.ndarray, level: int = LEVEL, text: str | None = None) -> bytes:
    """PNG bytes of an (H, W) uint8 index image with a (256, 3) uint8 RGB palette."""
    if indices.dtype != np.uint8 or indices.ndim != 2:
        raise ValueError(f"expected (H, W) uint8 indices, got {indices.shape} {indices.dtype}")
    height, width = indices.shape
    plte = np.ascontiguousarray(palette, dtype=np.uint8).tobytes()
    return _assemble(width, height, _COLOR_INDEXED, indices, level, text, plte)


def encode_rgb(pixels: np.ndarray, level: int = LEVEL, text: str | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    return _assemble(width, height, _COLOR_RGB, pixels.reshape(height, width * 3), level, text, None)


def _assemble(
    width: int, height: int, color: int, rows: np.ndarray, level: int, text: str | None, plte: bytes | None
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    parts = [SIGNATURE, _chunk(b"IHDR", header)]
    if plte is not None:
        parts.append(_chunk(b"PLTE", plte))
    if text:
        parts.append(_chunk(b"tEXt", b"Description\0" + text.encode("latin-1", "replace")))
    parts.append(_chunk(b"IDAT", zlib.compress(_filter_up(rows), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def _filter_up(rows: np.ndarray) -> np.ndarray:
    """(H, B) uint8 scanlines → filtered bytes: a filter-type byte, then row − row above (mod 256)."""
    height, nbytes = rows.shape
    out = np.empty((height, nbytes + 1), dtype=np.uint8)
    out[:, 0] = _FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps, as PNG wants
    return out  # C-contiguous: zlib reads it through the buffer protocol, no copy


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
