"""Layers picked by name: any module of `named_modules()`, per call when it runs more than once.

`--layers layer3.1.conv2,avgpool,layer1.0.relu:2` stores what a forward hook on each module
sees, converted to a (C, H, W) map per image: (N, C, H, W) as it is ((N, H, W, C) for a model
that declares channels-last maps, timm's output_fmt "NHWC"); transformer tokens
(N, L, C) as a (C, h, w) grid when the grid is known (prefix tokens dropped); vectors (N, C)
as (C, 1, 1). A module that runs more than once per forward pass (the shared ReLU of a
torchvision BasicBlock) is named per call, `NAME:1`, `NAME:2`; `NAME` alone is then refused
with the list of its calls. One probe forward pass (random or real weights, a zero image)
finds every call, its output and its conversion; `fmpipe layers MODEL` lists them.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError, UsageError
from ..records import StageInfo

_SPEC = re.compile(r"^(?P<name>[^:\s]+)(?::(?P<call>\d+))?$")


@dataclass(frozen=True)
class Call:
    """One call of one module during a forward pass, as the probe saw it."""

    name: str  # the module's name in named_modules()
    call: int  # 1-based
    calls: int  # how many times the module ran in the pass
    output: str  # what it returned: "(1, 64, 56, 56)" or "tuple of 2 tensors"
    map_shape: tuple[int, int, int] | None  # per-image (C, H, W) it is stored as; None: cannot be

    @property
    def spec(self) -> str:
        """The name --layers takes: `layer4`, or `layer1.0.relu:2` for a repeated module."""
        return self.name if self.calls == 1 else f"{self.name}:{self.call}"


@dataclass(frozen=True)
class Point:
    """A layer to capture: module, call, and how its output becomes (N, C, H, W)."""

    spec: str  # as given (the stored name)
    name: str
    call: int
    convert: Callable[[torch.Tensor], torch.Tensor]
    info: StageInfo


@dataclass(frozen=True)
class ModelLayers:
    """What `fmpipe layers` lists: every module call of a model at one input size."""

    model: str
    size_hw: tuple[int, int]
    calls: list[Call]


def list_layers(model: str, size_hw: tuple[int, int] | None = None, pattern: str | None = None) -> ModelLayers:
    """Every module a `--layers` name can pick, in the order they run, probed on the CPU with
    random weights (shapes do not depend on the weights; nothing is downloaded). `pattern`: a
    regular expression the names must contain (re.search)."""
    from .models import resolve

    try:
        regex = re.compile(pattern) if pattern else None
    except re.error as err:
        raise UsageError(f"--filter {pattern!r} is not a regular expression: {err}.") from None
    resolved = resolve(model, random_init=True)
    size_hw = size_hw or resolved.input_hw
    pixels = torch.zeros((1, 3, *size_hw))
    try:
        calls = probe_calls(resolved.module, pixels)
    except RuntimeError as err:
        raise ModelError(f"{model} failed a probe forward pass at {size_hw[0]}x{size_hw[1]}: {err}") from err
    if regex is not None:
        calls = [c for c in calls if regex.search(c.spec)]
    return ModelLayers(model, size_hw, calls)


def parse_spec(spec: str) -> tuple[str, int | None]:
    """`layer1.0.relu:2` → ("layer1.0.relu", 2); `avgpool` → ("avgpool", None)."""
    match = _SPEC.match(spec.strip())
    if not match or (match.group("call") is not None and int(match.group("call")) < 1):
        raise UsageError(f"--layers takes module names, optionally NAME:CALL with CALL from 1; got {spec!r}.")
    call = match.group("call")
    return match.group("name"), None if call is None else int(call)


def probe_calls(module: nn.Module, pixels: torch.Tensor, names: Sequence[str] | None = None) -> list[Call]:
    """Every call of every module (or of `names`) in one forward pass, in the order they start."""
    size_hw = tuple(pixels.shape[2:])
    hints = _hints(module)
    started: list[tuple[str, int]] = []
    outputs: dict[tuple[str, int], object] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, sub in module.named_modules():
        if not name or (names is not None and name not in names):
            continue

        def pre(_m, _i, name=name):
            counts[name] = counts.get(name, 0) + 1
            started.append((name, counts[name]))

        def post(_m, _i, out, name=name):
            outputs[(name, counts[name])] = _describe(out, size_hw, hints)

        handles += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            module(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return [Call(n, c, counts[n], *outputs.get((n, c), ("no output", None))) for n, c in started]


def build_points(module: nn.Module, pixels: torch.Tensor, specs: Sequence[str], first_index: int = 0) -> list[Point]:
    """The capture points of `specs`, checked against a probe pass; UsageError names the fix."""
    parsed = [parse_spec(s) for s in specs]
    if len({s.strip() for s in specs}) != len(specs):
        raise UsageError(f"--layers lists a name twice: {', '.join(specs)}.")
    known = dict(module.named_modules())
    for name, _ in parsed:
        if name not in known or not name:
            close = difflib.get_close_matches(name, [n for n in known if n], n=5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise UsageError(f"no module named {name!r} in this model.{hint} `fmpipe layers MODEL` lists them all.")
    calls = probe_calls(module, pixels, {name for name, _ in parsed})
    size_hw = tuple(pixels.shape[2:])
    hints = _hints(module)
    points = []
    for position, ((name, call), spec) in enumerate(zip(parsed, specs, strict=True)):
        found = _pick(calls, name, call, spec)
        stride = round(size_hw[0] / found.map_shape[1]) if found.map_shape[1] > 1 else 0
        c, h, w = found.map_shape
        info = StageInfo(first_index + position, spec.strip(), c, stride, h, w, "forward_hook", layer=spec.strip())
        points.append(Point(spec.strip(), name, found.call, _converter(found.map_shape, hints), info))
    return points


def _pick(calls: list[Call], name: str, call: int | None, spec: str) -> Call:
    mine = [c for c in calls if c.name == name]
    if not mine:
        raise UsageError(f"module {name!r} does not run in a forward pass of this model, so it has no output to store.")
    if call is None and len(mine) > 1:
        listed = ", ".join(c.spec for c in mine)
        raise UsageError(f"module {name!r} runs {len(mine)} times per forward pass; pick a call: {listed}.")
    found = mine[0] if call is None else next((c for c in mine if c.call == call), None)
    if found is None:
        raise UsageError(f"module {name!r} runs {len(mine)} time(s) per forward pass; there is no call {call}.")
    if found.map_shape is None:
        raise UsageError(
            f"layer {spec!r} returns {found.output}, not one tensor of shape (N, C, H, W), (N, L, C) tokens on a "
            "known grid, or (N, C): it cannot be stored as maps. Pick a module inside it (`fmpipe layers MODEL`)."
        )
    return found


def _describe(out, size_hw: tuple[int, int], hints: Hints) -> tuple[str, tuple[int, int, int] | None]:
    """What a module returned, and the per-image (C, H, W) it is stored as (None: not storable)."""
    if isinstance(out, torch.Tensor):
        return str(tuple(out.shape)), _map_shape(tuple(out.shape), size_hw, hints)
    if isinstance(out, (tuple, list)):
        kinds = {type(o).__name__ for o in out}
        return f"a {type(out).__name__} of {len(out)} ({', '.join(sorted(kinds))})", None
    if isinstance(out, dict):
        return f"a dict with keys {', '.join(map(str, list(out)[:5]))}", None
    return f"a {type(out).__name__}", None


def _map_shape(shape: tuple[int, ...], size_hw, hints: Hints) -> tuple[int, int, int] | None:
    if len(shape) == 4:
        return (shape[3], shape[1], shape[2]) if hints.nhwc else (shape[1], shape[2], shape[3])
    if len(shape) == 2:
        return shape[1], 1, 1
    if len(shape) == 3:
        found = _grid(shape[1], size_hw, hints.grid)
        return None if found is None else (shape[2], found[1], found[2])
    return None


def _grid(tokens: int, size_hw, hint) -> tuple[int, int, int] | None:
    """(prefix tokens, h, w) of a (N, L, C) token sequence: the model's own patch grid when it
    declares one (timm's patch_embed.grid_size, num_prefix_tokens), else the grid of some
    integer stride that tiles the input, after 0 to 8 prefix (class, register) tokens."""
    if hint is not None:
        (gh, gw), prefix = hint
        if tokens == gh * gw + prefix:
            return prefix, gh, gw
    height, width = size_hw
    for prefix in range(9):
        n = tokens - prefix
        if n < 1:
            break
        stride = math.sqrt(height * width / n)
        s = round(stride)
        if s >= 1 and abs(stride - s) < 1e-9 and height % s == 0 and width % s == 0:
            return prefix, height // s, width // s
    return None


@dataclass(frozen=True)
class Hints:
    """What a model says about its inner tensors: its patch grid and prefix tokens (timm's
    patch_embed.grid_size, num_prefix_tokens), and whether its 4-D maps are channels-last
    (timm's output_fmt "NHWC", e.g. Swin), which are then stored as (C, H, W) too."""

    grid: tuple[tuple[int, int], int] | None
    nhwc: bool


def _hints(module: nn.Module) -> Hints:
    embed = getattr(module, "patch_embed", None)
    size = getattr(embed, "grid_size", None)
    grid = None
    if size is not None:
        grid = (int(size[0]), int(size[1])), int(getattr(module, "num_prefix_tokens", 0) or 0)
    return Hints(grid, str(getattr(module, "output_fmt", "")) == "NHWC")


def _converter(map_shape, hints: Hints) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from the module's output tensor to (N, C, H, W), chosen once at the probe."""
    channels, height, width = map_shape

    def convert(out: torch.Tensor) -> torch.Tensor:
        if out.dim() == 4:
            return out.permute(0, 3, 1, 2) if hints.nhwc else out
        if out.dim() == 2:
            return out[:, :, None, None]
        prefix = out.shape[1] - height * width  # tokens: drop class/register tokens, (N, L, C) → (N, C, h, w)
        return out[:, prefix:, :].transpose(1, 2).reshape(out.shape[0], channels, height, width)

    return convert


def capture(module: nn.Module, pixels: torch.Tensor, points: Sequence[Point], sink, also=()) -> None:
    """One forward pass calling `sink(point.info.key, maps)` for each point as its module returns,
    stopping once every point (and every `also` hook point: (name, key, convert)) was captured."""
    wanted: dict[str, dict[int, tuple]] = {}
    for p in points:
        wanted.setdefault(p.name, {})[p.call] = (p.info.key, p.convert)
    for name, key, convert in also:
        wanted.setdefault(name, {})[1] = (key, convert)
    remaining = sum(len(v) for v in wanted.values())
    counts = dict.fromkeys(wanted, 0)
    handles = []

    def make_hook(name: str):
        def hook(_mod, _inp, out):
            nonlocal remaining
            counts[name] += 1
            target = wanted[name].get(counts[name])
            if target is None:
                return
            key, convert = target
            sink(key, convert(out))
            remaining -= 1
            if remaining == 0:
                raise StopForward

        return hook

    for name in wanted:
        handles.append(module.get_submodule(name).register_forward_hook(make_hook(name)))
    try:
        module(pixels)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if remaining:
        raise ModelError(f"{remaining} of the requested stages/layers did not run in this forward pass.")


class StopForward(Exception):
    """Raised by the last needed hook: the rest of the model is not run."""
