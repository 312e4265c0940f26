"""Decodes one image file into an RGB uint8 array of the target size (no torch).

Every mode Pillow opens is converted to 8-bit RGB the same way: EXIF orientation
applied, 16-bit scaled (not truncated), alpha composited onto white, CMYK/YCCK via
Pillow's converter, palette expanded, GIFs and other multi-frame files use frame 0.

The file is read once into memory: its sha256 and size are taken from those bytes (the
digest pins each stored row to the exact file it came from) and Pillow decodes them.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .sources import SpecialFileError, open_regular

# Pillow's own bomb check warns at MAX_IMAGE_PIXELS; we refuse explicitly instead.
DEFAULT_MAX_PIXELS = 178_956_970
# A file is read whole before decoding; larger ones are refused rather than held in memory.
MAX_FILE_BYTES = 2 * 1024**3
READ_BLOCK = 1 << 20  # bytes per read(2) beyond what the file's size says
BACKGROUND_HASH_BYTES = 256 * 1024  # larger files are hashed in a thread while they are decoded

_RESAMPLE = Image.Resampling.BICUBIC
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DecodeError(Exception):
    """One image that cannot be used; its message becomes the failure reason."""


class SourceMissing(DecodeError):
    """The image's file is not there (moved, deleted, a broken symlink): callers tell it by type."""


@dataclass(frozen=True)
class Source:
    """A source file's bytes and their identity. A large file's sha256 is computed in a thread
    while it is decoded (hashlib and Pillow both release the GIL), so it costs no wall time
    where a core is free; `sha256` waits for it."""

    data: bytes
    digest: str | Future  # 64 hex digits, or their computation in progress
    size: int  # bytes

    @property
    def sha256(self) -> str:
        return self.digest if isinstance(self.digest, str) else self.digest.result()


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # (H, W, 3) uint8 at the target size
    orig_hw: tuple[int, int]  # height, width after EXIF rotation, before resizing


def read_source(path: str | os.PathLike) -> Source:
    """The bytes of `path` with their sha256; DecodeError when the file cannot be read.

    Only regular files are opened (a FIFO, device or socket is a failure, never read), and the
    size cap counts the bytes actually read, not what `st_size` says.
    """
    try:
        fd = open_regular(path)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            data = _read_capped(handle, os.fstat(handle.fileno()).st_size)
    except SpecialFileError as err:
        raise DecodeError(str(err)) from None
    except PermissionError:
        raise DecodeError("permission denied reading the file") from None
    except (FileNotFoundError, NotADirectoryError):
        raise SourceMissing("file not found (moved, deleted, or a broken symlink)") from None
    except IsADirectoryError:
        raise DecodeError("a folder, not an image file") from None
    except OSError as err:
        raise DecodeError(f"cannot read: {err}") from None
    if len(data) < BACKGROUND_HASH_BYTES:  # a thread's handoff costs more than hashing a small file
        return Source(data, _sha256(data), len(data))
    return Source(data, _hasher().submit(_sha256, data), len(data))


def _read_capped(handle: io.RawIOBase, size_hint: int) -> bytes:
    """Every byte of `handle`, or DecodeError once more than MAX_FILE_BYTES were read."""
    limit = MAX_FILE_BYTES
    if size_hint > limit:
        raise DecodeError(_too_large(size_hint))
    parts, total = [], 0
    want = max(size_hint + 1, READ_BLOCK)  # a file of the size it claims: one read, then the end
    while block := handle.read(min(want, limit + 1 - total)):
        parts.append(block)
        total += len(block)
        if total > limit:
            raise DecodeError(_too_large(total, more=True))
        want = READ_BLOCK
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(size: int, more: bool = False) -> str:
    got = f"more than {size / 1e9:.1f} GB read" if more else f"{size / 1e9:.1f} GB"
    return f"file too large to decode ({got} > {MAX_FILE_BYTES / 1e9:.1f} GB)"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_HASHERS: dict[int, ThreadPoolExecutor] = {}  # by process id: a decode worker forked from a parent gets its own


def _hasher() -> ThreadPoolExecutor:
    pool = _HASHERS.get(os.getpid())
    if pool is None:
        pool = _HASHERS[os.getpid()] = ThreadPoolExecutor(1, thread_name_prefix="sha256")
    return pool


def decode(path: str | os.PathLike, size_hw: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode `path` and resize it to exactly `size_hw` (H, W); raise DecodeError on failure."""
    return decode_bytes(read_source(path).data, size_hw, max_pixels)


def decode_bytes(data: bytes, size_hw: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode an image file's bytes and resize to exactly `size_hw` (H, W); DecodeError on failure."""
    try:
        if not data:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_pixels(img, max_pixels)
                orig_hw = _upright_hw(img)
                if img.format == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target:
                    # much cheaper than a full decode followed by a large downscale.
                    side = max(size_hw)
                    img.draft(img.mode, (side, side))
                rgb = _to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not an image Pillow can identify (wrong content or extension)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(f"refused as a decompression bomb: {err}") from None
    except OSError as err:
        raise DecodeError(f"cannot decode: {err}") from None
    except (ValueError, SyntaxError, EOFError) as err:  # Pillow raises these on corrupt data
        raise DecodeError(f"corrupt image data: {err}") from None
    if (rgb.height, rgb.width) != tuple(size_hw):
        rgb = rgb.resize((size_hw[1], size_hw[0]), _RESAMPLE)
    return Decoded(np.array(rgb, dtype=np.uint8), orig_hw)


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise DecodeError(
            f"refused as a decompression bomb: {img.width}x{img.height} = {pixels} pixels "
            f"exceeds the limit of {max_pixels}"
        )


def _upright_hw(img: Image.Image) -> tuple[int, int]:
    """Height and width as displayed: EXIF orientations 5-8 swap the axes."""
    orientation = img.getexif().get(0x0112, 1)
    return (img.width, img.height) if orientation in (5, 6, 7, 8) else (img.height, img.width)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB copy of frame 0, upright, with alpha composited onto white."""
    img.seek(0)
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or wide.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(wide * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")
