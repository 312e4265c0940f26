"""A viewer request's parts: its checked query parameters, and the response a handler returns.

Every query value is read once and checked; a bad one is an `HttpError` 400. No torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from ..errors import UsageError
from .tiles import TileOptions

MAX_QUERY_TEXT = 200
MAX_FIELDS = 20
_INT = re.compile(r"\d{1,9}")
HTML, PNG, JPEG, JSON = "text/html; charset=utf-8", "image/png", "image/jpeg", "application/json"
NPY, TEXT = "application/octet-stream", "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    type: str
    body: bytes
    cache: str = "no-store"
    download: str = ""  # a file name: sent as an attachment with this name


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Query:
    """A request's query parameters, each read once and checked; a bad one is HttpError 400."""

    def __init__(self, text: str):
        try:
            self.values = parse_qs(text, keep_blank_values=True, max_num_fields=MAX_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError) as err:
            raise HttpError(400, f"malformed query string ({err})") from None

    def _one(self, name: str) -> str | None:
        values = self.values.get(name)
        if values is None:
            return None
        if len(values) != 1:
            raise HttpError(400, f"{name} is given {len(values)} times; give it once")
        return values[0]

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int:
        raw = self._one(name)
        if raw is None:
            if default is None:
                raise HttpError(400, f"{name} is required")
            return default
        if not _INT.fullmatch(raw) or not lo <= int(raw) <= hi:
            raise HttpError(400, f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
        return int(raw)

    def choice(self, name: str, default: str, values: tuple[str, ...]) -> str:
        raw = self._one(name)
        if raw is None:
            return default
        if raw not in values:
            raise HttpError(400, f"{name} must be one of {', '.join(values)}, got {raw[:40]!r}")
        return raw

    def map(self) -> int | str:
        """`stage=S` (an index) or `layer=NAME`: the stored map an API call is about."""
        layer = self._one("layer")
        if layer is not None:
            if not layer or len(layer) > MAX_QUERY_TEXT:
                raise HttpError(400, "layer must be a stored layer's name")
            return layer
        return self.integer("stage", None, 0, 10**9)

    def integers(self, name: str, most: int, hi: int) -> list[int]:
        """A comma-separated list of 1 to `most` distinct integers from 0 to `hi` (`rows=2,5,7`)."""
        raw = self._one(name)
        if raw is None:
            raise HttpError(400, f"{name} is required (comma-separated numbers)")
        parts = raw.split(",")
        if not 1 <= len(parts) <= most or not all(_INT.fullmatch(p) and int(p) <= hi for p in parts):
            raise HttpError(
                400, f"{name} must be 1 to {most} integers from 0 to {hi}, comma-separated, got {raw[:40]!r}"
            )
        values = [int(p) for p in parts]
        if len(set(values)) != len(values):
            raise HttpError(400, f"{name} lists a number twice: {raw[:40]!r}")
        return values

    def text(self, name: str) -> str:
        raw = self._one(name) or ""
        if len(raw) > MAX_QUERY_TEXT:
            raise HttpError(400, f"{name} is longer than {MAX_QUERY_TEXT} characters")
        return raw

    def tile_options(self, scale: bool = True, normalize: str = TileOptions.normalize) -> TileOptions:
        try:
            return TileOptions(
                cmap=self._one("cmap") or TileOptions.cmap,
                normalize=self._one("normalize") or normalize,
                scale=self.integer("scale", 0, 0, 10**9) if scale else 0,
            )
        except UsageError as err:
            raise HttpError(400, str(err)) from None
