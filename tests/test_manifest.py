"""Job arrays discover the collection once: OUT.shards/collection.json, written atomically, checked."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from conftest import write_images

import pipeline
from pipeline import sources
from pipeline.errors import InputError
from pipeline.jobs import manifest, shards
from pipeline.jobs.merge import merge

OPTIONS = dict(model="tiny_models:plain_net", size=(16, 16), batch_size=4, workers=0, device="cpu")


@pytest.fixture
def walks(monkeypatch) -> list[str]:
    """Every folder os.walk is asked to walk (sources.discover walks with it)."""
    calls: list[str] = []
    real = os.walk

    def counting(top, *args, **kwargs):
        calls.append(str(top))
        return real(top, *args, **kwargs)

    monkeypatch.setattr(os, "walk", counting)
    return calls


def test_the_tasks_of_an_array_walk_the_folder_once(tmp_path, walks):
    images = tmp_path / "images"
    keys = write_images(images, 40, size=(16, 16))
    out = tmp_path / "out.h5"
    pipeline.extract(images, out, shard_index=2, num_shards=4, **OPTIONS)  # any task may start first
    (images / "late.png").write_bytes((images / keys[1]).read_bytes())  # added after the first task began
    for index in (0, 1, 3):
        pipeline.extract(images, out, shard_index=index, num_shards=4, **OPTIONS)
    assert walks == [str(images)]  # four tasks, one walk
    found = manifest.read(manifest.manifest_path(out))
    assert found is not None and found[0].keys == keys and found[0].source == str(images.resolve())
    record = json.loads(manifest.manifest_path(out).read_text())
    assert record["keys_sha256"] == sources.keys_sha256(keys) and record["kind"] == "folder"
    summary = merge(out)
    assert summary.images == 40  # the image added later is not in the collection
    text = shards.describe_folder(f"{out}.shards")  # info ignores the manifest
    assert "4 of 4 shards complete; images done 40 of 40" in text
    assert sorted(p.name for p in Path(f"{out}.shards").iterdir()) == [
        "collection.json",
        *(f"shard-0000{i}-of-00004.h5" for i in range(4)),
    ]


def test_tasks_starting_together_publish_one_manifest(tmp_path, walks, monkeypatch):
    images = tmp_path / "images"
    keys = write_images(images, 5, size=(8, 8))
    out = str(tmp_path / "out.h5")
    results, errors = [], []
    # Proof of overlap: the task that walks the folder is held inside its walk until each of the
    # other seven has been refused the manifest's lock at least once (so they ran while it held
    # it, and waited instead of walking too); without overlap the walk times out and fails.
    refused: set[int] = set()
    all_refused = threading.Event()
    real_acquire, counting_walk = manifest.OutputLock.acquire, os.walk  # os.walk: the `walks` fixture's counter

    def acquire(path):
        try:
            return real_acquire(path)
        except manifest.OutputLockedError:
            refused.add(threading.get_ident())
            if len(refused) == 7:
                all_refused.set()
            raise

    def held_walk(top, *args, **kwargs):
        assert all_refused.wait(60), f"only {len(refused)} of 7 tasks met the held lock"
        return counting_walk(top, *args, **kwargs)

    monkeypatch.setattr(manifest.OutputLock, "acquire", acquire)
    monkeypatch.setattr(manifest, "POLL_S", 0.01)
    monkeypatch.setattr(os, "walk", held_walk)

    def task() -> None:
        try:
            results.append(manifest.collection_for(str(images), out).keys)
        except Exception as err:  # pragma: no cover - shown by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=task) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [keys] * 8
    assert len(walks) == 1 and len(refused) == 7  # the others waited for the manifest instead of walking too
    assert sorted(os.listdir(f"{out}.shards")) == ["collection.json"]  # no temporary file or lock left


def test_a_task_given_other_images_is_refused(tmp_path):
    for name in ("a", "b"):
        write_images(tmp_path / name, 3, size=(16, 16))
    out = tmp_path / "out.h5"
    pipeline.extract(tmp_path / "a", out, shard_index=0, num_shards=2, **OPTIONS)
    with pytest.raises(InputError, match=r"holds the images of folder .*/a .* but this task was given .*/b\. Give"):
        pipeline.extract(tmp_path / "b", out, shard_index=1, num_shards=2, **OPTIONS)
    with pytest.raises(InputError, match=r"remove .*out\.h5\.shards/ once no task of the old array runs"):
        pipeline.extract(tmp_path / "b", out, shard_index=1, num_shards=2, overwrite=True, **OPTIONS)


def test_a_list_changed_after_the_first_task_is_refused(tmp_path):
    write_images(tmp_path, 3, size=(16, 16))
    listing = tmp_path / "l.txt"
    listing.write_text("img002.jpg\nimg000.jpg\n")
    out = tmp_path / "out.h5"
    pipeline.extract(listing, out, shard_index=0, num_shards=2, **OPTIONS)
    os.utime(listing)  # touched, not changed: still the same list
    pipeline.extract(listing, out, shard_index=1, num_shards=2, **OPTIONS)
    with pipeline.open_store(merge(out).out) as store:
        assert store.keys == ["img002.jpg", "img000.jpg"]
    listing.write_text("img002.jpg\nimg001.png\n")
    with pytest.raises(InputError, match=r"the image list .*l\.txt changed since the first task"):
        pipeline.extract(listing, out, shard_index=1, num_shards=2, **OPTIONS)


def test_a_dry_run_writes_no_manifest(tmp_path):
    write_images(tmp_path / "images", 2, size=(16, 16))
    summary = pipeline.extract(tmp_path / "images", tmp_path / "o.h5", num_shards=2, dry_run=True, **OPTIONS)
    assert summary.images == 2 and not (tmp_path / "o.h5.shards").exists()


def test_a_damaged_or_foreign_manifest_is_refused(tmp_path):
    write_images(tmp_path / "images", 2, size=(16, 16))
    out = tmp_path / "o.h5"
    collection = manifest.collection_for(str(tmp_path / "images"), str(out))
    path = manifest.manifest_path(out)
    record = json.loads(path.read_text())
    record["keys"] = list(reversed(record["keys"]))
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"does not match its own digest\. Remove it once no task"):
        manifest.collection_for(str(tmp_path / "images"), str(out))
    path.write_text('{"keys": [')
    with pytest.raises(InputError, match="cannot be read"):
        manifest.read(path)
    path.unlink()
    assert manifest.collection_for(str(tmp_path / "images"), str(out)) == collection


def test_publishing_twice_keeps_the_first(tmp_path):
    path = tmp_path / "shards" / "collection.json"
    first = sources.Collection(["a.png"], "/r", "/r", "folder")
    second = sources.Collection(["b.png"], "/r", "/r", "folder")
    assert manifest.publish(first, None, path) == (first, None)
    assert manifest.publish(second, None, path) == (first, None)
    assert os.listdir(path.parent) == ["collection.json"]
