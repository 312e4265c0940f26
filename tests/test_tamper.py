"""Tamper evidence, from the outside: a finished file changed after the fact in any part a reader relies
on (a key's bit, top lists, a done marker, orig_hw, a stage's copy of the keys, the run attributes, a
shard of a merged file replaced by another shard of the same run) makes `fmpipe verify` exit 1 naming
what changed; readers (render, top, the viewer) refuse a merged file whose shard is not the one merged;
clean single, merged, copied and shards-folder files still pass."""

from __future__ import annotations

import http.client
import shutil
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np
import pytest
from conftest import single_and_merged, write_images
from helpers import fmpipe, run_all

import pipeline
from pipeline.errors import InputError
from pipeline.jobs import merge
from pipeline.storage.format import schema
from pipeline.storage.writing.files import shards_folder
from pipeline.viewer.config import ViewConfig
from pipeline.viewer.server import Viewer

OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")
SHARD0, SHARD1 = "shard-00000-of-00002.h5", "shard-00001-of-00002.h5"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """32 images (one broken) as one file and as 2 shards of 16, merged virtually and with --copy."""
    root = tmp_path_factory.mktemp("tamper")
    images = root / "images"
    write_images(images, 31, size=(40, 48))
    (images / "img004b.png").write_bytes(b"not an image")
    return {"root": root, **single_and_merged(root, images, OPTIONS)}


def private_merged(made, tmp_path: Path) -> Path:
    """A copy of the virtual merge and its shards folder (tests damage it)."""
    shutil.copytree(shards_folder(made["merged"]), shards_folder(tmp_path / "merged.h5"))
    return Path(shutil.copy(made["merged"], tmp_path / "merged.h5"))


def flip_key_bit(file: h5py.File) -> None:
    key = file[schema.KEY][0]  # "img000.jpg" → "hmg000.jpg": one bit
    file[schema.KEY][0] = bytes([key[0] ^ 0x01]) + key[1:]


def swap_top_rows(file: h5py.File) -> None:
    rows = file["stages/2/top/max_rows"]
    first = rows[0]
    rows[0] = np.concatenate([first[1::-1], first[2:]])


def set_attr(name: str, value):
    def tamper(file: h5py.File) -> None:
        file.attrs[name] = value

    return tamper


def set_item(path: str, index, value):
    def tamper(file: h5py.File) -> None:
        file[path][index] = value

    return tamper


def scale(path: str, factor: float):
    def tamper(file: h5py.File) -> None:
        file[path][0] = file[path][0] * factor

    return tamper


# (what is done to the file, what verify must name)
TAMPERS = {
    "key-bit": (
        flip_key_bit,
        ["/images/key changed since the file was sealed", "/images/key is not the collection the fingerprint names"],
    ),
    "top-rows": (swap_top_rows, ["/stages/2/top/max_rows changed since the file was sealed"]),
    "top-values": (scale("stages/1/top/mean_values", 2.0), ["/stages/1/top/mean_values changed"]),
    "top-response": (scale("stages/3/top/max_response", 0.5), ["/stages/3/top/max_response changed"]),
    "done-cleared": (
        set_item(schema.DONE, 3, False),
        ["the file is marked complete but 1 rows are not marked done", "/images/done changed"],
    ),
    "orig-hw": (set_item(schema.ORIG_HW, 2, (48, 40)), ["/images/orig_hw changed"]),
    "stage-image-copy": (set_item("stages/1/image", 0, "img001.png"), ["/stages/1/image changed"]),
    "fingerprint": (
        set_attr(schema.ATTR_FINGERPRINT, "0" * 64),
        ["the root attribute 'fingerprint' changed", "'fingerprint' attribute is not the sha256 of 'fingerprint_json'"],
    ),
    "model": (
        set_attr(schema.ATTR_MODEL, "resnet50"),
        ["the root attribute 'model' changed", "the 'model' attribute (resnet50) disagrees with 'fingerprint_json'"],
    ),
    "weights-digest": (
        set_attr(schema.ATTR_WEIGHTS_SHA256, "f" * 64),
        ["the root attribute 'weights_sha256' changed", "the 'weights_sha256' attribute (ffff"],
    ),
}


@pytest.mark.parametrize("kind", ["single", "copied"])
@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_each_single_tamper_is_named(made, tmp_path, case, kind):
    path = Path(shutil.copy(made[kind], tmp_path / "out.h5"))
    tamper, expected = TAMPERS[case]
    with h5py.File(path, "r+") as file:
        tamper(file)
    report = pipeline.verify(path)
    found = [str(p) for p in report.problems]
    assert not report.ok
    for text in expected:
        assert any(text in line for line in found), (text, found)
    assert len(found) == len(expected), found  # that change alone: nothing else is blamed


@pytest.mark.parametrize("case", ["key-bit", "fingerprint", "model", "weights-digest"])
def test_run_attributes_and_keys_are_checked_without_a_seal_too(made, tmp_path, case):
    """Files of an fmpipe before the seal: the run attributes and keys against fingerprint_json."""
    path = Path(shutil.copy(made["single"], tmp_path / "out.h5"))
    tamper, expected = TAMPERS[case]
    with h5py.File(path, "r+") as file:
        del file[schema.SEAL], file.attrs[schema.ATTR_SEAL]
        tamper(file)
    assert (
        [str(p) for p in pipeline.verify(path).problems]
        == [line for line in (str(p) for p in pipeline.verify(path).problems) if expected[1] in line]
        != []
    )


@pytest.mark.slow
def test_verify_exits_1_naming_each_tamper_through_the_cli(made, tmp_path):
    runs = []
    for case, (tamper, _) in TAMPERS.items():
        path = Path(shutil.copy(made["single"], tmp_path / f"{case}.h5"))
        with h5py.File(path, "r+") as file:
            tamper(file)
        runs.append(([*fmpipe_command(), "verify", str(path)], None))
    for (case, (_, expected)), done in zip(TAMPERS.items(), run_all(runs), strict=True):
        assert done.returncode == 1, (case, done.stdout, done.stderr)
        assert all(f"problem: {text}" in done.stdout for text in expected if text.startswith("/")), (case, done.stdout)
        assert "Traceback" not in done.stderr


def fmpipe_command() -> list[str]:
    import sys

    return [sys.executable, "-m", "pipeline"]


@pytest.mark.parametrize("kind", ["single", "merged", "copied", "shards"])
def test_clean_files_pass(made, kind):
    path = shards_folder(made["merged"]) if kind == "shards" else made[kind]
    report = pipeline.verify(path)
    assert report.ok, [str(p) for p in report.problems]
    assert not [w for w in report.warnings if "seal" in w]


def test_a_shard_replaced_by_another_shard_of_the_same_run_is_named(made, tmp_path):
    merged = private_merged(made, tmp_path)
    folder = shards_folder(merged)
    shutil.copy(folder / SHARD1, folder / SHARD0)  # same run, same shape, complete: only the seal tells
    done = fmpipe(["verify", merged])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"its shard '{folder.name}/{SHARD0}' is not the shard it was merged from" in done.stdout
    with pytest.raises(InputError, match="not the shard it was merged from"):
        pipeline.open_store(merged)
    found = [str(p) for p in pipeline.verify(folder).problems]  # the shards folder alone
    assert found == [f"{SHARD0}: it holds shard 1 of 2, not the shard its name says"]
    for args in (["top", merged, "--stage", "2", "--channel", "0"], ["render", merged, "--stage", "2"]):
        refused = fmpipe(args, cwd=tmp_path)
        assert refused.returncode == 2 and "not the shard it was merged from" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("case", ["key-bit", "top-rows", "orig-hw", "model"])
def test_merge_refuses_a_shard_changed_since_it_was_finalised(made, tmp_path, case):
    """Merge copies keys, done markers, failures, top lists and attributes: it must not seal a changed copy."""
    merged = private_merged(made, tmp_path)
    merged.unlink()
    tamper = TAMPERS[case][0]
    with h5py.File(shards_folder(merged) / SHARD0, "r+") as file:
        tamper(file)
    with pytest.raises(InputError, match=f"{SHARD0}.*changed since the file was sealed"):
        merge.merge(merged)
    assert not merged.exists()


def test_a_rewritten_shard_with_equal_contents_still_reads(made, tmp_path):
    """Re-extracting a shard the same way gives the same bytes, hence the same seal: nothing to refuse."""
    merged = private_merged(made, tmp_path)
    shard = shards_folder(merged) / SHARD1
    data = shard.read_bytes()
    shard.unlink()
    shard.write_bytes(data)  # another inode, same bytes
    assert pipeline.verify(merged).ok


def test_the_viewer_refuses_maps_once_a_shard_is_gone_or_replaced(made, tmp_path):
    merged = private_merged(made, tmp_path)
    folder = shards_folder(merged)
    viewer = Viewer(ViewConfig(str(merged), port=0))
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    try:
        assert get(viewer, "/tile/2/20/0.png")[0] == 200
        (folder / SHARD1).rename(folder / "aside.h5")
        status, body = get(viewer, "/tile/2/21/0.png")  # row 21 lies in shard 1: never blank tiles
        assert status >= 500 and f"its shard '{folder.name}/{SHARD1}' is missing" in body
        shutil.copy(folder / SHARD0, folder / SHARD1)  # a shard of the same run in its place
        status, body = get(viewer, "/api/top?stage=2&channel=1&k=3")
        assert status >= 500 and "not the shard it was merged from" in body
        (folder / "aside.h5").replace(folder / SHARD1)  # restored: served again
        assert get(viewer, "/tile/2/22/0.png")[0] == 200
    finally:
        viewer.shutdown()
        thread.join(10)
        viewer.close()


def get(viewer: Viewer, target: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=30)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()
