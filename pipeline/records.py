"""Records that cross from one part of the pipeline to another: a stage's shape and a batch's output.

Shared by extraction (which fills them), storage (which writes and reads them) and the faces; no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .groups import layer_group, stage_group


@dataclass(frozen=True)
class StageInfo:
    """One stored map: a model's declared stage, or a layer picked by name (`--layers`), with
    its module, channels, stride and per-image (C, H, W) at the run's size.

    Stages and layers are stored alike: stage i in `stages/<i>`, layer NAME in `layers/<NAME>`.
    """

    index: int  # the stage's index in the model's order; for a layer, its position in --layers
    module: str  # the module's name (for a layer: the name as given, `layer1.0.relu:2`)
    channels: int
    stride: int  # input pixels per map pixel (0: unknown, e.g. a vector)
    height: int
    width: int
    capture: str  # "forward_intermediates" or "forward_hook"
    layer: str | None = None  # the layer name as given to --layers; None for a declared stage

    @property
    def key(self) -> int | str:
        """What a batch's maps are keyed by: the stage index, or the layer name."""
        return self.index if self.layer is None else self.layer

    @property
    def group(self) -> str:
        """The HDF5 group of its maps: `stages/2` or `layers/layer3.1.conv2`."""
        return stage_group(self.index) if self.layer is None else layer_group(self.layer)

    @property
    def ref(self) -> int | str:
        """How commands name it: the stage index, or the layer name (`--stage 2`, `--layer NAME`)."""
        return self.key

    @property
    def folder(self) -> str:
        """Its render folder's name: `stage2`, or `layer-` and the name made safe for a path."""
        if self.layer is None:
            return f"stage{self.index}"
        return "layer-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.layer)

    @property
    def option(self) -> str:
        """The command-line option that picks it: `--stage 2` or `--layer layer3.1.conv2`."""
        return f"--stage {self.index}" if self.layer is None else f"--layer {self.layer}"

    @property
    def anchor(self) -> str:
        """A short id for pages and JSON, unique among stages and layers: `2` for a stage, else its folder."""
        return str(self.index) if self.layer is None else self.folder

    @property
    def label(self) -> str:
        """`stage 2` or `layer layer3.1.conv2`, for messages."""
        return f"stage {self.index}" if self.layer is None else f"layer {self.layer}"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image (C, H, W)."""
        return self.channels, self.height, self.width

    def nbytes(self, itemsize: int = 2) -> int:
        """Bytes per image at the given storage item size (2 for float16)."""
        return self.channels * self.height * self.width * itemsize


@dataclass
class BatchResult:
    """One batch's output, on the host. Arrays are aligned with `ok_rows`."""

    rows: np.ndarray  # (B,) int64 rows of the batch, failures included
    ok_rows: np.ndarray  # (B_ok,) int64
    orig_hw: np.ndarray  # (B, 2) int32
    failures: list[tuple[int, str]]
    data: dict[int | str, np.ndarray]  # StageInfo.key → (B_ok, C, H, W) storage dtype, C-contiguous
    stats: dict[int | str, np.ndarray]  # StageInfo.key → (3, B_ok, C) float32: min, max, mean
    source_sha256: np.ndarray | None = None  # (B,) S64 hex sha256 of each source file (b"" if unread)
    source_size: np.ndarray | None = None  # (B,) int64 bytes of each source file (-1 if unread)
    argmax: dict[int | str, np.ndarray] | None = None  # StageInfo.key → (B_ok, C) int32: y * W + x of each max
