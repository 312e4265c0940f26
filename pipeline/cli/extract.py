"""`fmpipe extract` and `fmpipe stages`: the commands that run a model."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import DEFAULT_MODEL, ExtractConfig, default, parse_layers, parse_pool, parse_size, parse_stages
from ..errors import UsageError
from .app import app

Images = Annotated[
    str,
    typer.Argument(
        help="Folder of images (searched recursively, sorted) or a text file listing image paths, one a line "
        "(relative to the list's folder or absolute; # comments; the list's order is kept)."
    ),
]
Out = Annotated[str, typer.Argument(help="Output HDF5 file.")]
Model = Annotated[str, typer.Option(help="timm name, tv:NAME (torchvision) or module:factory.")]
Weights = Annotated[
    str | None, typer.Option(help="State dict or training checkpoint (.pt, .pth, .safetensors) to load into the model.")
]
WeightsKey = Annotated[
    str | None,
    typer.Option(
        help="Where the state dict is inside a training checkpoint, dotted for nesting (e.g. model_ema.module). "
        "Default: found under state_dict, model, module, ema or model_ema."
    ),
]
WeightsPrefix = Annotated[
    str | None,
    typer.Option(
        help="Take only the tensors named P... and strip P, e.g. a detector's backbone: backbone.0.body. "
        "A mismatch lists the file's prefixes."
    ),
]
RandomInit = Annotated[bool, typer.Option("--random-init", help="Random weights (seeded); no download.")]
Stages = Annotated[
    str | None,
    typer.Option(
        help="Stages to keep: indices and Python slices, e.g. 0,2,-1 or 0:-1 (all but the last) or -2: "
        "(default: all; none with --layers)."
    ),
]
Layers = Annotated[
    str | None,
    typer.Option(
        help="Also (or only) any modules by name, e.g. layer3.1.conv2,avgpool,layer1.0.relu:2 "
        "(`fmpipe layers MODEL` lists them; NAME:CALL for a module that runs more than once)."
    ),
]
Size = Annotated[
    str | None, typer.Option(help="Resize every image to exactly HxW; S means SxS (default: the model's input size).")
]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")]
Dtype = Annotated[
    str,
    typer.Option(
        help="Storage dtype: float16, float32, or uint8 (each image's channel scaled by its own min and max: "
        "within (max - min)/510, about half the bytes of float16)."
    ),
]
KeepBits = Annotated[
    int,
    typer.Option(
        help="Round float mantissas to N bits (to nearest; 1..10 for float16, 1..23 for float32; 0: keep all). "
        "Smaller files that stay plain float."
    ),
]
Shuffle = Annotated[
    str,
    typer.Option(
        help="HDF5 byte shuffle before compression: auto (on for compressed float maps: smaller), on, off. "
        "Lossless; any HDF5 reader undoes it."
    ),
]
Pool = Annotated[
    str | None,
    typer.Option(
        help="Average-pool every stored stage and layer to at most HxW on the device, e.g. 7x7; "
        "1 stores each channel's global mean (C, 1, 1)."
    ),
]
Compression = Annotated[str, typer.Option(help="zstd, gzip or none.")]
Workers = Annotated[int, typer.Option(help="Decoding processes (0: decode in the main process).")]
ShardIndex = Annotated[int, typer.Option(help="This task's shard (job arrays).")]
NumShards = Annotated[int, typer.Option(help="Number of shards (job arrays).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (and its partial file).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the plan and size estimate; compute nothing.")]
UnsafePickle = Annotated[
    bool,
    typer.Option(
        "--unsafe-pickle",
        help="DANGEROUS: let --weights unpickle arbitrary objects (can run code). Only for files you trust.",
    ),
]
Amp = Annotated[bool, typer.Option("--amp", help="bf16 autocast on CUDA (faster, less exact; recorded in the file).")]
NullWriter = Annotated[
    bool, typer.Option("--null-writer", help="Benchmarking: run everything but discard the maps (writes no file).")
]


ITEMSIZE = {"uint8": 1, "float16": 2, "float32": 4}


def _d(name: str):
    return default(ExtractConfig, name)


@app.command()
def extract(
    images: Images,
    out: Out,
    model: Model = _d("model"),
    weights: Weights = _d("weights"),
    weights_key: WeightsKey = _d("weights_key"),
    weights_prefix: WeightsPrefix = _d("weights_prefix"),
    random_init: RandomInit = _d("random_init"),
    stages: Stages = None,
    layers: Layers = None,
    size: Size = None,
    batch_size: BatchSize = _d("batch_size"),
    device: Device = _d("device"),
    dtype: Dtype = _d("dtype"),
    keep_bits: KeepBits = _d("keep_bits"),
    shuffle: Shuffle = _d("shuffle"),
    pool: Pool = None,
    compression: Compression = _d("compression"),
    workers: Workers = _d("workers"),
    shard_index: ShardIndex = _d("shard_index"),
    num_shards: NumShards = _d("num_shards"),
    overwrite: Overwrite = _d("overwrite"),
    dry_run: DryRun = _d("dry_run"),
    unsafe_pickle: UnsafePickle = _d("unsafe_pickle"),
    amp: Amp = _d("amp"),
    null_writer: NullWriter = _d("null_writer"),
) -> None:
    """Stream images through a model in batches and store every stage's activations."""
    import pipeline

    summary = pipeline.extract(
        images,
        out,
        model=model,
        weights=weights,
        weights_key=weights_key,
        weights_prefix=weights_prefix,
        random_init=random_init,
        stages=parse_stages(stages),
        layers=parse_layers(layers),
        size=parse_size(size),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        keep_bits=keep_bits,
        shuffle=shuffle,
        pool=parse_pool(pool),
        compression=compression,
        workers=workers,
        shard_index=shard_index,
        num_shards=num_shards,
        overwrite=overwrite,
        dry_run=dry_run,
        unsafe_pickle=unsafe_pickle,
        amp=amp,
        null_writer=null_writer,
    )
    typer.echo(_describe(summary, model, dtype, chosen=stages is not None or layers is not None))


def _describe(summary, model: str, dtype: str, chosen: bool) -> str:
    if summary.dry_run:
        from ..extraction.describe import describe_stages

        maps, other = summary.planned_bytes
        per_image = (maps + other) / max(1, summary.images)
        label = _stored_label(summary.stages) if chosen else "all stages"
        return (
            describe_stages(model, summary.input_hw, summary.stages, ITEMSIZE[dtype], label)
            + f"\nstorage: {summary.encoding}"
            + f"\ndry run: {summary.images} images → {summary.out}: {maps / 1e6:.1f} MB of maps and "
            f"{other / 1e6:.1f} MB of keys, statistics and top lists before compression "
            f"({per_image / 1e6:.3f} MB per image); nothing computed."
        )
    if summary.already_complete:
        return (
            f"{summary.out}: already complete with this configuration and these images "
            f"({summary.images} images, {summary.failed_before} failed); nothing to do. "
            "--overwrite computes it again."
        )
    done = f", {summary.done_before} already done" if summary.done_before else ""
    redone = f", {summary.redone} redone (source changed)" if summary.redone else ""
    text = (
        f"{summary.out}: {summary.stored} images stored, {summary.failed} failed{done}{redone}; "
        f"{summary.mb_written:.1f} MB written in {summary.seconds:.1f} s "
        f"({summary.images_per_s:.1f} images/s) on {summary.device}"
    )
    if summary.failed:
        text += f"\n{summary.failed} images could not be used; `fmpipe info {summary.out}` lists them."
    return text


def _stored_label(stored) -> str:
    """`stages 0, 4 and layer blocks.1`: what a run with --stages/--layers stores."""
    indices = [str(s.index) for s in stored if s.layer is None]
    names = [s.layer for s in stored if s.layer is not None]
    parts = [f"stage{'s' if len(indices) > 1 else ''} {', '.join(indices)}"] if indices else []
    parts += [f"layer{'s' if len(names) > 1 else ''} {', '.join(names)}"] if names else []
    return " and ".join(parts)


@app.command()
def stages(
    model: Annotated[str, typer.Argument(help="timm name, tv:NAME or module:factory.")] = DEFAULT_MODEL,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the model's own).")] = None,
    dtype: Dtype = _d("dtype"),
    pool: Pool = None,
) -> None:
    """List a model's stages: index, module, channels, stride, shape and MB per image (as stored with --pool)."""
    import pipeline

    from ..extraction.describe import describe_stages
    from ..storage.format.encoding import pooled

    found = pipeline.stages(model, size=parse_size(size))
    stored = [pooled(s, parse_pool(pool)) for s in found.stages]
    typer.echo(describe_stages(model, found.size_hw, stored, _itemsize(dtype)))


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="timm name, tv:NAME or module:factory.")] = DEFAULT_MODEL,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the model's own).")] = None,
    filter: Annotated[str | None, typer.Option("--filter", help="Only names matching this regular expression.")] = None,
    dtype: Dtype = _d("dtype"),
    pool: Pool = None,
) -> None:
    """List every module --layers can pick, in execution order: calls, output, stored shape, MB per image."""
    import pipeline

    from ..extraction.describe import describe_layers

    found = pipeline.layers(model, size=parse_size(size), filter=filter)
    typer.echo(describe_layers(found, _itemsize(dtype), parse_pool(pool)))


def _itemsize(dtype: str) -> int:
    if dtype not in ITEMSIZE:
        raise UsageError(f"--dtype must be one of {', '.join(ITEMSIZE)}, got {dtype!r}.")
    return ITEMSIZE[dtype]
