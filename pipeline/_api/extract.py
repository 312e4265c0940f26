"""`pipeline.extract`, `pipeline.stages` and `pipeline.layers`: the verbs that run a model. Only
calling them imports torch (`extract` not even then for an output already complete)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..config import DEFAULT_MODEL, ExtractConfig, default

if TYPE_CHECKING:
    from ..extraction.layers import ModelLayers
    from ..extraction.summary import ExtractSummary
    from ..extraction.taps import ModelStages


def _d(name: str):
    return default(ExtractConfig, name)


def extract(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = _d("model"),
    weights: str | None = _d("weights"),
    weights_key: str | None = _d("weights_key"),
    weights_prefix: str | None = _d("weights_prefix"),
    random_init: bool = _d("random_init"),
    stages: Sequence[int | str] | str | None = _d("stages"),
    layers: Sequence[str] | None = _d("layers"),
    size: tuple[int, int] | None = _d("size"),
    batch_size: int = _d("batch_size"),
    device: str = _d("device"),
    dtype: str = _d("dtype"),
    keep_bits: int = _d("keep_bits"),
    shuffle: str = _d("shuffle"),
    pool: int | tuple[int, int] | None = _d("pool"),
    compression: str = _d("compression"),
    workers: int = _d("workers"),
    shard_index: int = _d("shard_index"),
    num_shards: int = _d("num_shards"),
    overwrite: bool = _d("overwrite"),
    dry_run: bool = _d("dry_run"),
    unsafe_pickle: bool = _d("unsafe_pickle"),
    seed: int = _d("seed"),
    amp: bool = _d("amp"),
    null_writer: bool = _d("null_writer"),
) -> ExtractSummary:
    """Run every image through a model and store each stage's (and layer's) feature maps in one HDF5 file.

    A run that stops resumes where it stopped; an output already complete with this configuration and
    these images is answered from the file, without importing torch. The defaults are
    `pipeline.ExtractConfig`'s.

    Parameters
    ----------
    images : str or os.PathLike
        A folder of images (searched recursively, sorted) or a text file listing image paths, one a
        line (relative to the list's folder or absolute; ``#`` comments; the list's order is kept).
    out : str or os.PathLike
        The HDF5 file to write. With `num_shards` > 1 this task writes
        ``OUT.shards/shard-0000I-of-0000N.h5`` instead, and `pipeline.merge(out)` combines them.
    model : str
        A timm name, ``tv:NAME`` (torchvision) or ``package.module:factory``.
    weights : str or None
        A state dict or training checkpoint (.pt, .pth, .safetensors) to load into the model;
        None: the model's pretrained weights.
    weights_key : str or None
        Where the state dict is inside a training checkpoint, dotted for nesting (``model_ema.module``);
        None: found under state_dict, model, module, ema or model_ema.
    weights_prefix : str or None
        Take only the tensors named ``P...`` and strip ``P`` (a detector's backbone: ``backbone.0.body.``).
    random_init : bool
        Random weights, seeded by `seed`; nothing is downloaded.
    stages : sequence of int or str, or str, or None
        Stages to keep: indices and Python slices, ``(0, 2, -1)``, ``"0,2,-1"``, ``"0:-1"`` (all but the
        last); None: every stage (none when `layers` are given).
    layers : sequence of str or None
        Also (or only) any modules by name, ``("layer3.1.conv2", "avgpool", "layer1.0.relu:2")``;
        `pipeline.layers(model)` lists them (``NAME:CALL`` for a module that runs more than once).
    size : (int, int) or None
        Resize every image to exactly (H, W); None: the model's input size.
    batch_size : int
        Images per forward pass.
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
    dtype : str
        How maps are stored: ``float16``, ``float32``, or ``uint8`` (each image's channel scaled by its
        own min and max: within (max - min)/510).
    keep_bits : int
        Round float mantissas to this many bits, to nearest (1..10 for float16, 1..23 for float32);
        0 keeps them all.
    shuffle : str
        HDF5 byte shuffle before compression: ``auto`` (on for compressed float maps), ``on``, ``off``.
    pool : int or (int, int) or None
        Average-pool every stored map to at most (H, W) on the device (an int S: (S, S); 1 stores each
        channel's global mean, (C, 1, 1)); None: maps as computed.
    compression : str
        ``zstd``, ``gzip`` or ``none``.
    workers : int
        Decoding processes (0: decode in the main process).
    shard_index, num_shards : int
        This task's shard and the number of shards of a job array.
    overwrite : bool
        Replace an existing output (and its partial file).
    dry_run : bool
        Plan and estimate the sizes (the summary's ``planned_bytes``); compute nothing.
    unsafe_pickle : bool
        DANGEROUS: let `weights` unpickle arbitrary objects, which can run code. Only for files you trust.
    seed : int
        The seed of `random_init`'s weights.
    amp : bool
        bf16 autocast on CUDA: faster, less exact; recorded in the file.
    null_writer : bool
        Benchmarking: run everything but discard the maps (writes no file).

    Returns
    -------
    ExtractSummary
        What the run did: images stored and failed, MB written, seconds, the stages stored;
        ``already_complete`` when `out` held all of it and nothing was done.
    """
    from ..extraction.summary import already_complete

    config = ExtractConfig(
        images=str(images),
        out=str(out),
        model=model,
        weights=weights,
        weights_key=weights_key,
        weights_prefix=weights_prefix,
        random_init=random_init,
        stages=stages,
        layers=layers,
        size=size,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        keep_bits=keep_bits,
        shuffle=shuffle,
        pool=pool,
        compression=compression,
        workers=workers,
        shard_index=shard_index,
        num_shards=num_shards,
        overwrite=overwrite,
        dry_run=dry_run,
        unsafe_pickle=unsafe_pickle,
        seed=seed,
        amp=amp,
        null_writer=null_writer,
    )
    finished = already_complete(config)  # answered from the file, before torch is imported
    if finished is not None:
        return finished
    from ..extraction.hub import check_weights_reachable

    check_weights_reachable(config)  # no network and nothing cached: fail before torch is imported
    from ..extraction.runner import extract as run

    return run(config)


def stages(model: str = DEFAULT_MODEL, *, size: tuple[int, int] | None = None) -> ModelStages:
    """A model's stages at an input size, probed with random weights on the CPU (nothing is downloaded).

    Parameters
    ----------
    model : str
        A timm name, ``tv:NAME`` or ``package.module:factory``.
    size : (int, int) or None
        The input (H, W); None: the model's own.

    Returns
    -------
    ModelStages
        ``model``, ``size_hw`` and ``stages``: a `StageInfo` per stage (module, channels, stride, shape).
    """
    from ..extraction.taps import probe_stages

    return probe_stages(model or DEFAULT_MODEL, size)  # None, as before: the default model


def layers(
    model: str = DEFAULT_MODEL, *, size: tuple[int, int] | None = None, filter: str | None = None
) -> ModelLayers:
    """Every module `extract(layers=...)` can pick, in the order they run, probed with random weights on the CPU.

    Parameters
    ----------
    model : str
        A timm name, ``tv:NAME`` or ``package.module:factory``.
    size : (int, int) or None
        The input (H, W); None: the model's own.
    filter : str or None
        A regular expression the names must contain; None: every module.

    Returns
    -------
    ModelLayers
        ``model``, ``size_hw`` and ``calls``: each module call with its call count and output shape.
    """
    from ..extraction.layers import list_layers

    return list_layers(model or DEFAULT_MODEL, size, filter)  # None, as before: the default model
