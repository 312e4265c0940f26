"""Reads a `--weights` file into the state dict a model takes, strictly.

Accepted: a plain state dict; a training checkpoint that nests one (found under the usual keys,
or the dotted `--weights-key`, e.g. `model_ema.module`); DataParallel/DDP's `module.` prefix on
every name (stripped); `.safetensors` files; and `--weights-prefix P`, the sub-tree under P with P
stripped (a detector's backbone: `backbone.0.body.`). Names that do not fit the model are refused
with counts, examples and the file's prefixes, so the fix is in the message.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from ..sources import file_sha256

log = logging.getLogger(__name__)

# Where training checkpoints keep their state dict, most wanted first (EMA weights after the plain ones).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema", "model_ema")
DDP_PREFIX = "module."
EXAMPLES = 3  # names shown per kind of mismatch
PREFIXES_SHOWN = 8
# Harmless objects that training scripts store beside the weights (DETR saves its `args`).
_SAFE_GLOBALS = [argparse.Namespace]


def load_weights(
    module: nn.Module, path: str, *, key: str | None = None, prefix: str | None = None, unsafe_pickle: bool = False
) -> str:
    """Load the weights in `path` into `module` (strict); returns the weights id
    `file:NAME:sha256=HEX[:key=K][:prefix=P]` (the sha256 of the file's bytes)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--weights {path!r} is not a file.")
    digest, _ = file_sha256(file)
    if key and _is_safetensors(file):
        raise InputError(f"--weights {path!r} is a safetensors file: one flat state dict. Drop --weights-key.")
    state, key = find_state_dict(_read(file, unsafe_pickle), key, path)
    where = f"{file.name}" + (f" (key {key!r})" if key else "")
    state = strip_ddp_prefix(state, where)
    if prefix:
        state, prefix = take_prefix(state, prefix, where, set(module.state_dict()))
    fit(module, state, where)
    module.load_state_dict(state, strict=True)
    return (
        f"file:{file.name}:sha256={digest}" + (f":key={key}" if key else "") + (f":prefix={prefix}" if prefix else "")
    )


def find_state_dict(raw: object, key: str | None, path: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside what the file held, and the dotted key it was under (None: top level).

    With `key`, exactly that entry; else the top level when it is a state dict, else the first of
    WRAPPER_KEYS (also one level down, `model.state_dict`) that holds one; the others are named.
    """
    if isinstance(raw, nn.Module):
        raw = raw.state_dict()
    if key:
        return _at_key(raw, key, path), key
    if _is_state_dict(raw):
        return dict(raw), None
    found = _candidates(raw)
    if not found:
        raise InputError(
            f"--weights {path!r} holds no state dict (a mapping of names to tensors) at its top level or under "
            f"{', '.join(WRAPPER_KEYS)}; it holds {_describe(raw)}. Name the entry with --weights-key K "
            "(dotted for nesting, e.g. model.state_dict)."
        )
    key = found[0]
    if len(found) > 1:
        log.warning(
            "--weights %s holds state dicts under %s; took %r (choose with --weights-key)", path, ", ".join(found), key
        )
    return dict(_at_key(raw, key, path)), key


def _candidates(raw: object) -> list[str]:
    """Dotted keys among WRAPPER_KEYS (one or two levels) whose value is a state dict, in preference order."""
    found = []
    if not isinstance(raw, Mapping):
        return found
    for outer in WRAPPER_KEYS:
        value = raw.get(outer)
        if isinstance(value, nn.Module) or _is_state_dict(value):
            found.append(outer)
        elif isinstance(value, Mapping):
            found += [f"{outer}.{inner}" for inner in WRAPPER_KEYS if _is_state_dict(value.get(inner))]
    return found


def _at_key(raw: object, key: str, path: str) -> dict[str, torch.Tensor]:
    """The state dict at dotted `key` (`model_ema.module`); InputError naming what is there instead."""
    value, walked = raw, []
    parts = [key] if isinstance(raw, Mapping) and key in raw else key.split(".")  # a name with a dot
    for part in parts:
        if not isinstance(value, Mapping) or part not in value:
            at = ".".join(walked) or "the top level"
            raise InputError(
                f"--weights-key {key!r}: {path} has no entry {part!r} at {at}; there it holds {_describe(value)}."
            )
        value, walked = value[part], [*walked, part]
    if isinstance(value, nn.Module):
        value = value.state_dict()
    if not _is_state_dict(value):
        raise InputError(
            f"--weights-key {key!r} in {path} is {_describe(value)}, not a state dict (names mapped to tensors)."
        )
    return dict(value)


def strip_ddp_prefix(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP's `module.` when every name has it."""
    if state and all(name.startswith(DDP_PREFIX) for name in state):
        log.info("--weights %s: stripped the DataParallel prefix %r from every name", where, DDP_PREFIX)
        return {name[len(DDP_PREFIX) :]: value for name, value in state.items()}
    return state


def take_prefix(
    state: dict[str, torch.Tensor], prefix: str, where: str, model_names: set[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors under `prefix`, with it stripped, and the prefix as taken (a missing final dot is
    added when that matches); InputError listing the file's prefixes when nothing is under it."""
    if not prefix.endswith(".") and any(name.startswith(prefix + ".") for name in state):
        prefix += "."
    if prefix.startswith(DDP_PREFIX) and not any(name.startswith(prefix) for name in state):
        prefix = prefix[len(DDP_PREFIX) :]  # the names' `module.` was stripped already
    taken = {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix) and name != prefix}
    if not taken:
        raise InputError(
            f"--weights-prefix {prefix!r}: no tensor name in {where} starts with it; its tensors by prefix: "
            f"{prefix_summary(state)}.{_prefix_hint(state, model_names)}"
        )
    return taken, prefix


def fit(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise InputError unless `state` has exactly the module's names and shapes (a timm model whose
    only missing tensors are its classifier head loses the head instead: a backbone has none)."""
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    missing = _missing(expected, state)
    if missing and not set(missing) - _head_names(module) and all(name in expected for name in state):
        log.info("--weights %s has no classifier head (%s): the model's head is dropped", where, ", ".join(missing))
        module.reset_classifier(0)
        expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
        missing = _missing(expected, state)
    unexpected = [name for name in state if name not in expected]
    shapes = [name for name in state if name in expected and tuple(state[name].shape) != expected[name]]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's {len(expected)} tensors are missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} of the file's {len(state)} are unexpected ({_examples(unexpected)})")
    if shapes:
        shown = ", ".join(f"{n}: file {tuple(state[n].shape)}, model {expected[n]}" for n in shapes[:EXAMPLES]) + (
            ", ..." if len(shapes) > EXAMPLES else ""
        )
        problems.append(f"{len(shapes)} have another shape ({shown})")
    raise InputError(
        f"--weights {where} does not fit the model: {'; '.join(problems)}. The file's tensors by prefix: "
        f"{prefix_summary(state)}.{_prefix_hint(state, set(expected))}"
    )


def _missing(expected: dict[str, tuple], state: Mapping[str, torch.Tensor]) -> list[str]:
    # BatchNorm fills in a missing num_batches_tracked itself (older checkpoints have none).
    return [name for name in expected if name not in state and not name.endswith(".num_batches_tracked")]


def prefix_summary(names: object, limit: int = PREFIXES_SHOWN) -> str:
    """`backbone.0.body. (312 tensors), transformer. (150), class_embed. (2)`: names grouped by
    their first part, each group shown by the parts all its names share, largest first."""
    groups: dict[str, list[list[str]]] = {}
    for name in names:
        parts = name.split(".")
        groups.setdefault(parts[0], []).append(parts)
    shown = []
    for members in groups.values():
        shared = _shared_parts(members)
        shown.append((".".join(shared) + "." if shared else members[0][0], len(members)))
    shown.sort(key=lambda item: -item[1])  # stable: equal counts keep the file's order
    text = ", ".join(f"{label} ({n}{' tensors' if i == 0 else ''})" for i, (label, n) in enumerate(shown[:limit]))
    return text + (f", and {len(shown) - limit} more" if len(shown) > limit else "")


def _shared_parts(members: list[list[str]]) -> list[str]:
    """The leading parts all dotted names share, never a whole name (the tensor's own name)."""
    shared = members[0][:-1]
    for parts in members[1:]:
        count = 0
        while count < min(len(shared), len(parts) - 1) and shared[count] == parts[count]:
            count += 1
        shared = shared[:count]
    return shared


def suggest_prefix(names: object, model_names: set[str]) -> tuple[str, int] | None:
    """The prefix under which most of the model's names appear in `names`, with how many; None
    when no prefix holds at least half of them."""
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in model_names:
                counts[".".join(parts[:i]) + "."] += 1
    if not counts:
        return None
    best, count = counts.most_common(1)[0]
    return (best, count) if 2 * count >= len(model_names) else None


def _prefix_hint(names: object, model_names: set[str]) -> str:
    found = suggest_prefix(names, model_names)
    if found is None:
        return " Give --weights-prefix P to take the tensors under P, or another --model."
    prefix, count = found
    return (
        f" {count} of the model's {len(model_names)} tensors are there under {prefix!r}: pass --weights-prefix {prefix}"
    )


def _head_names(module: nn.Module) -> set[str]:
    """State dict names of a timm model's classifier head (empty for other models)."""
    heads = (getattr(module, "pretrained_cfg", None) or {}).get("classifier")
    if not heads or not hasattr(module, "reset_classifier"):
        return set()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {name for name in module.state_dict() if any(name.startswith(f"{head}.") for head in heads)}


def _read(file: Path, unsafe_pickle: bool) -> object:
    """What the file holds: safetensors' flat dict, or torch.load's object (tensors and plain
    containers only unless `unsafe_pickle`: an arbitrary pickle can run code on this machine)."""
    if _is_safetensors(file):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise InputError(f"--weights {str(file)!r} cannot be read as safetensors: {_short(err)}") from None
    _check_torch_format(file)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(file, map_location="cpu", weights_only=not unsafe_pickle)
    except Exception as err:  # torch.load raises many types for foreign or damaged files
        text = str(err)
        refused = "WeightsUnpickler error" in text and not re.search(r"truncated|EOF|ran out of input", text, re.I)
        if not unsafe_pickle and refused:  # a well-formed pickle that holds more than tensors
            found = re.search(r"GLOBAL ([\w.]+)", text)
            held = f" (it holds a {found.group(1)})" if found else ""
            raise InputError(
                f"--weights {str(file)!r} holds more than tensors{held}, so it was "
                "refused: unpickling it could run code. Re-save it as a plain state dict "
                "(torch.save(model.state_dict(), FILE)); only if you trust its origin, pass --unsafe-pickle."
            ) from None
        raise InputError(
            f"--weights {str(file)!r} is not a readable PyTorch/safetensors checkpoint (truncated or damaged?): "
            f"{_short(err)}"
        ) from None


# What a file that is not a checkpoint starts with, for the message.
_FOREIGN = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x1f\x8b", "a gzip file"),
)


def _check_torch_format(file: Path) -> None:
    """A torch.save file is a zip archive (PK..) or, in the legacy format, a pickle (0x80, protocol
    2 to 5). Anything else is refused by what it is, never with advice about unpickling."""
    with open(file, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return
    what = next((name for magic, name in _FOREIGN if head.startswith(magic)), None)
    if what is None:
        what = "an empty file" if not head else "text" if _is_text(head) else f"bytes {head[:8].hex(' ')} ..."
    raise InputError(
        f"--weights {str(file)!r} is not a PyTorch/safetensors checkpoint: it is {what}. Give the .pt, .pth "
        "or .safetensors file that torch.save or safetensors wrote."
    )


def _is_text(head: bytes) -> bool:
    text = head.decode("utf-8", errors="replace")
    return all(c.isprintable() or c.isspace() for c in text.rstrip("\ufffd"))


def _is_safetensors(file: Path) -> bool:
    """By name, or by content: an 8-byte little-endian header length, then the JSON header."""
    if file.suffix == ".safetensors":
        return True
    with open(file, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < file.stat().st_size


def _is_state_dict(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        keys = [str(k) for k in list(value)[:10]]
        more = ", ..." if len(value) > 10 else ""
        return f"a mapping with keys {', '.join(keys)}{more}" if keys else "an empty mapping"
    return f"a {type(value).__name__}"


def _examples(names: list[str]) -> str:
    return "e.g. " + ", ".join(names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")


def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
