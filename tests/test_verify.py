"""`fmpipe verify`: clean files pass (single, merged virtual, --copy, shards folder); an overwritten chunk,
consistently swapped rows (with --recompute), a changed source, statistics that do not describe the data
and a missing chunk are each found and named by stage and image; bad input exits 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter)
import numpy as np
import pytest
import torch
from conftest import single_and_merged, write_images

import pipeline
from pipeline.errors import InputError, UsageError
from pipeline.extraction.recompute import maps_mismatch
from pipeline.records import BatchResult, StageInfo
from pipeline.storage.format import schema
from pipeline.storage.integrity.mapstats import as_float32, stats_mismatch
from pipeline.storage.writing.files import shards_folder
from pipeline.storage.writing.writer import ShardWriter, WritePlan

REPO = Path(__file__).resolve().parent.parent
OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")


def fmpipe(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """20 images (one broken, row 5), extracted as one file and as 2 shards (rows 0-15, 16-19) with both merges."""
    root = tmp_path_factory.mktemp("verify")
    images = root / "images"
    write_images(images, 19, size=(40, 48))
    (images / "img004b.png").write_bytes(b"not an image")  # a failure: its row is skipped, never a problem
    return {"root": root, "images": images, **single_and_merged(root, images, OPTIONS)}


@pytest.fixture
def single(made, tmp_path) -> Path:
    """A private copy of the single file (tests damage it)."""
    return Path(shutil.copy(made["single"], tmp_path / "out.h5"))


def overwrite_inside_chunk(path: Path, stage: int, row: int) -> None:
    """Overwrite 4 bytes in the middle of one stored chunk, as a bad disk block would."""
    with h5py.File(path, "r+") as file:
        dset = file[f"stages/{stage}/data"]
        mask, raw = dset.id.read_direct_chunk((row, 0, 0, 0))
        raw = bytearray(raw)
        middle = len(raw) // 2
        raw[middle : middle + 4] = bytes(b ^ 0x5A for b in raw[middle : middle + 4])
        dset.id.write_direct_chunk((row, 0, 0, 0), bytes(raw), mask)


STAT_AND_DATA = ("data", "min", "max", "mean")


def unseal(path: Path) -> None:
    """Remove the seal, as in a file written before fmpipe sealed its files."""
    with h5py.File(path, "r+") as file:
        del file[schema.SEAL], file.attrs[schema.ATTR_SEAL]


def swap_rows(path: Path, a: int, b: int) -> None:
    """Swap two rows' maps (their raw chunks) and statistics in every stage: every checksum and
    statistics check still passes."""
    with h5py.File(path, "r+") as file:
        for group in file["stages"].values():
            dset = group["data"]
            for c0 in range(0, dset.shape[1], dset.chunks[1]):
                first = dset.id.read_direct_chunk((a, c0, 0, 0))
                second = dset.id.read_direct_chunk((b, c0, 0, 0))
                dset.id.write_direct_chunk((a, c0, 0, 0), second[1], second[0])
                dset.id.write_direct_chunk((b, c0, 0, 0), first[1], first[0])
            for name in schema.STAT_NAMES:
                rows = group[name][[a, b]]
                group[name][a], group[name][b] = rows[1], rows[0]


# -- clean files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "merged", "copied", "shards"])
def test_clean_files_pass(made, kind):
    path = shards_folder(made["merged"]) if kind == "shards" else made[kind]
    report = pipeline.verify(path, workers=2)
    assert report.ok, [str(p) for p in report.problems]
    assert report.warnings == []
    rows = 20 - 1  # the broken image is not checked
    assert report.rows == rows
    assert report.chunks == rows * 5  # resnet18 at 32x32: 5 stages of one chunk each per image
    assert report.sources_checked == rows + 1  # the broken file was read: its digest is checked too
    assert report.bytes_checked == rows * sum(
        c * s * s * 2 for c, s in ((64, 16), (64, 8), (128, 4), (256, 2), (512, 1))
    )
    assert report.files == (2 if kind == "shards" else 1)


def test_cli_passes_a_clean_file_with_a_summary_line(made):
    run = fmpipe("verify", made["single"])
    assert run.returncode == 0, run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert "GB of maps checked (95 chunks, 19 rows)" in last and "GB/s" in last and last.endswith("0 problems")


def test_a_partial_shards_folder_checks_its_done_rows(made, tmp_path):
    out = tmp_path / "out.h5"
    folder = shards_folder(out)
    folder.mkdir()
    shard = shutil.copy(shards_folder(made["merged"]) / "shard-00000-of-00002.h5", folder)
    partial = Path(shard).with_name(Path(shard).name + ".partial")
    Path(shard).rename(partial)
    with h5py.File(partial, "r+") as file:  # rows 8.. not done yet, as during a run
        file[schema.DONE][8:] = False
        file.attrs[schema.ATTR_COMPLETE] = False
        del file[schema.SEAL], file.attrs[schema.ATTR_SEAL]  # a partial shard is not sealed yet
    report = pipeline.verify(folder)
    assert report.ok and report.files == 1
    assert report.rows == 8 - 1 and report.sources_checked == 8
    assert any("1 shards are not in" in w for w in report.warnings)


# -- damage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_overwritten_bytes_inside_a_chunk_are_found(made, tmp_path, compression):
    out = tmp_path / "out.h5"
    pipeline.extract(str(made["images"]), str(out), compression=compression, **OPTIONS)
    overwrite_inside_chunk(out, stage=1, row=3)
    report = pipeline.verify(out)
    # A byte overwritten in deflate data (shuffled or not) may break the stream itself before its Adler-32.
    reasons = {
        "zstd": ["fails its zstd checksum"],
        "gzip": ["fails its zlib Adler-32 checksum", "is a truncated or overlong zlib stream"],
        "none": ["fails its Fletcher-32 checksum"],
    }[compression]
    found = [str(p) for p in report.problems]
    assert found in [[f"stage 1, image img003.png: chunk (row 3, channels 0-63) {why}"] for why in reasons]
    run = fmpipe("verify", out)
    assert run.returncode == 1
    assert found[0] in run.stdout


def test_overwritten_chunk_in_a_shard_is_found_through_the_virtual_file(made, tmp_path):
    out = tmp_path / "merged.h5"
    shutil.copy(made["merged"], out)
    shutil.copytree(shards_folder(made["merged"]), shards_folder(out))
    overwrite_inside_chunk(shards_folder(out) / "shard-00001-of-00002.h5", stage=2, row=1)
    report = pipeline.verify(out)
    # Row 1 of shard 1 is row 17 of the merged file (shards are cut at multiples of 16).
    assert [str(p) for p in report.problems] == [
        "stage 2, image img016.jpg: chunk (row 17, channels 0-127) fails its zstd checksum"
    ]
    report = pipeline.verify(shards_folder(out))
    assert [str(p) for p in report.problems] == [
        "shard-00001-of-00002.h5, stage 2, image img016.jpg: chunk (row 1, channels 0-127) fails its zstd checksum"
    ]


def test_a_missing_shard_of_a_virtual_file_is_a_problem(made, tmp_path):
    out = tmp_path / "merged.h5"
    shutil.copy(made["merged"], out)
    shutil.copytree(shards_folder(made["merged"]), shards_folder(out))
    (shards_folder(out) / "shard-00001-of-00002.h5").unlink()
    report = pipeline.verify(out)
    assert report.problem_count == 1 and "shard-00001-of-00002.h5" in str(report.problems[0])


def test_swapped_rows_fail_the_seal_and_recompute(single):
    swap_rows(single, 2, 6)
    found = {p.what for p in pipeline.verify(single).problems}  # checksums and statistics moved with the maps
    sealed = {f"/stages/{s}/{name} changed since the file was sealed" for s in range(5) for name in STAT_AND_DATA}
    assert {f"/stages/{s}/data changed since the file was sealed" for s in range(5)} <= found <= sealed
    unseal(single)  # a file without a seal (an older fmpipe's): recompute still finds the swap
    assert pipeline.verify(single).ok
    report = pipeline.verify(single, recompute=100)
    assert report.recomputed == 19
    assert {(p.stage, p.key) for p in report.problems} == {
        (s, k) for s in range(5) for k in ("img002.jpg", "img005.png")
    }
    assert all("recomputed maps differ from the stored ones" in p.what for p in report.problems)


@pytest.mark.parametrize("kind", ["merged", "shards"])
def test_recompute_reads_merged_files_and_shards_folders(made, kind):
    path = shards_folder(made["merged"]) if kind == "shards" else made["merged"]
    report = pipeline.verify(path, recompute=4, seed=1)
    assert report.ok and report.recomputed == 4, [str(p) for p in report.problems]


@pytest.mark.slow
def test_recompute_passes_a_clean_file_and_picks_rows_by_seed(single):
    report = pipeline.verify(single, recompute=100)
    assert report.ok and report.recomputed == 19
    unseal(single)  # the seal names a swap at once; this is about the rows recompute picks
    swap_rows(single, 0, 1)
    found = [{p.key for p in pipeline.verify(single, recompute=10, seed=seed).problems} for seed in range(4)]
    assert found == [{p.key for p in pipeline.verify(single, recompute=10, seed=seed).problems} for seed in range(4)]
    assert {"img000.jpg", "img001.png"} in found and len({frozenset(f) for f in found}) > 1


def test_a_source_changed_after_extraction_is_found(made, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(made["images"], images)
    out = tmp_path / "out.h5"
    pipeline.extract(str(images), str(out), **OPTIONS)
    (images / "img006.jpg").write_bytes((images / "img008.jpg").read_bytes())  # another image's bytes
    shutil.copy(images / "img001.png", images / "img003.png")
    report = pipeline.verify(out)
    assert sorted(p.key for p in report.problems) == ["img003.png", "img006.jpg"]
    assert all(p.stage is None and "its source changed after extraction" in p.what for p in report.problems)
    run = fmpipe("verify", out)
    assert run.returncode == 1 and "image img006.jpg: its source changed after extraction" in run.stdout


def test_same_size_other_bytes_is_found(single, made):
    images = single.parent / "images"
    shutil.copytree(made["images"], images)
    data = bytearray((images / "img002.jpg").read_bytes())
    data[len(data) // 2] ^= 1
    (images / "img002.jpg").write_bytes(bytes(data))
    report = pipeline.verify(single, images_root=images)
    assert [p.key for p in report.problems] == ["img002.jpg"]
    assert "same size, other bytes" in report.problems[0].what


def test_moved_sources_are_found_with_images_root_and_unreachable_ones_are_a_note(single, made, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(made["images"], moved)
    with h5py.File(single, "r+") as file:
        file.attrs[schema.ATTR_IMAGES_ROOT] = str(tmp_path / "gone")
    report = pipeline.verify(single)
    assert report.ok and report.sources_checked == 0 and report.sources_unchecked == 20
    assert "20 sources not checked" in report.warnings[0] and "--images-root" in report.warnings[0]
    report = pipeline.verify(single, images_root=moved)
    assert report.ok and report.sources_checked == 20 and report.sources_unchecked == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    report = pipeline.verify(single, images_root=empty)  # the user named a folder and nothing is in it
    assert not report.ok and "none of the 20 recorded sources was found below --images-root" in str(report.problems[0])


def test_keys_that_leave_the_images_root_are_never_read(single, tmp_path):
    with h5py.File(single, "r+") as file:
        file[schema.KEY][0] = "../../etc/passwd"
    report = pipeline.verify(single)
    assert [str(p) for p in report.problems] == [
        "/images/key is not the collection the fingerprint names: a key was changed",
        "/images/key changed since the file was sealed",
        "image ../../etc/passwd: its key leaves the images root; the source was not read",
    ]


def test_statistics_that_do_not_describe_the_data_are_found(single):
    with h5py.File(single, "r+") as file:
        file["stages/3/max"][4, 200] += 0.01
    report = pipeline.verify(single)
    assert len(report.problems) == 2 and str(report.problems[1]) == "/stages/3/max changed since the file was sealed"
    assert str(report.problems[0]).startswith(
        "stage 3, image img004.jpg: chunk (row 4, channels 0-255) disagrees with its stored statistics in 1 channels "
        "(first: channel 200, max stored"
    )


def test_a_done_row_without_its_chunks_is_found(single):
    with h5py.File(single, "r+") as file:  # forget the failure: row 5 (img004b.png) now claims data
        index = file[schema.FAILURE_INDEX]
        assert list(index[:]) == [5]
        for name in (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON):
            file[name].resize((0,))
    report = pipeline.verify(single)
    assert str(report.problems[0]) == (
        "stage 0, image img004b.png: chunk (row 5, channels 0-63) is missing: it reads as NaN"
    )
    assert report.problem_count == 5 + 3  # one chunk per stage; the seal names the three failures datasets
    assert {str(p) for p in report.problems[5:]} == {
        f"/{name} changed since the file was sealed"
        for name in (schema.FAILURE_INDEX, schema.FAILURE_KEY, schema.FAILURE_REASON)
    }


# -- statistics tolerance on synthetic maps ---------------------------------------------------------


def write_maps(path: Path, maps: dict[int, np.ndarray], dtype="float16", compression="zstd", failed=()) -> Path:
    """A complete file written by the real writer from float32 maps {stage: (N, C, H, W)}, with statistics
    computed like the extractor's (float32, before the storage cast)."""
    keys = [f"img{i:03d}.png" for i in range(len(next(iter(maps.values()))))]
    stages = [
        StageInfo(i, f"blocks.{i}", a.shape[1], 2, a.shape[2], a.shape[3], "forward_hook") for i, a in maps.items()
    ]
    plan = WritePlan(keys, stages, dtype, compression, "fp-verify-test", {}, {"images_root": "/nonexistent"})
    writer = ShardWriter.open(path, plan, threads=2)
    rows = np.arange(len(keys))
    ok = np.array([r for r in rows if r not in failed], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {}
        for i, a in maps.items():
            flat = torch.from_numpy(a[ok]).flatten(2)  # as compute.Forward's sink does it
            stats[i] = torch.stack([flat.amin(dim=2), flat.amax(dim=2), flat.mean(dim=2)]).numpy()
    data = {i: a[ok].astype(dtype) for i, a in maps.items()}
    hw = np.full((len(rows), 2), 64, np.int32)
    writer.submit(BatchResult(rows, ok, hw, [(int(r), "broken on purpose") for r in failed], data, stats))
    return writer.finalize()


def hard_maps(rng: np.random.Generator, n: int, channels: int, side: int) -> np.ndarray:
    """(n, C, side, side) float32 maps that stress the float16 rounding: zeros, NaN, subnormals, values
    near 65504, negatives, post-ReLU sparsity, large offsets with small variation, constant channels."""
    maps = rng.standard_normal((n, channels, side, side)).astype(np.float32)
    maps[:, 0] = 0.0
    maps[:, 1] = np.maximum(maps[:, 1], 0)
    maps[:, 2] *= 1e-6  # float16 subnormals
    maps[:, 3] = 60000 + 500 * np.tanh(maps[:, 3])
    maps[:, 4] = -maps[:, 4] * 3000
    maps[:, 5] = 1000 + maps[:, 5] * 0.01  # rounding error dominated by the offset
    maps[:, 6] = 7.0
    maps[0, 7, 3, 3] = np.nan  # a NaN map stays NaN (and so do its statistics)
    maps[:, 8] = rng.standard_normal() * 1e-3
    return maps


@pytest.mark.parametrize(("dtype", "compression"), [("float16", "zstd"), ("float16", "none"), ("float32", "gzip")])
def test_clean_synthetic_maps_never_trip_the_statistics_check(tmp_path, dtype, compression):
    rng = np.random.default_rng(7)
    # Stage 0: 21 channels of 128x128 in several chunks per row.
    maps = {0: hard_maps(rng, 6, 21, 128), 1: hard_maps(rng, 6, 12, 5)}
    path = write_maps(tmp_path / "maps.h5", maps, dtype, compression, failed=(4,))
    report = pipeline.verify(path)
    assert report.ok, [str(p) for p in report.problems]
    k = schema.chunk_channels(21, 128, 128, np.dtype(dtype).itemsize)
    assert k == {"float16": 11, "float32": 7}[dtype]  # float16: the second chunk holds 10 channels + padding
    assert report.rows == 5 and report.chunks == 5 * (-(-21 // k) + 1)
    assert report.bytes_checked == 5 * (21 * 128 * 128 + 12 * 25) * np.dtype(dtype).itemsize


def test_random_maps_at_many_scales_never_trip_the_statistics_check():
    rng = np.random.default_rng(3)
    for scale in 10.0 ** np.arange(-7, 5):
        values = (rng.standard_normal((64, 400)) * scale + rng.standard_normal((64, 1)) * scale).astype(np.float32)
        values[::3] = np.maximum(values[::3], 0)
        stored = np.stack([values.min(1), values.max(1), values.mean(1)]).astype(np.float32)
        assert stats_mismatch(values.astype(np.float16), stored) is None, scale


def test_the_mean_tolerance_sees_a_change_that_keeps_min_and_max():
    values = np.linspace(0, 2, 257, dtype=np.float32)[None]  # min 0, max 2, mean 1: exact in float16
    stored = np.array([[0.0], [2.0], [1.0]], np.float32)
    assert stats_mismatch(values.astype(np.float16), stored) is None
    inside = values.copy()
    inside[0, 64:193] += 0.002  # the mean moves by 0.001, under 2^-10 * 2: float16 rounding could do that
    assert stats_mismatch(inside.astype(np.float16), stored) is None
    inside[0, 64:193] += 0.02  # now by 0.011: not rounding
    assert "(first: channel 0, mean stored 1, in the data 1.01" in stats_mismatch(inside.astype(np.float16), stored)


def test_float16_bit_conversion_is_exact_for_every_finite_value():
    everything = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = everything[np.isfinite(everything)]
    np.testing.assert_array_equal(as_float32(finite).view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_maps_mismatch_tolerates_float16_and_float32_noise_only():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((4, 8, 8)), 0).astype(np.float32) * 50
    noisy = x * (1 + rng.uniform(-1e-5, 1e-5, x.shape)).astype(np.float32)
    assert maps_mismatch(x.astype(np.float16), noisy.astype(np.float16), (2.0**-10, 1e-3)) is None
    nan = x.copy()
    nan[0, 0, 0] = np.nan
    assert maps_mismatch(nan.astype(np.float16), nan.astype(np.float16), (2.0**-10, 1e-3)) is None
    other = x.copy()
    other[2, 3, 4] += 0.5  # 1 % of the channel's peak (about 50 * 2.5)
    assert "in 1 of 256 values (first: channel 2" in maps_mismatch(
        x.astype(np.float16), other.astype(np.float16), (2.0**-10, 1e-3)
    )


# -- formats and input errors ------------------------------------------------------------------------


def test_a_format_v1_file_is_checked_by_its_statistics_alone(single):
    unseal(single)
    with h5py.File(single, "r+") as file:
        file.attrs[schema.ATTR_FORMAT_VERSION] = 1
        del file.attrs[schema.ATTR_CHUNK_CHECKSUM]
        del file[schema.SOURCE_SHA256], file[schema.SOURCE_SIZE]
    report = pipeline.verify(single)
    assert report.ok and report.chunks == 95 and report.sources_checked == 0
    assert report.warnings == [
        "out.h5 is format v1: no chunk checksums and no source digests; "
        "its maps were checked against their statistics alone"
    ]


def test_a_zstd_frame_without_its_checksum_is_a_problem_in_format_v2(single):
    import zstandard

    with h5py.File(single, "r+") as file:
        dset = file["stages/2/data"]
        mask, raw = dset.id.read_direct_chunk((1, 0, 0, 0))
        plain = zstandard.ZstdCompressor(write_checksum=False, write_content_size=True)
        dset.id.write_direct_chunk((1, 0, 0, 0), plain.compress(zstandard.decompress(raw)), mask)
    assert [str(p) for p in pipeline.verify(single).problems] == [
        "stage 2, image img001.png: chunk (row 1, channels 0-127) is a zstd frame without its checksum",
        "/stages/2/data changed since the file was sealed",
    ]


@pytest.mark.slow
def test_bad_input_exits_2(made, tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as file:
        file["x"] = 1
    for args, message in (
        ((plain,), "not an fmpipe file"),
        ((tmp_path / "nothing.h5",), "does not exist"),
        ((made["images"] / "img000.jpg",), "is not a readable HDF5 file"),
        ((made["single"], "--images-root", tmp_path / "nowhere"), "is not a folder"),
        ((made["single"], "--recompute", "-1"), "--recompute must be 0 or more"),
        ((tmp_path,), "holds no shard files"),
    ):
        run = fmpipe("verify", *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert message in run.stderr and "Traceback" not in run.stderr
    with pytest.raises(UsageError):
        pipeline.verify(made["single"], workers=-1)


@pytest.mark.slow
def test_recompute_refuses_missing_or_other_weights(made, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.manual_seed(5)
    import timm

    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    out = tmp_path / "out.h5"
    options = {**OPTIONS, "random_init": False, "weights": str(weights)}
    pipeline.extract(str(made["images"]), str(out), **options)
    assert pipeline.verify(out, recompute=2).ok
    state = torch.load(weights)
    state["fc.bias"] += 1  # another state dict: its digest differs
    torch.save(state, weights)
    with pytest.raises(InputError, match=r"are not the ones .* was extracted with"):
        pipeline.verify(out, recompute=2)
    weights.unlink()
    run = fmpipe("verify", out, "--recompute", "2")
    assert run.returncode == 2 and "which is not there now" in run.stderr
    assert pipeline.verify(out).ok  # without --recompute the weights are not needed


@pytest.mark.parametrize(
    "name, value, says",
    [
        (schema.ATTR_INPUT_SIZE, "x", "the root attribute 'input_size' is malformed"),
        (schema.ATTR_CONFIG, "[1]", "the root attribute 'config_json' is malformed"),
    ],
)
def test_recompute_names_a_malformed_root_attribute_before_building_the_model(single, name, value, says):
    with h5py.File(single, "r+") as file:
        file.attrs[name] = value
    with pytest.raises(InputError, match=says):
        pipeline.verify(single, recompute=1)


def test_verify_without_recompute_does_not_import_torch(made):
    code = f"import sys, pipeline; pipeline.verify({str(made['single'])!r}); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def test_report_counts_and_summary_are_consistent(made):
    report = pipeline.verify(made["copied"])
    assert report.bytes_checked > 0 and report.seconds > 0
    text = report.summary()
    assert f"{report.chunks} chunks, {report.rows} rows" in text and f"{report.sources_checked} sources hashed" in text
    assert report.ok and report.problems == [] and Path(report.path) == Path(made["copied"])
    with pipeline.open_store(made["copied"]) as store:
        assert report.rows == int(store.ok.sum()) > 0
    assert text.startswith(f"{report.path}: ") and text.endswith("; 0 problems")
