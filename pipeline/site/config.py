"""`GalleryConfig`: what `fmpipe gallery` (and `render --html`) needs; light, for the CLI's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..rendering.config import default_out_dir

PER_PAGE = 100
THUMB_SIDE = 240  # longest side of a source thumbnail, pixels


@dataclass(frozen=True)
class GalleryConfig:
    """What `fmpipe gallery` (or `fmpipe render --html`) needs."""

    path: str
    out: str | None = None  # the render folder; default: FILE-render/ beside the file, as render's
    images_root: str | None = None  # where the source images are now (default: as recorded)
    per_page: int = PER_PAGE
    thumb_side: int = THUMB_SIDE
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.per_page < 1:
            raise UsageError(f"--per-page must be at least 1, got {self.per_page}.")
        if self.thumb_side < 16:
            raise UsageError(f"--thumb-side must be at least 16 pixels, got {self.thumb_side}.")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else default_out_dir(self.path)
