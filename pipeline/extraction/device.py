"""The device a run uses, and keeping the host's memory flat over long runs."""

from __future__ import annotations

import ctypes

import torch

from ..errors import InputError


def pick_device(spec: str) -> torch.device:
    """`auto` → the first CUDA device when present, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise InputError(f"--device {spec!r} is not a device (use auto, cpu, cuda or cuda:N).") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is visible; use --device cpu.")
    return device


def device_note(device: torch.device) -> str:
    """` (NVIDIA H200)`, or a hint when a CUDA device exists but is not used."""
    if device.type == "cuda":
        return f" ({torch.cuda.get_device_name(device)})"
    if torch.cuda.is_available():
        return " (a CUDA device is present but not used; pass --device cuda to use it)"
    return ""


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc `malloc_trim`), so peak RSS stays flat
    over long runs: the batch buffers that many threads allocate and free fragment glibc's
    heaps otherwise. A no-op where libc is not glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  (present in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
