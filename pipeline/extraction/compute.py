"""The device side of extraction: normalise, forward (optionally bf16 autocast), then inside the
tap's sink pooling (`--pool`), per-channel statistics and the storage encoding (float cast with
optional mantissa rounding, or uint8 scaled by each map's min and max), then the copy to the host
(asynchronous on CUDA): a GPU copies the stored bytes only. Also the value checks: NaN is
reported, float16 overflow is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import RunFailure
from ..records import BatchResult
from ..storage.format.encoding import LEVELS, Encoding
from .loading import Batch, normalize

log = logging.getLogger(__name__)

FLOAT16_MAX = 65504.0


@dataclass
class Staged:
    """A computed batch whose maps are on (or on their way to) the host."""

    batch: Batch
    data: dict[int, torch.Tensor]  # stage → (B_ok, C, H, W) stored values (float16/float32/uint8), on the host
    stats: dict[int, torch.Tensor]  # stage → (3, B_ok, C) float32 min, max, mean, on the host
    argmax: dict[int, torch.Tensor]  # stage → (B_ok, C) int32: y * W + x of each map's maximum, on the host
    copied: torch.cuda.Event | None = None  # set while an asynchronous copy is in flight

    def result(self) -> BatchResult:
        if self.copied is not None:
            self.copied.synchronize()
        b = self.batch
        data = {i: t.numpy() for i, t in self.data.items()}
        stats = {i: s.numpy() for i, s in self.stats.items()}
        argmax = {i: a.numpy() for i, a in self.argmax.items()}
        return BatchResult(
            b.rows, b.ok_rows, b.orig_hw, b.failures, data, stats, b.source_sha256, b.source_size, argmax
        )


class Forward:
    """Runs the model on one batch: normalise, forward (optionally bf16 autocast), then pooling,
    per-channel stats and the storage encoding on the device, then the copy to the host.

    Stats and the encoding happen inside the tap's sink, before any later in-place op of the
    model can touch the captured tensor. On CUDA the copy runs on its own stream into
    pinned memory and does not block the next batch.
    """

    def __init__(self, tap, model, device: torch.device, encoding: Encoding, amp: bool):
        self.tap, self.model, self.device, self.encoding = tap, model, device, encoding
        self.amp = amp and device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, batch: Batch) -> Staged:
        data: dict[int, torch.Tensor] = {}
        stats: dict[int, torch.Tensor] = {}
        argmax: dict[int, torch.Tensor] = {}
        if not len(batch.ok_rows):
            return Staged(batch, data, stats, argmax)

        def sink(index: int, tensor: torch.Tensor) -> None:
            data[index], stats[index], argmax[index] = encode(tensor.detach(), self.encoding)

        with torch.inference_mode():
            x = normalize(batch.pixels.to(self.device, non_blocking=True), self.model.mean, self.model.std)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                self.tap(x, sink)
            if self.stream is None:
                return Staged(batch, data, stats, argmax)
            return self._copy_async(batch, data, stats, argmax)

    def _copy_async(self, batch: Batch, data: dict, stats: dict, argmax: dict) -> Staged:
        computed = torch.cuda.Event()
        computed.record()
        host_data: dict[int, torch.Tensor] = {}
        host_stats: dict[int, torch.Tensor] = {}
        host_argmax: dict[int, torch.Tensor] = {}
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(computed)
            for source, target in ((data, host_data), (stats, host_stats), (argmax, host_argmax)):
                for index, t in source.items():
                    target[index] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                    target[index].copy_(t, non_blocking=True)
                    t.record_stream(self.stream)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        return Staged(batch, host_data, host_stats, host_argmax, copied)


def encode(t: torch.Tensor, encoding: Encoding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) activations → (stored maps, (3, B, C) float32 min, max, mean, (B, C) int32
    y * W + x of each map's maximum, where dataset examples crop), on the device.

    The statistics describe the maps as stored before rounding: pooled first when `--pool` asks.
    """
    if encoding.pool is not None and (t.shape[2] > encoding.pool[0] or t.shape[3] > encoding.pool[1]):
        t = F.adaptive_avg_pool2d(t.float(), (min(t.shape[2], encoding.pool[0]), min(t.shape[3], encoding.pool[1])))
    flat = t.float().flatten(2)  # (B, C, H*W)
    # amin, and max with its indices in one pass (argmax is max's second value, the first maximum):
    # on the CPU the fused aminmax measured 9x slower, and amax + argmax 1.3-6x slower than max.
    lo = flat.amin(dim=2)
    hi, peaks = flat.max(dim=2)
    stats = torch.stack([lo, hi, flat.mean(dim=2)])
    peaks = peaks.to(torch.int32)
    if encoding.quantized:
        return quantize(flat, lo, hi).view(t.shape), stats, peaks
    dtype = getattr(torch, encoding.dtype)
    if encoding.keep_bits:
        return round_mantissa(t, encoding.keep_bits, dtype), stats, peaks
    return t.to(dtype, memory_format=torch.contiguous_format, copy=True), stats, peaks


def quantize(flat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, C, L) float32 → uint8 q = round((v - lo) / (hi - lo) * 255) per (image, channel), as
    v * s - lo * s in one multiply-add pass (1.5x faster on a CPU than subtracting first).

    A constant map (hi == lo) gives q = 0; a map with NaN or inf gives 0 too (its bounds are not
    finite, so it reads back as NaN). v lies in [lo, hi], so q needs no clamp beyond rounding."""
    span = hi - lo
    scale = torch.where(span > 0, LEVELS / span, torch.zeros_like(span))
    # The offsets are laid out first so that only the scale is broadcast: the multiply-add then
    # runs vectorised on a CPU (with both broadcast it ran element by element, 1.4-2x slower on
    # large maps), with the same single rounding and the layout of `flat`.
    q = torch.empty_like(flat).copy_((-lo * scale)[..., None].expand_as(flat))
    q.addcmul_(flat, scale[..., None])
    return q.round_().nan_to_num_(nan=0.0, posinf=float(LEVELS), neginf=0.0).to(torch.uint8)


# Storage dtype → (its mantissa bits, the float type the rounding runs in, that type's significand
# bits): wide enough that no finite value overflows when scaled by 2^(significand - 1 - keep).
_SPLIT = {torch.float16: (10, torch.float32, 24), torch.float32: (23, torch.float64, 53)}


def round_mantissa(x: torch.Tensor, keep: int, dtype: torch.dtype) -> torch.Tensor:
    """`x` (activations) as `dtype` (float16/float32) rounded to `keep` mantissa bits, to nearest
    (ties to even), in one rounding from `x`: Veltkamp's split, three float operations (faster on
    a CPU than bit arithmetic). Zeros and signs are kept; inf and NaN, and a value that would
    round up to inf, are stored as the plain cast stores them."""
    mantissa, wide, significand = _SPLIT[dtype]
    plain = x.to(dtype, memory_format=torch.contiguous_format, copy=True)
    if keep >= mantissa:
        return plain
    w = x.to(wide)
    scaled = w * (2.0 ** (significand - 1 - keep) + 1)
    rounded = (scaled - (scaled - w)).to(dtype, memory_format=torch.contiguous_format)
    return torch.where(torch.isfinite(rounded), rounded, plain)


def check_values(index: int | str, stats: np.ndarray, dtype: str, keys, ok_rows, summary) -> None:
    """Report NaN maps; refuse float16 overflow, which would be stored as inf. `index`: a stage's
    index or a layer's name."""
    label = f"stage {index}" if isinstance(index, int) else f"layer {index}"
    bad = ~np.isfinite(stats[2]) if dtype == "uint8" else np.isnan(stats[2])  # uint8 has no inf: NaN maps
    nan_rows = np.flatnonzero(bad.any(axis=1))
    if len(nan_rows) and index not in summary.nan_stages:
        summary.nan_stages.append(index)
        first = keys[ok_rows[nan_rows[0]]]
        what = (
            "NaN or inf activations (first in %s); uint8 stores those maps as NaN"
            if dtype == "uint8"
            else ("NaN activations (first in %s); they are stored as NaN")
        )
        log.warning("%s has " + what, label, first)
    if dtype != "float16":
        return
    peak = np.nan_to_num(np.maximum(np.abs(stats[0]), np.abs(stats[1])), nan=0.0)
    over = np.flatnonzero(peak.max(axis=1) > FLOAT16_MAX)
    if len(over):
        b = over[0]
        raise RunFailure(
            f"{label} overflows float16 for {keys[ok_rows[b]]}: |activation| reaches "
            f"{float(peak[b].max()):.4g} > {FLOAT16_MAX:.0f}, which float16 would store as "
            "inf. Rerun with --dtype float32 (or uint8: scaled per map) --overwrite, or select other --stages/--layers."
        )
