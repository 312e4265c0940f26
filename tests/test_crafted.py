"""Crafted files, from the outside: nothing a file names is imported or run (`cProfile:main`, `code:interact`,
a module of the test's own that leaves a marker when imported), by any command; hostile structures (a
soft-link loop, a stage named with a non-ASCII digit, rows of 10^9, string statistics, 10^10 declared
rows in a small file, HDF5 external storage and external links) end in "fmpipe: error: ..." with exit 2,
no traceback, and nothing read from outside the file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np
import pytest
from conftest import write_images
from helpers import _env

import pipeline
from pipeline.errors import InputError
from pipeline.jobs import merge
from pipeline.storage.format import schema
from pipeline.storage.integrity.seal import write_seal
from pipeline.storage.writing.files import shards_folder

OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")
MARKER_MODULE = "fmpipe_marker_module"
SECRET = b"SECRET-BYTES-OUTSIDE-THE-FILE"
SPECS = ("cProfile:main", "code:interact", f"{MARKER_MODULE}:factory")
TIMEOUT_S = 60  # a hang fails the test; every refusal here takes about a second


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """12 images (one broken): one file, and a job array of 2 shards (16 + 0 rows: one shard)."""
    root = tmp_path_factory.mktemp("crafted")
    images = root / "images"
    write_images(images, 11, size=(40, 48))
    (images / "img004b.png").write_bytes(b"not an image")
    single = root / "single.h5"
    pipeline.extract(str(images), str(single), **OPTIONS)
    return {"root": root, "images": images, "single": single}


def run(args: list, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` from `cwd` (so a module planted there is importable), stdin given."""
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S)


def plant(folder: Path) -> list[Path]:
    """Code that leaves a marker if anything runs it: a module (on import), a `verify` script that
    `cProfile:main` would run (it runs argv[1]), and stdin lines `code:interact` would execute."""
    markers = [folder / "imported.marker", folder / "cprofile.marker", folder / "interact.marker"]
    (folder / f"{MARKER_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(markers[0])!r}).write_text('x')\ndef factory():\n    return None\n"
    )
    (folder / "verify").write_text(f"import pathlib\npathlib.Path({str(markers[1])!r}).write_text('x')\n")
    return markers


def interact_input(markers: list[Path]) -> str:
    return f"import pathlib; pathlib.Path({str(markers[2])!r}).write_text('x')\n"


def name_model(path: Path, spec: str) -> None:
    """Every place a file names its model, and the stage modules, set to `spec`."""
    with h5py.File(path, "r+") as file:
        config = json.loads(file.attrs[schema.ATTR_CONFIG])
        parts = json.loads(file.attrs[schema.ATTR_FINGERPRINT_JSON])
        file.attrs[schema.ATTR_CONFIG] = json.dumps({**config, "model": spec, "unsafe_pickle": True})
        file.attrs[schema.ATTR_FINGERPRINT_JSON] = json.dumps({**parts, "model": spec})
        file.attrs[schema.ATTR_MODEL] = spec
        file.attrs[schema.ATTR_WEIGHTS] = f"factory:{spec}"
        for name in schema.map_groups(file):
            file[name].attrs[schema.ATTR_STAGE_MODULE] = spec


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_no_command_runs_code_a_file_names(made, tmp_path, spec):
    markers = plant(tmp_path)
    crafted = Path(shutil.copy(made["single"], tmp_path / "crafted.h5"))
    name_model(crafted, spec)
    stdin = interact_input(markers)
    refused = run(["verify", "--recompute", "1", crafted], tmp_path, stdin)
    assert refused.returncode == 2, refused.stderr
    if ":" in spec and not spec.startswith("tv:"):
        assert "never runs code a file names" in refused.stderr
        assert f"--model {spec}" in refused.stderr and "--trust-model" in refused.stderr
    for args in (
        ["info", crafted],
        ["verify", crafted],
        ["top", crafted, "--stage", "2", "--channel", "1", "--json"],
        ["render", crafted, "--stage", "2", "--top-k", "2", "--out", tmp_path / "site", "--html"],
        ["gallery", crafted, "--out", tmp_path / "site"],
    ):
        done = run(args, tmp_path, stdin)
        assert done.returncode in (0, 1), (args, done.stderr)
        assert "Traceback" not in done.stderr
    serve_briefly(crafted)
    assert [m.name for m in markers if m.exists()] == []
    if spec.startswith(MARKER_MODULE):  # the control: named by the user, the planted module is imported
        trusted = run(["verify", "--recompute", "1", crafted, "--model", spec], tmp_path)
        assert trusted.returncode == 2 and markers[0].exists(), trusted.stderr


def serve_briefly(path: Path) -> None:
    """The viewer on `path`: its pages, a tile and a ranking, then stop."""
    import http.client

    from pipeline.viewer.config import ViewConfig
    from pipeline.viewer.server import Viewer

    viewer = Viewer(ViewConfig(str(path), port=0))
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    try:
        for target in ("/", "/image/0", "/tile/2/0/1.png", "/api/top?stage=2&channel=1&k=3"):
            conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=30)
            conn.request("GET", target)
            assert conn.getresponse().status == 200, target
            conn.close()
    finally:
        viewer.shutdown()
        thread.join(10)
        viewer.close()


def job_array(made, folder: Path) -> Path:
    """OUT whose OUT.shards/ holds the 2 complete shards of a job array (12 rows and 0: shards are cut at 16)."""
    out = folder / "out.h5"
    for index in range(2):
        pipeline.extract(str(made["images"]), str(out), shard_index=index, num_shards=2, **OPTIONS)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_merge_and_its_file_run_no_code_the_shards_name(made, tmp_path, spec):
    markers = plant(tmp_path)
    out = job_array(made, tmp_path)
    for shard in shards_folder(out).glob("shard-*"):
        name_model(shard, spec)
        with h5py.File(shard, "r+") as file:  # crafted with care: a seal that matches (tamper-evident, not -proof)
            write_seal(file, shard)
    done = run(["merge", out], tmp_path, interact_input(markers))
    assert done.returncode == 0, done.stderr
    refused = run(["verify", out, "--recompute", "2"], tmp_path, interact_input(markers))
    assert refused.returncode == 2 and "--trust-model" in refused.stderr
    assert [m.name for m in markers if m.exists()] == []


def test_a_factory_model_is_built_only_when_the_user_names_it(made, tmp_path, monkeypatch):
    crafted = Path(shutil.copy(made["single"], tmp_path / "crafted.h5"))
    name_model(crafted, "tiny_models:inplace_net")
    with pytest.raises(InputError, match="never runs code a file names"):
        pipeline.verify(crafted, recompute=1)
    with pytest.raises(InputError, match="records the model 'tiny_models:inplace_net', not 'resnet18'"):
        pipeline.verify(crafted, recompute=1, model="resnet18")
    for trusted in (dict(model="tiny_models:inplace_net"), dict(trust_model=True)):
        # named or trusted: built (tests/ is importable), then refused for its other weights, never run silently
        with pytest.raises(InputError, match="weights loaded now"):
            pipeline.verify(crafted, recompute=1, **trusted)


@pytest.mark.parametrize("name", ["tv:not_a_model", "not_a_timm_model"])
def test_unknown_registry_names_are_refused_before_building(made, tmp_path, name):
    crafted = Path(shutil.copy(made["single"], tmp_path / "crafted.h5"))
    name_model(crafted, name)
    with pytest.raises(InputError, match=r"not in timm's registry|not a torchvision model"):
        pipeline.verify(crafted, recompute=1)


# -- hostile structures ---------------------------------------------------------------------------


def soft_link_loop(file: h5py.File, folder: Path) -> None:
    del file[schema.DONE]
    file[schema.DONE] = h5py.SoftLink(f"/{schema.DONE}")


def non_ascii_stage(file: h5py.File, folder: Path) -> None:
    file.move("stages/3", "stages/\u0663")  # ARABIC-INDIC DIGIT THREE: "٣".isdigit() and int("٣") == 3


def failure_row(file: h5py.File, folder: Path) -> None:
    file[schema.FAILURE_INDEX][0] = 10**9


def string_statistics(file: h5py.File, folder: Path) -> None:
    shape = file["stages/2/max"].shape
    del file["stages/2/max"]
    file.create_dataset("stages/2/max", data=np.full(shape, b"x", dtype="S4"))


def external_storage(file: h5py.File, folder: Path) -> None:
    secret = folder.parent / "secret.bin"
    secret.write_bytes(SECRET * 2000)
    shape = file["stages/2/max"].shape
    del file["stages/2/max"]
    file.create_dataset("stages/2/max", shape=shape, dtype="float32", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def external_link(file: h5py.File, folder: Path) -> None:
    secret = folder.parent / "secret.h5"
    with h5py.File(secret, "w") as other:
        other["rows"] = np.frombuffer(SECRET[:24], dtype=np.int64).reshape(1, 3)
    del file["stages/2/top/max_rows"]
    file["stages/2/top/max_rows"] = h5py.ExternalLink(str(secret), "/rows")


def declared_rows(file: h5py.File, folder: Path) -> None:
    """Every per-image dataset and the maps re-declared with 10^10 rows (chunked, compressed: tiny)."""
    n = 10**10
    for name in [schema.KEY, schema.DONE, schema.ORIG_HW, schema.SOURCE_SHA256, schema.SOURCE_SIZE]:
        old = file[name]
        dtype, tail = old.dtype, old.shape[1:]
        del file[name]
        file.create_dataset(name, shape=(n, *tail), dtype=dtype, chunks=(4096, *tail), compression="gzip")
    for group in schema.map_groups(file):
        for name in (schema.DATA, *schema.STAT_NAMES):
            old = file[f"{group}/{name}"]
            shape, dtype, chunks = old.shape, old.dtype, old.chunks or (1024, old.shape[1])
            del file[f"{group}/{name}"]
            file.create_dataset(
                f"{group}/{name}", shape=(n, *shape[1:]), dtype=dtype, chunks=chunks, compression="gzip"
            )


def virtual_outside_maps(file: h5py.File, folder: Path) -> None:
    """/images/orig_hw as a virtual dataset reading another file (a path the store would never check)."""
    other = folder.parent / "other.h5"
    shape = file[schema.ORIG_HW].shape
    with h5py.File(other, "w") as source:
        source.create_dataset("hw", data=np.ones(shape, np.int32))
    layout = h5py.VirtualLayout(shape=shape, dtype="int32")
    layout[:] = h5py.VirtualSource(str(other), "hw", shape=shape)
    del file[schema.ORIG_HW]
    file.create_virtual_dataset(schema.ORIG_HW, layout, fillvalue=-1)


def input_size(file: h5py.File, folder: Path) -> None:
    file.attrs[schema.ATTR_INPUT_SIZE] = [10**9, 10**9]  # overlays and the viewer's photos decode at this size


CRAFTED = {
    "virtual-outside-maps": (virtual_outside_maps, "/images/orig_hw is a virtual dataset"),
    "input-size": (input_size, "its input_size (1000000000, 1000000000) is not an image size"),
    "soft-link-loop": (soft_link_loop, "/images/done is a soft link"),
    "non-ascii-stage": (non_ascii_stage, "holds a group '\u0663' that is not named by a stage index"),
    "failure-row": (failure_row, "/failures/index lists row 1000000000, outside 0..11"),
    "string-statistics": (string_statistics, "stage 2 'max' is |S4"),
    "external-storage": (external_storage, "/stages/2/max keeps its bytes in another file"),
    "external-link": (external_link, "/stages/2/top/max_rows is an external link"),
    "declared-rows": (declared_rows, "declares 10000000000 images but is only"),
}


def crafted_file(made, folder: Path, case: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = Path(shutil.copy(made["single"], folder / f"{case}.h5"))
    with h5py.File(path, "r+") as file:
        CRAFTED[case][0](file, folder)
    return path


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_readers_refuse_each_crafted_file(made, tmp_path, case):
    path = crafted_file(made, tmp_path / "files", case)
    for opener in (pipeline.open_store, pipeline.verify):
        with pytest.raises(InputError, match=re.escape(CRAFTED[case][1])):
            opener(path)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_every_command_refuses_each_crafted_file_with_exit_2(made, tmp_path, case):
    path = crafted_file(made, tmp_path / "files", case)
    for args in (
        ["info", path],
        ["verify", path],
        ["top", path, "--stage", "2", "--channel", "0", "--json"],
        ["render", path, "--stage", "2", "--out", tmp_path / "site"],
        ["view", path, "--port", "0"],
    ):
        done = run(args, tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("fmpipe: error: ") and CRAFTED[case][1] in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and SECRET.decode() not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case", ["external-storage", "external-link", "soft-link-loop"])
def test_merge_refuses_a_crafted_shard_and_copies_nothing_from_outside(made, tmp_path, case):
    out = job_array(made, tmp_path)
    shard = shards_folder(out) / "shard-00000-of-00002.h5"
    with h5py.File(shard, "r+") as file:
        CRAFTED[case][0](file, shards_folder(out))
    for copy in ([], ["--copy"]):
        done = run(["merge", out, *copy], tmp_path)
        assert done.returncode == 2 and CRAFTED[case][1] in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists() and not (tmp_path / "out.h5.merging").exists()


def test_top_list_rows_outside_the_file_are_refused_where_read(made, tmp_path):
    path = Path(shutil.copy(made["single"], tmp_path / "out.h5"))
    with h5py.File(path, "r+") as file:
        file["stages/2/top/max_rows"][1, 0] = 10**9
    from pipeline.storage.reading.toplists import top_images

    with (
        pytest.raises(InputError, match=r"top lists name row 1000000000, outside 0\.\.11"),
        pipeline.open_store(path) as s,
    ):
        top_images(s, 2, 1, 3)
    report = pipeline.verify(path)
    assert "stage 2: max list: its top lists name row 1000000000, outside 0..11; the file is damaged" in [
        str(p) for p in report.problems
    ]


def test_merge_refuses_a_shard_whose_top_lists_name_rows_it_does_not_have(made, tmp_path):
    out = job_array(made, tmp_path)
    shard = shards_folder(out) / "shard-00000-of-00002.h5"
    with h5py.File(shard, "r+") as file:
        file["stages/1/top/mean_rows"][0, 0] = 10**9
    with pytest.raises(InputError, match="its top lists name row 1000000000"):
        merge.merge(out)


# -- a file being written -------------------------------------------------------------------------


def test_a_partial_file_being_written_is_reopened_not_called_damaged(made, tmp_path, monkeypatch):
    """HDF5 reading a chunk index newer than its view of a file being written says "addr overflow"
    (measured with an instrumented extract in docs/reliability.md): render's painter reopens the file
    and paints the image again, and the PNGs equal those of the finished file."""
    from pipeline.rendering import painting
    from pipeline.rendering.config import RenderConfig
    from pipeline.rendering.run import _plan, _tasks
    from pipeline.rendering.selection import image_folders

    partial = Path(shutil.copy(made["single"], tmp_path / "out.h5.partial"))
    with h5py.File(partial, "r+") as file:
        file.attrs[schema.ATTR_COMPLETE] = False  # as while the extract still writes
    real_block, real_open = painting.Painter._block, painting.Painter._open
    state = {"fail": 0, "opens": 0}

    def flaky_block(self, row: int, c0: int) -> np.ndarray:
        if state["fail"]:
            state["fail"] -= 1
            raise InputError(f"{self.job.path}: reading row {row} failed (addr overflow, addr = 9, eoa = 8)")
        return real_block(self, row, c0)

    def counted_open(self) -> None:
        state["opens"] += 1
        real_open(self)

    monkeypatch.setattr(painting.Painter, "_block", flaky_block)
    monkeypatch.setattr(painting.Painter, "_open", counted_open)

    def paint(path: Path, out: Path, fail: int) -> list:
        config = RenderConfig(str(path), 2, out=str(out), top_k=2, workers=1, allow_partial=True)
        with pipeline.open_store(path) as store:
            job, rows = _plan(config, store)
            tasks = list(_tasks(store, rows, image_folders(store), {}))
        painter = painting.Painter(job)
        try:
            state["fail"] = fail
            return [painter.paint(task) for task in tasks]
        finally:
            painter.close()

    results = paint(partial, tmp_path / "partial", fail=2)
    assert state["opens"] == 3 and len(results) == 11  # opened, then reopened twice: every image painted
    assert all(r.error is None and r.pngs == 3 for r in results)  # 2 channels and the grid
    state["opens"] = 0
    reference = paint(made["single"], tmp_path / "reference", fail=0)
    assert state["opens"] == 1 and [r.key for r in reference] == [r.key for r in results]
    pngs = sorted(p.relative_to(tmp_path / "partial") for p in (tmp_path / "partial").rglob("*.png"))
    assert len(pngs) == 33 and all(
        (tmp_path / "partial" / p).read_bytes() == (tmp_path / "reference" / p).read_bytes() for p in pngs
    )
    with pytest.raises(InputError, match="addr overflow"):  # a complete file is never being written: no retry
        paint(made["single"], tmp_path / "complete", fail=1)
