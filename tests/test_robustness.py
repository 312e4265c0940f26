"""Fault injection: bad images, faults during a run, hostile files, numerics. Nothing is lost,
nothing incomplete is ever called complete, and every error says what to do next."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, write_images
from PIL import Image

import pipeline
from pipeline import decoding
from pipeline.errors import FmpipeError, InputError, RunFailure
from pipeline.extraction import loading
from pipeline.storage.locks.lockfile import OutputLockedError

TINY = {"model": "tiny_models:plain_net", "size": (32, 32), "workers": 0}


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def build_bad_folder(folder: Path) -> tuple[set[str], dict[str, str]]:
    """A folder of every hostile case; returns (good keys, {bad key: expected reason regex})."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    good = {
        "cmyk.jpg": _jpeg(photo.convert("CMYK")),
        "png_named.jpg": _png(photo),  # wrong extension for the real format
        "gray16.png": _png(Image.fromarray((rng.integers(0, 65535, (40, 60))).astype(np.uint16))),
        "bits1.png": _png(photo.convert("1")),
        "one_by_one.png": _png(Image.new("RGB", (1, 1), (9, 9, 9))),
        "one_by_100000.png": _png(Image.new("L", (100000, 1), 128)),
        "d" * 200 + ".png": _png(photo),  # very long name
        "folder.jpg/inner.png": _png(photo),  # a directory named like an image
    }
    palette = photo.convert("P")
    good["palette_alpha.png"] = _png(palette, transparency=0)
    exif = photo.getexif()
    exif[0x0112] = 8
    good["exif_rotated.jpg"] = _jpeg(photo, exif=exif.tobytes())
    for key, data in good.items():
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(data)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    good["animated.gif"] = b""
    non_utf8 = os.fsdecode(b"caf\xe9.png")  # Latin-1 name: not valid UTF-8
    (folder / non_utf8).write_bytes(_png(photo))
    good[non_utf8] = b""
    bad = {
        "empty.jpg": ("", "empty file"),
        "truncated.jpg": (_jpeg(photo)[:300], "corrupt|truncated|cannot decode"),
        "truncated.png": (_png(photo)[:120], "corrupt|truncated|cannot decode"),
        "page.jpg": ("<!DOCTYPE html><html></html>", "not an image"),
        "bomb.png": (_png(Image.new("L", (20000, 20000))), "decompression bomb"),
    }
    for key, (data, _) in bad.items():
        path = folder / key
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    (folder / "broken.jpg").symlink_to(folder / "missing-target.jpg")
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    reasons = {key: reason for key, (_, reason) in bad.items()}
    reasons["broken.jpg"] = "not found|broken symlink"
    reasons["loop_a.jpg"] = "symbolic links|symlink loop"
    reasons["loop_b.jpg"] = "symbolic links|symlink loop"
    return set(good), reasons


@pytest.mark.slow
def test_every_bad_image_is_a_failure_row_and_every_good_one_is_stored(tmp_path):
    # bomb.png (20000 x 20000 = 400 M pixels) is above the default limit of 179 M pixels; the limit
    # is bound as a default argument at definition, so patching the module constant would change nothing.
    assert decoding.DEFAULT_MAX_PIXELS < 20000 * 20000
    good, bad = build_bad_folder(tmp_path / "bad")
    out = tmp_path / "bad.h5"
    summary = pipeline.extract(
        tmp_path / "bad", out, model="tiny_models:plain_net", size=(32, 32), workers=2, batch_size=3
    )
    assert summary.failed == len(bad) and summary.stored == len(good)
    stored_good = {k.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for k in good}
    with pipeline.open_store(out, require_complete=True) as store:
        failures = dict(store.failures)
        assert set(failures) == set(bad)
        for key, pattern in bad.items():
            assert __import__("re").search(pattern, failures[key]), (key, failures[key])
        ok_keys = {k for k, ok in zip(store.keys, store.ok, strict=True) if ok}
        assert ok_keys == stored_good
        assert "caf\\xe9.png" in ok_keys
        data = store.stage(0).data
        for row, key in enumerate(store.keys):
            assert np.isfinite(data[row]).all() == (key in stored_good), key


def test_unreadable_file_gives_permission_denied(tmp_path):
    from pipeline.decoding import DecodeError, decode

    path = tmp_path / "secret.png"
    path.write_bytes(_png(Image.new("RGB", (8, 8))))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: check in a forked child that drops to nobody
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                os.setgid(65534)
                os.setuid(65534)
                decode(str(path), (8, 8))
                message = "decoded"
            except DecodeError as err:
                message = str(err)
            except BaseException as err:
                message = repr(err)
            os.write(write_end, message.encode())
            os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end) as pipe:
            message = pipe.read()
    else:
        with pytest.raises(DecodeError) as err:
            decode(str(path), (8, 8))
        message = str(err.value)
    assert "permission denied" in message


def test_special_files_are_failure_rows_never_opened(tmp_path):
    """A FIFO named pipe.png used to block extract forever; a symlink to /dev/zero was read until MemoryError."""
    folder = tmp_path / "special"
    write_images(folder, 3)
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "fifo_link.jpg").symlink_to(folder / "pipe.png")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(folder / "sock.png"))
    reasons = {
        "pipe.png": "a FIFO \\(named pipe\\), not a regular file: not read",
        "fifo_link.jpg": "a FIFO",
        "zero.png": "a device, not a regular file: not read",
        "sock.png": "a socket, not a regular file: not read",
    }
    try:
        started = time.monotonic()
        summary = pipeline.extract(folder, tmp_path / "s.h5", **TINY, batch_size=2)
        assert time.monotonic() - started < 60  # no hang (it blocked forever before)
    finally:
        listening.close()
    assert summary.failed == 4 and summary.stored == 3
    with pipeline.open_store(tmp_path / "s.h5", require_complete=True) as store:
        failures = dict(store.failures)
        for key, pattern in reasons.items():
            assert __import__("re").search(pattern, failures[key]), (key, failures[key])
        data = store.stage(0).data
        for row, key in enumerate(store.keys):
            assert np.isfinite(data[row]).all() == (key not in reasons), key
    # Resume and verify hash sources (a failed row's is probed: readable now?): never opened either.
    from pipeline import sources

    for key in reasons:
        assert sources.file_identity(folder / key) == (b"", -1), key


def test_the_read_cap_counts_bytes_read_not_the_size_a_file_claims(monkeypatch):
    monkeypatch.setattr(decoding, "MAX_FILE_BYTES", 100)
    assert os.stat("/proc/self/maps").st_size == 0  # a regular file that claims 0 bytes and holds more
    with pytest.raises(decoding.DecodeError, match="file too large to decode \\(more than"):
        decoding.read_source("/proc/self/maps")
    monkeypatch.setattr(decoding, "MAX_FILE_BYTES", 1 << 20)
    assert decoding.read_source("/proc/self/maps").size > 100  # under the cap it is read whole


@pytest.mark.slow
def test_cli_summary_counts_failures(tmp_path):
    folder = tmp_path / "few"
    write_images(folder, 3)
    (folder / "zero.png").write_bytes(b"")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "extract",
            folder,
            tmp_path / "o.h5",
            "--model",
            "tiny_models:plain_net",
            "--size",
            "32",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "tests")},
    )
    assert run.returncode == 0, run.stderr
    assert "3 images stored, 1 failed" in run.stdout
    assert "fmpipe info" in run.stdout


# -- faults during a run ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_disk_full_keeps_a_resumable_file_and_the_rerun_is_identical(tmp_path, small_disk):
    folder = tmp_path / "imgs"
    write_images(folder, 12, size=(64, 64))
    kw = {"model": "tiny_models:plain_net", "size": (128, 128), "workers": 0, "batch_size": 2, "compression": "none"}
    reference = tmp_path / "ref.h5"
    pipeline.extract(folder, reference, **kw)
    out = small_disk / "o.h5"
    with pytest.raises(RunFailure, match="free space"):
        pipeline.extract(folder, out, **kw)
    assert not out.exists()
    partial = Path(f"{out}.partial")
    moved = tmp_path / "o.h5.partial"
    shutil.copy(partial, moved)  # "free space": continue on a bigger disk
    with h5py.File(moved) as f:
        assert not bool(f.attrs["complete"])
        done_before = int(f["images/done"][:].sum())
    assert 0 < done_before < 12
    summary = pipeline.extract(folder, tmp_path / "o.h5", **kw)
    assert summary.done_before == done_before and summary.stored == 12 - done_before
    with pipeline.open_store(tmp_path / "o.h5") as a, pipeline.open_store(reference) as b:
        for sa, sb in zip(a.stages, b.stages, strict=True):
            np.testing.assert_array_equal(sa.data[:], sb.data[:])


def test_unwritable_output_fails_before_any_model_work(tmp_path, small_disk, monkeypatch):
    folder = tmp_path / "imgs"
    write_images(folder, 2)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    import pipeline.extraction.models as models

    def no_model(*a, **k):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr(models, "resolve", no_model)
    with pytest.raises(InputError, match="cannot write"):
        pipeline.extract(folder, small_disk / "x.h5", **TINY)


def test_image_folder_vanishing_mid_run_stops_cleanly_and_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    write_images(folder, 8)
    hidden = tmp_path / "moved"
    calls = {"n": 0}
    real_read = loading.read_source

    def vanishing(path, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            folder.rename(hidden)
        return real_read(path, *args, **kw)

    monkeypatch.setattr(loading, "read_source", vanishing)
    out = tmp_path / "v.h5"
    with pytest.raises(RunFailure, match="disappeared"):
        pipeline.extract(folder, out, batch_size=2, **TINY)
    with h5py.File(f"{out}.partial") as f:
        assert f["images/done"][:].sum() == 4 and len(f["failures/key"]) == 0
    monkeypatch.setattr(loading, "read_source", real_read)
    hidden.rename(folder)
    summary = pipeline.extract(folder, out, batch_size=2, **TINY)
    assert summary.done_before == 4 and summary.stored == 4 and summary.failed == 0


def test_second_writer_is_refused_and_a_stale_lock_is_recovered(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 2)
    out = tmp_path / "l.h5"
    lock = Path(f"{out}.lock")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(OutputLockedError, match=f"pid {sleeper.pid}") as err:
            pipeline.extract(folder, out, **TINY)
        assert f"rm {lock}" in str(err.value)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The holder is gone now: the lock is stale and the run takes over.
    summary = pipeline.extract(folder, out, **TINY)
    assert summary.stored == 2 and not lock.exists()
    lock.write_text("")  # killed between creating and writing the lock
    pipeline.extract(folder, out, overwrite=True, **TINY)
    assert not lock.exists()


def wait_for_done_rows(partial: Path, rows: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Poll the partial file's flushed done markers (readable while it is written: the writer
    holds no HDF5 file lock) until `rows` are done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with h5py.File(partial, "r", locking=False) as f:
                if int(f["images/done"][:].sum()) >= rows:
                    return
        except (OSError, KeyError):
            pass  # not created yet
        time.sleep(0.02)
    raise AssertionError(f"{partial} did not reach {rows} done rows (exit code {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_batch_boundary_and_the_rerun_completes(tmp_path, sig):
    folder = tmp_path / "imgs"
    write_images(folder, 40, size=(32, 32))
    out = tmp_path / "s.h5"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "extract",
        folder,
        out,
        "--model",
        "tiny_models:plain_net",
        "--size",
        "256",
        "--batch-size",
        "1",
        "--workers",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = Path(f"{out}.partial")
    wait_for_done_rows(partial, 3, proc)  # signal after three batches (of 40), not after a guessed delay
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert "Rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert not out.exists()
    with h5py.File(partial) as f:
        done = int(f["images/done"][:].sum())
        assert not bool(f.attrs["complete"]) and 3 <= done < 40
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} already done" in rerun.stdout


# -- hostile files --------------------------------------------------------------------------


def _fake(path: Path, mutate) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "fmpipe", "format_version": 1, "complete": True})
        f["images/key"] = np.array([b"a.png", b"b.png"])
        f["images/done"] = np.ones(2, bool)
        f["images/orig_hw"] = np.ones((2, 2), np.int32)
        for name in ("index", "key", "reason"):
            f.create_dataset(f"failures/{name}", shape=(0,), dtype="int64" if name == "index" else h5py.string_dtype())
        g = f.create_group("stages/0")
        g.attrs.update({"index": 0, "module": "m", "channels": 2, "stride": 1, "height": 3, "width": 3})
        g["data"] = np.zeros((2, 2, 3, 3), np.float16)
        for name in ("min", "max", "mean"):
            g[name] = np.zeros((2, 2), np.float32)
        mutate(f)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.attrs.__setitem__("format_version", 99), "format version 99"),
        (lambda f: f.__delitem__("images/done"), "lacks /images/done"),
        (lambda f: f.__delitem__("stages/0/max"), "lacks its 'max'"),
        (
            lambda f: (f.__delitem__("stages/0/data"), f["stages/0"].create_dataset("data", data=np.zeros((5, 2)))),
            "expected \\(2, C, H, W\\)",
        ),
        (lambda f: f["stages/0"].attrs.__setitem__("channels", "many"), "attribute"),
        (lambda f: f["stages/0"].attrs.__setitem__("channels", 7), "attribute"),
    ],
)
def test_hostile_fmpipe_files_give_clear_errors(tmp_path, mutate, message):
    path = _fake(tmp_path / "fake.h5", mutate)
    with pytest.raises(InputError, match=message), pipeline.open_store(path) as store:
        store.stages  # noqa: B018
    run = subprocess.run([sys.executable, "-m", "pipeline", "info", path], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_virtual_source_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["d"] = np.ones((2, 2, 3, 3), np.float16)
    inner = tmp_path / "inner"
    inner.mkdir()

    def to_vds(f):
        layout = h5py.VirtualLayout(shape=(2, 2, 3, 3), dtype=np.float16)
        layout[:] = h5py.VirtualSource("../outside.h5", "d", shape=(2, 2, 3, 3))
        del f["stages/0/data"]
        f["stages/0"].create_virtual_dataset("data", layout, fillvalue=np.nan)

    path = _fake(inner / "vds.h5", to_vds)
    with pytest.raises(InputError, match="outside"):
        pipeline.open_store(path)


# -- numerics -------------------------------------------------------------------------------


def test_float16_overflow_is_a_clear_error_and_float32_stores_it(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 2)
    kw = {"model": "tiny_models:overflow_net", "size": (16, 16), "workers": 0}
    with pytest.raises(RunFailure, match=r"overflows float16.*--dtype float32"):
        pipeline.extract(folder, tmp_path / "o.h5", **kw)
    pipeline.extract(folder, tmp_path / "o.h5", dtype="float32", overwrite=True, **kw)
    with pipeline.open_store(tmp_path / "o.h5") as store:
        data = store.stage(0).data[:]
        assert data.dtype == np.float32 and np.abs(data).max() > 65504 and np.isfinite(data).all()


def test_nan_activations_are_reported_and_stored(tmp_path, caplog):
    folder = tmp_path / "imgs"
    write_images(folder, 2)
    summary = pipeline.extract(folder, tmp_path / "n.h5", model="tiny_models:nan_net", size=(16, 16), workers=0)
    assert summary.nan_stages == [0]
    assert "NaN" in caplog.text
    with pipeline.open_store(tmp_path / "n.h5") as store:
        assert np.isnan(store.stage(0).data[0, 0, 0, 0]) and np.isfinite(store.stage(0).data[0, 1]).all()


def test_user_errors_are_fmpipe_errors_with_exit_code_2():
    assert InputError("x").exit_code == 2 and RunFailure("x").exit_code == 1
    assert issubclass(OutputLockedError, FmpipeError)
