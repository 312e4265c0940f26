"""Resume: a killed or crashed extract continues from the first not-done image and ends identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import write_images
from helpers import IGNORED_ATTRS, differences, failures_of, snapshot

import pipeline
from pipeline.errors import FingerprintMismatch, InputError
from pipeline.storage.writing import batches, rowstate

OPTIONS = dict(model="resnet18", random_init=True, size=(64, 64), batch_size=2, workers=0, device="cpu")
# The runs below write to other paths: config_json names OUT, and the seal digests config_json.
IGNORED = IGNORED_ATTRS | {"config_json", "seal_sha256"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Seven images and one broken file (row 3): four batches of two."""
    folder = tmp_path_factory.mktemp("resume") / "images"
    write_images(folder, 7, size=(64, 64))
    (folder / "img002b.png").write_bytes(b"broken")
    return folder


@pytest.fixture(scope="module")
def reference(images) -> dict:
    out = images.parent / "reference.h5"
    pipeline.extract(str(images), str(out), **OPTIONS)
    return snapshot(out, IGNORED)


def crash_at_row(monkeypatch, row: int, after_rows_written: bool = False) -> None:
    """Make the writer fail on the batch holding `row`, before its done markers (as a kill would)."""
    original = batches.BatchWriter._write

    def failing(self, batch):
        if row in batch.rows:
            if after_rows_written:  # stats and failures written and flushed, done not yet
                rowstate.write_rows(self.file, self.plan, batch)
                self.file.flush()
            raise RuntimeError("simulated crash")
        original(self, batch)

    monkeypatch.setattr(batches.BatchWriter, "_write", failing)


def assert_identical(out: Path, reference: dict) -> None:
    got = snapshot(out, IGNORED)
    assert bool(got["@complete"])
    assert differences(got, reference) == []  # the seal left out with config_json (it digests it)
    assert pipeline.verify(out).ok  # and the seal describes what the resumed run wrote
    assert failures_of(got) == failures_of(reference)


def test_rerun_continues_from_the_first_not_done_image(images, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    crash_at_row(monkeypatch, 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.extract(str(images), str(out), **OPTIONS)
    assert not out.exists()
    with h5py.File(f"{out}.partial") as f:
        assert f["images/done"][:].tolist() == [True] * 4 + [False] * 4 and not f.attrs["complete"]
    monkeypatch.undo()
    summary = pipeline.extract(str(images), str(out), **OPTIONS)
    assert (summary.done_before, summary.stored, summary.failed) == (4, 4, 0)  # nothing recomputed
    assert_identical(out, reference)
    again = pipeline.extract(str(images), str(out), **OPTIONS)
    assert (again.done_before, again.stored, again.failed) == (8, 0, 0)


def test_failures_of_an_unfinished_batch_are_not_listed_twice(images, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    crash_at_row(monkeypatch, 3, after_rows_written=True)
    with pytest.raises(RuntimeError):
        pipeline.extract(str(images), str(out), **OPTIONS)
    with h5py.File(f"{out}.partial") as f:
        assert f["failures/index"][:].tolist() == [3] and not f["images/done"][3]
    monkeypatch.undo()
    summary = pipeline.extract(str(images), str(out), **OPTIONS)
    assert (summary.done_before, summary.failed) == (2, 1)
    assert_identical(out, reference)


def test_a_different_configuration_is_refused_naming_it(images, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    crash_at_row(monkeypatch, 4)
    with pytest.raises(RuntimeError):
        pipeline.extract(str(images), str(out), **OPTIONS)
    monkeypatch.undo()
    with pytest.raises(FingerprintMismatch) as refused:
        pipeline.extract(str(images), str(out), **{**OPTIONS, "size": (48, 48)})
    message = str(refused.value)
    assert "was started with --size 64x64 (this run: 48x48)." in message, message
    assert "To keep its 4 done images, rerun with --size 64x64 to resume it; or pass --overwrite" in message
    summary = pipeline.extract(str(images), str(out), overwrite=True, **{**OPTIONS, "size": (48, 48)})
    assert summary.done_before == 0 and summary.stored + summary.failed == 8
    with h5py.File(out) as f:
        assert f["stages/0/data"].shape[2:] == (24, 24) and f.attrs["complete"]


def test_an_unreadable_partial_file_says_to_start_over(images, tmp_path):
    out = tmp_path / "out.h5"
    Path(f"{out}.partial").write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match=r"cannot be resumed.*--overwrite"):
        pipeline.extract(str(images), str(out), **OPTIONS)
    assert pipeline.extract(str(images), str(out), overwrite=True, **OPTIONS).done_before == 0


# -- sources that are missing, broken or moved when a run resumes -------------------------------


def _crashed_copy(images: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the images and a run of it stopped with rows 0-3 done (row 3: the broken file)."""
    folder, out = tmp_path / "images", tmp_path / "out.h5"
    shutil.copytree(images, folder)
    crash_at_row(monkeypatch, 4)
    with pytest.raises(RuntimeError):
        pipeline.extract(str(folder), str(out), **OPTIONS)
    monkeypatch.undo()
    return folder, out


def test_a_done_image_missing_at_resume_keeps_its_maps_and_is_reported(
    images, reference, tmp_path, monkeypatch, caplog
):
    folder, out = _crashed_copy(images, tmp_path, monkeypatch)
    # Briefly missing (row 0, done): a dangling link keeps the key in the collection, as an image
    # list would (a file that is simply gone changes the collection, which a resume refuses).
    (folder / "img000.jpg").rename(tmp_path / "aside.jpg")
    (folder / "img000.jpg").symlink_to(tmp_path / "gone.jpg")
    summary = pipeline.extract(str(folder), str(out), **OPTIONS)
    assert (summary.done_before, summary.redone, summary.failed) == (4, 0, 0)
    assert "1 done images cannot be read" in caplog.text and "img000.jpg" in caplog.text
    got = snapshot(out, IGNORED | {"images_root"})
    assert differences(got, {k: v for k, v in reference.items() if "images_root" not in k}) == []  # row 0 kept
    assert failures_of(got) == failures_of(reference)  # not a failure row
    (folder / "img000.jpg").unlink()
    (tmp_path / "aside.jpg").rename(folder / "img000.jpg")
    again = pipeline.extract(str(folder), str(out), **OPTIONS)
    assert (again.done_before, again.stored, again.failed) == (8, 0, 0)


def test_a_done_image_broken_at_resume_is_a_failure_whose_maps_read_nan(images, reference, tmp_path, monkeypatch):
    folder, out = _crashed_copy(images, tmp_path, monkeypatch)
    (folder / "img001.png").write_bytes(b"not an image any more")  # row 1, done with finite maps
    summary = pipeline.extract(str(folder), str(out), **OPTIONS)
    assert (summary.redone, summary.failed) == (1, 1)
    with pipeline.open_store(out, require_complete=True) as store:
        assert dict(store.failures).keys() == {"img001.png", "img002b.png"}
        for view in store.stages:
            assert np.isnan(view.data[1]).all() and np.isnan(view.mean[1]).all(), view.index  # not the old maps
            assert np.isfinite(view.data[0]).all() and np.isfinite(view.data[2]).all()
        assert not store.ok[1]


def test_a_resume_from_a_corrected_copy_records_the_new_images_root(images, reference, tmp_path, monkeypatch):
    folder, out = _crashed_copy(images, tmp_path, monkeypatch)
    corrected = tmp_path / "corrected"
    shutil.copytree(folder, corrected)
    summary = pipeline.extract(str(corrected), str(out), **OPTIONS)
    assert (summary.done_before, summary.redone) == (4, 0)  # the done rows' digests match there
    got = snapshot(out, IGNORED)
    assert str(got["@images_root"]) == str(corrected.resolve()) or got["@images_root"] == str(corrected)
    assert differences(got, {**reference, "@images_root": got["@images_root"]}) == []
    assert pipeline.verify(out).ok  # the sources are where the file says


def test_a_resume_from_a_folder_missing_done_images_keeps_the_recorded_root(images, tmp_path, monkeypatch):
    folder, out = _crashed_copy(images, tmp_path, monkeypatch)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "img000.jpg").unlink()
    (other / "img000.jpg").symlink_to(tmp_path / "gone.jpg")  # the key is there, its file is not
    pipeline.extract(str(other), str(out), **OPTIONS)
    with h5py.File(out) as f:
        assert f.attrs["images_root"] == str(folder.resolve()) or f.attrs["images_root"] == str(folder)
