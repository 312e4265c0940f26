"""What makes two runs the same: the fingerprint of everything that changes the stored maps, and
the difference between two fingerprints told as the options a user passed. No torch.

The parts are plain JSON (lists, not tuples), so that a part read back from a file compares
equal to the same part computed again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


def canonical(parts: dict) -> dict:
    """`parts` as JSON would give them back (tuples become lists), so they compare stably."""
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def fingerprint(parts: dict) -> str:
    """Stable sha256 of everything that changes the stored values (canonical JSON)."""
    blob = json.dumps(canonical(parts), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Difference:
    """One fingerprint part that differs, in the user's words."""

    part: str
    was: str  # as the option (or thing) was when the output was started
    now: str  # as it is in this run
    option: str | None  # the option that sets it, when one does ("--stages")

    def __str__(self) -> str:
        return self.text()

    def text(self, now_label: str = "this run") -> str:
        """`--size 64x64 (this run: 48x48)`."""
        return f"{self.option or self.part} {self.was} ({now_label}: {self.now})"


def differences(old: dict, new: dict) -> list[Difference]:
    """The parts that differ between a stored fingerprint (`old`) and this run's (`new`)."""
    old, new = canonical(old), canonical(new)
    found = []
    for part in sorted(set(old) | set(new)):
        if old.get(part) == new.get(part) or (part == "num_keys" and "keys_sha256" in old):
            continue
        option, show = _WORDS.get(part, (None, _plain))
        if part == "stages" and _stages(old.get(part)) == _stages(new.get(part)):
            if old.get("size") != new.get("size") or old.get("pool") != new.get("pool"):
                continue  # the same stages at another --size or --pool: that is the difference
            option, show = "the stages' modules or shapes", _plain
        if part == "keys_sha256":
            was, now = f"{old.get('num_keys', '?')} images", f"{new.get('num_keys', '?')} images"
            if was == now:
                was, now = f"{was} (other names)", f"{now} (other names)"
        else:
            was, now = show(old.get(part)), show(new.get(part))
        found.append(Difference(part, was, now, option))
    return found


def describe_difference(old: dict, new: dict, now_label: str = "this run") -> str:
    """Human-readable list of the fingerprint parts that differ between two runs."""
    found = differences(old, new)
    return "; ".join(d.text(now_label) for d in found) if found else "(no visible difference)"


def rerun_hint(found: list[Difference]) -> str:
    """`--stages 0,2 --size 224x224`: the options that would make this run match the old one."""
    return " ".join(f"{d.option} {d.was}" for d in found if d.option and d.option.startswith("--"))


def _plain(value) -> str:
    return "missing" if value is None else str(value)


def _stages(value) -> str:
    return "missing" if value is None else ",".join(str(stage[0]) for stage in value) or "none"


def _layers(value) -> str:
    return "none" if not value else ",".join(str(layer[0]) for layer in value)


def _size(value) -> str:
    return "missing" if value is None else "x".join(str(v) for v in value)


def _short(value) -> str:
    return "missing" if value is None else f"sha256 {str(value)[:12]}…"


def _switch(value) -> str:
    return "on" if value else "off"


_WORDS = {
    "model": ("--model", _plain),
    "weights_sha256": ("the loaded weights", _short),
    "stages": ("--stages", _stages),
    "layers": ("--layers", _layers),
    "size": ("--size", _size),
    "mean": ("the model's normalisation mean", _plain),
    "std": ("the model's normalisation std", _plain),
    "resize": ("the resize policy (another fmpipe version)", _plain),
    "dtype": ("--dtype", _plain),
    "compression": ("--compression", _plain),
    "amp": ("--amp", _switch),
    "keep_bits": ("--keep-bits", lambda value: str(value or 0)),
    "pool": ("--pool", lambda value: "none" if not value else "x".join(str(v) for v in value)),
    "shuffle": ("--shuffle", _switch),
    "keys_sha256": ("the image collection", _plain),
    "format_version": ("the file format version (another fmpipe version)", _plain),
}
