"""IMAGES as a list file: the list's order, its keys and root, missing files as failure rows, refusals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_images

import pipeline
from pipeline import sources
from pipeline.errors import InputError
from pipeline.storage.format import schema

# batch size 1: every image is computed alone, so a list's rows equal a folder run's bit for bit
OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=1, workers=0, device="cpu")


def stored_rows(path: Path) -> dict[str, list[np.ndarray]]:
    """{key: [stage maps of its row]} of the done, not failed rows."""
    with pipeline.open_store(path, require_complete=True) as store:
        return {key: [s.data[row] for s in store.stages] for row, key in enumerate(store.keys) if store.ok[row]}


def test_a_list_is_taken_in_its_order_and_a_missing_file_is_a_failure_row(tmp_path):
    photos = tmp_path / "photos"
    write_images(photos, 6, size=(24, 20))  # img000.jpg .. img005.png; three of them are not listed
    listing = photos / "study.txt"
    listing.write_text(
        f"# stimuli in presentation order\n\n  img003.png  \n{photos}/img000.jpg\nmissing.png\nsub/../img001.png\r\n"
    )
    out = tmp_path / "study.h5"
    summary = pipeline.extract(listing, out, **OPTIONS)
    assert (summary.stored, summary.failed) == (3, 1)
    keys = ["img003.png", f"{photos}/img000.jpg", "missing.png", "img001.png"]
    with pipeline.open_store(out, require_complete=True) as store:
        assert store.keys == keys
        assert store.attrs[schema.ATTR_IMAGES_ROOT] == str(photos)
        assert [key for key, _ in store.failures] == ["missing.png"] and "not found" in store.failures[0][1]
        np.testing.assert_array_equal(store.orig_hw, [[24, 20], [24, 20], [-1, -1], [24, 20]])
    with h5py.File(out) as file:
        digests = [bytes(d).decode() for d in file[schema.SOURCE_SHA256][:]]
    for key, digest in zip(keys, digests, strict=True):
        path = sources.source_path(str(photos), key)
        expected = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
        assert digest == expected, key
    pipeline.extract(photos, tmp_path / "folder.h5", **OPTIONS)  # the whole folder, sorted
    listed, everything = stored_rows(out), stored_rows(tmp_path / "folder.h5")
    for key, maps in listed.items():
        for stage, (ours, theirs) in enumerate(zip(maps, everything[Path(key).name], strict=True)):
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{key}, stage {stage}")
    assert pipeline.verify(out).ok


def test_paths_outside_the_list_folder_make_every_key_absolute_below_a_common_root(tmp_path):
    write_images(tmp_path / "photos", 2, size=(24, 20))
    write_images(tmp_path / "far" / "away", 1, size=(24, 20), prefix="far")
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "l.txt"
    listing.write_text(f"../photos/img001.png\n{tmp_path}/far/away/far000.jpg\n../lists/../photos/img000.jpg\n")
    out = tmp_path / "o.h5"
    assert pipeline.extract(listing, out, **OPTIONS).stored == 3
    with pipeline.open_store(out) as store:
        assert store.keys == [
            f"{tmp_path}/photos/img001.png",
            f"{tmp_path}/far/away/far000.jpg",
            f"{tmp_path}/photos/img000.jpg",
        ]
        assert store.attrs[schema.ATTR_IMAGES_ROOT] == str(tmp_path)
    report = pipeline.verify(out)  # reads every source through source_path
    assert report.ok and report.sources_checked == 3


def test_source_path_takes_absolute_keys_only_inside_the_root(tmp_path):
    root = str(tmp_path / "root")
    assert sources.source_path(root, f"{root}/a/b.png") == Path(root, "a", "b.png")
    assert sources.source_path(root + "/", f"{root}/b.png") == Path(root, "b.png")
    assert sources.source_path("/", f"{root}/b.png") == Path(root, "b.png")
    for key in (
        f"{tmp_path}/elsewhere.png",
        f"{root}x/b.png",
        f"{root}/../b.png",
        f"{root}//b.png",
        f"{root}/./b.png",
        "/",
    ):
        assert sources.source_path(root, key) is None, key
    assert sources.source_path(root, "a/b.png") == Path(root, "a", "b.png")


def test_order_is_part_of_the_collection(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "ab.txt").write_text("img000.jpg\nimg001.png\nimg002.jpg\n")
    (tmp_path / "ba.txt").write_text("img001.png\nimg000.jpg\nimg002.jpg\n")
    ab, ba = sources.collect(tmp_path / "ab.txt"), sources.collect(tmp_path / "ba.txt")
    assert ab.keys == sources.collect(tmp_path).keys == ["img000.jpg", "img001.png", "img002.jpg"]
    assert ba.keys == ["img001.png", "img000.jpg", "img002.jpg"] and ba.kind == "list"
    assert ab.keys_sha256 != ba.keys_sha256
    out = tmp_path / "o.h5"
    pipeline.extract(tmp_path / "ab.txt", out, **OPTIONS)
    with pytest.raises(pipeline.errors.OutputExistsError, match="the image collection"):
        pipeline.extract(tmp_path / "ba.txt", out, **OPTIONS)


@pytest.mark.slow
def test_a_path_listed_twice_is_refused_naming_both_lines(tmp_path):
    write_images(tmp_path / "photos", 2)
    listing = tmp_path / "photos" / "l.txt"
    listing.write_text(f"img000.jpg\n# a comment\nimg001.png\n{tmp_path}/photos/./img000.jpg\n")
    with pytest.raises(InputError, match=r"l\.txt: lines 1 and 4 both name .*/photos/img000\.jpg"):
        sources.collect(listing)
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(listing), str(tmp_path / "o.h5"), "--random-init"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "lines 1 and 4 both name" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# nothing\n\n", "names no image"),
        (b"a.png\n\xff\xfe.png\n", r"not a UTF-8 text file \(line 2\)"),
        (b"a.png\n.\n", "line 2: '.' names the list's folder"),
    ],
)
def test_unusable_lists_are_input_errors(tmp_path, content, message):
    listing = tmp_path / "l.txt"
    listing.write_bytes(content)
    with pytest.raises(InputError, match=message):
        pipeline.extract(listing, tmp_path / "o.h5", **OPTIONS)


def test_an_image_file_is_not_taken_for_a_list(tmp_path):
    write_images(tmp_path, 1)
    with pytest.raises(InputError, match="is an image file; give the folder"):
        sources.collect(tmp_path / "img000.jpg")
