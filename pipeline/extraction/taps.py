"""Turns a model and the requested stages into `StageInfo`s and a capture callable.

A stage is what timm declares in `feature_info` (module, channels, stride), captured
with timm's `forward_intermediates` (transformer tokens come back as (N, C, H, W)).
Other models (torchvision, your own) are tapped with forward hooks: on the modules
their `feature_info` names, or else, discovered by a probe, on the last shallow module
before each change of spatial size. Declared shapes are always checked against a real
forward pass (the probe); the probe wins and a drift is logged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import resolve_stage_indices
from ..errors import ModelError
from ..records import StageInfo
from . import layers as layer_taps
from .models import ResolvedModel, resolve

log = logging.getLogger(__name__)

Sink = Callable[[int | str, torch.Tensor], None]


class Tap:
    """Calls `sink(key, tensor)` for each wanted stage (key: its index) and layer (key: its name)
    during one forward pass (two when timm's `forward_intermediates` takes the stages and layers
    are asked for too).

    The sink runs while the tensor is fresh: before any later in-place op can change it.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Sequence[str],
        wanted: Sequence[int],
        use_intermediates: bool,
        layers: Sequence[layer_taps.Point] = (),
    ):
        self.module, self.names, self.wanted = module, list(names), sorted(wanted)
        self.use_intermediates, self.layers = use_intermediates, list(layers)

    @property
    def infos(self) -> list[StageInfo]:
        """The layers' `StageInfo`s (the stages' come from `build`)."""
        return [point.info for point in self.layers]

    def __call__(self, pixels: torch.Tensor, sink: Sink) -> None:
        if self.wanted and self.use_intermediates:
            outs = self.module.forward_intermediates(
                pixels, indices=self.wanted, intermediates_only=True, stop_early=True
            )
            for index, tensor in zip(self.wanted, outs, strict=True):
                sink(index, tensor)
        hooked = [] if self.use_intermediates else [(self.names[i], i, _first_tensor) for i in self.wanted]
        if hooked or self.layers:
            layer_taps.capture(self.module, pixels, self.layers, sink, hooked)


def _first_tensor(out):
    """A stage module's map: its output, or the first element of a tuple output."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _declared(model: ResolvedModel) -> list[dict] | None:
    info = getattr(model.module, "feature_info", None)
    if info is None:
        return None
    if hasattr(info, "info"):  # timm FeatureInfo object
        info = info.info
    if not isinstance(info, (list, tuple)) or not all(isinstance(d, dict) for d in info):
        return None
    return [dict(d) for d in info]


def _supports_intermediates(module: nn.Module) -> bool:
    method = getattr(module, "forward_intermediates", None)
    if method is None:
        return False
    params = inspect.signature(method).parameters
    return all(p in params for p in ("indices", "intermediates_only", "stop_early"))


def _discover(module: nn.Module, pixels: torch.Tensor) -> list[dict]:
    """Stages of an undeclared model: the last module (depth ≤ 2) at each spatial size.

    Containers whose children output several sizes are skipped, and so are 1×1 outputs
    (global pooling), so `features` of a VGG resolves to its blocks.
    """
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, sub in module.named_modules():
        if not name or name.count(".") > 1:
            continue

        def hook(_m, _i, out, name=name):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                seen.append((name, tuple(out.shape)))

        handles.append(sub.register_forward_hook(hook))
    try:
        module(pixels)
    finally:
        for handle in handles:
            handle.remove()
    sizes = {name: shape[2:] for name, shape in seen}
    mixed = {a for a in sizes for b in sizes if b.startswith(a + ".") and sizes[a] != sizes[b]}
    last_by_size: dict[tuple[int, ...], tuple[str, tuple[int, ...]]] = {}
    for name, shape in seen:  # completion order: a later module at the same size wins
        if name not in mixed:
            last_by_size[shape[2:]] = (name, shape)
    ordered = sorted(last_by_size.values(), key=lambda item: -item[1][2])
    return [{"module": name, "num_chs": shape[1]} for name, shape in ordered]


def build(
    model: ResolvedModel,
    size_hw: tuple[int, int],
    requested: Sequence[int] | None,
    device: torch.device,
    layers: Sequence[str] = (),
) -> tuple[Tap, list[StageInfo]]:
    """A tap for the requested stages and layers, and every stage's probed `StageInfo` (all of
    them; the layers' are `tap.infos`)."""
    probe = torch.zeros((1, 3, *size_hw), device=device)
    declared = _declared(model)
    use_intermediates = bool(model.is_timm and declared and _supports_intermediates(model.module))
    with torch.inference_mode():
        if declared is None:
            declared = _discover(model.module, probe)
        if not declared:
            raise ModelError(f"{model.name}: found no stage with a (N, C, H, W) output to tap.")
        names = [str(d.get("module", f"stage{i}")) for i, d in enumerate(declared)]
        everything = list(range(len(declared)))
        shapes: dict[int, tuple[int, ...]] = {}
        tap = Tap(model.module, names, everything, use_intermediates)
        try:
            tap(probe, lambda i, t: shapes.__setitem__(i, tuple(t.shape)))
        except RuntimeError as err:
            raise ModelError(
                f"{model.name} failed a probe forward pass at {size_hw[0]}x{size_hw[1]}: {err}. "
                "Try another --size (many models need multiples of 32)."
            ) from err
    stages = [_stage_info(i, names[i], declared[i], shapes.get(i), size_hw, use_intermediates) for i in everything]
    wanted = resolve_stage_indices(requested, len(stages))
    points = layer_taps.build_points(model.module, probe, layers) if layers else []
    return Tap(model.module, names, wanted, use_intermediates, points), stages


@dataclass(frozen=True)
class ModelStages:
    """What `fmpipe stages` lists: a model's stages at one input size."""

    model: str
    size_hw: tuple[int, int]
    stages: list[StageInfo]


def probe_stages(model: str, size_hw: tuple[int, int] | None = None) -> ModelStages:
    """Every stage of `model` at `size_hw` (default: its own input size), probed on the CPU
    with random weights: shapes do not depend on the weights, and nothing is downloaded."""
    resolved = resolve(model, random_init=True)
    size_hw = size_hw or resolved.input_hw
    _, found = build(resolved, size_hw, None, torch.device("cpu"))
    return ModelStages(model, size_hw, found)


def _stage_info(index, name, decl, shape, size_hw, use_intermediates) -> StageInfo:
    if shape is None or len(shape) != 4:
        raise ModelError(f"stage {index} ({name}) gave {shape}, not a (N, C, H, W) map; it cannot be stored.")
    channels, height, width = shape[1:]
    if decl.get("num_chs") not in (None, channels):
        log.warning(
            "stage %d (%s): declared %s channels, probed %d; using the probe",
            index,
            name,
            decl.get("num_chs"),
            channels,
        )
    stride = int(decl.get("reduction") or round(size_hw[0] / height))
    capture = "forward_intermediates" if use_intermediates else "forward_hook"
    return StageInfo(index, name, int(channels), stride, int(height), int(width), capture)
