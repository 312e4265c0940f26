"""Storage choices (storage/format/encoding.py, extraction/compute.py): --dtype uint8, --keep-bits, byte shuffle,
--pool; every reader decodes them; honest sizes. On the default model and the sample photos where the
issue asks for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (zstd filter for plain h5py reads)
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zstandard
from helpers import fmpipe
from PIL import Image

import pipeline
from pipeline.config import ExtractConfig
from pipeline.errors import FingerprintMismatch, InputError, UsageError
from pipeline.extraction.compute import encode, quantize, round_mantissa
from pipeline.storage.format import codecs, schema
from pipeline.storage.format.encoding import Encoding, decode_maps, encoding_of, shuffle_bytes, unshuffle_bytes
from pipeline.storage.integrity import chunks
from pipeline.storage.writing import files

CPU = {"device": "cpu", "workers": 0}


# -- units ------------------------------------------------------------------------------------------


def test_round_mantissa_rounds_to_nearest_and_keeps_zeros_signs_inf_nan():
    values = torch.tensor([0.0, -0.0, 1.0, -1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 65504.0, -65504.0, np.inf, -np.inf])
    values = torch.cat([values, torch.tensor([np.nan]), torch.linspace(-300, 300, 1001)])
    out = round_mantissa(values, 7, torch.float16).float().numpy()
    v = values.numpy()
    assert out[0] == 0 and np.signbit(out[1]) and out[2] == 1 and out[3] == -1
    assert out[4] == 1.0  # 1 + 2^-8 is half of 2^-7 above 1: a tie goes to the even neighbour
    assert out[5] == 1.0 + 2**-6  # 1 + 3·2^-8: a tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
    assert out[6] == 65504.0 and out[7] == -65504.0  # would round up to inf: stored as the plain cast
    assert np.isposinf(out[8]) and np.isneginf(out[9]) and np.isnan(out[10])
    finite = v[11:]
    rel = np.abs(out[11:] - finite) / np.abs(finite)
    assert rel.max() <= 2.0**-8 and (np.sign(out[11:]) == np.sign(finite)).all()
    assert not (out[11:].astype(np.float16).view(np.uint16) & 0x7).any()  # 7 of the 10 mantissa bits kept
    f32 = torch.tensor([1.0 + 2**-10, -3.3e38, 1e-3, np.inf])
    kept = round_mantissa(f32, 7, torch.float32)
    assert (kept.view(torch.int32)[:3] & 0xFFFF).eq(0).all() and kept[0] == 1.0 and kept[3] == np.inf
    assert ((kept[:3] - f32[:3]).abs() <= 2.0**-8 * f32[:3].abs()).all()


def test_round_mantissa_equals_round_half_to_even_on_the_bits_of_every_float16():
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    normal = torch.isfinite(every) & (every.abs() >= 2**-14)
    for keep in (1, 4, 7, 9):
        bits = every.view(torch.int16).to(torch.int64)
        sign = bits & ~((1 << 15) - 1)
        magnitude, drop = bits - sign, 10 - keep
        even = (magnitude + (1 << (drop - 1)) - 1 + ((magnitude >> drop) & 1)) & ~((1 << drop) - 1)
        want = (even + sign).to(torch.int16).view(torch.float16)
        fits = normal & torch.isfinite(want)
        got = round_mantissa(every.float(), keep, torch.float16)
        assert torch.equal(got[fits], want[fits]), keep


def test_quantize_and_decode_within_half_a_step_and_constant_maps_do_not_divide_by_zero():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 3, 40)).astype(np.float32) * [[[1.0], [1e-3], [0.0]]]
    maps[1, 2] = 7.5  # constant
    t = torch.from_numpy(maps)
    lo, hi = t.amin(2), t.amax(2)
    q = quantize(t, lo, hi).numpy()
    assert q.dtype == np.uint8 and q.min() == 0 and (q[:, :2].max(axis=2) == 255).all()
    decoded = decode_maps(q[..., None], lo.numpy(), hi.numpy(), "uint8")[..., 0]
    step = ((hi - lo) / 510).numpy()[..., None]
    assert (np.abs(decoded - maps) <= step * 1.001 + 1e-6).all()
    assert (decoded[1, 2] == 7.5).all() and (q[1, 2] == 0).all()
    nan = t.clone()
    nan[0, 0, 3] = np.nan
    q = quantize(nan, nan.amin(2), nan.amax(2)).numpy()
    assert np.isnan(decode_maps(q[..., None], nan.amin(2).numpy(), nan.amax(2).numpy(), "uint8")[0, 0]).all()


def test_encode_gives_each_maps_min_max_mean_first_maximum_and_the_fused_quantisation():
    """Ties, NaN and inf maps, channels-last activations (the default model's): the statistics are
    amin, amax and mean, the peak is the first maximum (argmax), and uint8 q is round(v * s - lo * s)
    computed as one multiply-add, NaN maps giving 0, in the activations' own layout."""
    gen = torch.Generator().manual_seed(0)
    t = torch.randn((3, 6, 5, 7), generator=gen) * 4
    t[0, 0] = 2.5  # constant: every position is the maximum
    t[0, 1] = t[0, 1].round()
    t[0, 1, 4, 6] = t[0, 1, 2, 3] = t[0, 1].max() + 1  # a tie: the first in y * W + x order counts
    t[1, 2, 3, 3], t[2, 3, 0, 1], t[2, 4, 1, 1] = np.nan, np.inf, -np.inf
    for x in (t, t.contiguous(memory_format=torch.channels_last)):
        flat = x.flatten(2)
        lo, hi = flat.amin(2), flat.amax(2)
        for encoding in (Encoding("float16"), Encoding("uint8")):
            data, stats, peaks = encode(x, encoding)
            torch.testing.assert_close(stats, torch.stack([lo, hi, flat.mean(2)]), rtol=0, atol=0, equal_nan=True)
            assert torch.equal(peaks, flat.argmax(2).to(torch.int32)) and peaks[0, 1] == 2 * 7 + 3
        scale = torch.where(hi > lo, 255 / (hi - lo), torch.zeros_like(lo))[..., None]
        want = torch.addcmul(-lo[..., None] * scale, flat, scale).round().nan_to_num(0.0, 255.0, 0.0).to(torch.uint8)
        assert torch.equal(data, want.view(x.shape)) and data.stride() == x.stride()
        assert (data[0, 0] == 0).all() and (data[1, 2] == 0).all() and (data[2, 3:5] == 0).all()


def test_shuffle_is_hdf5s_shuffle_filter(tmp_path):
    raw = np.arange(1000, dtype=np.float16).tobytes() + b"xyz"
    assert unshuffle_bytes(shuffle_bytes(raw, 2), 2) == raw
    data = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float16)
    with h5py.File(tmp_path / "s.h5", "w") as file:  # HDF5 shuffles itself; the stored bytes must be ours
        dset = file.create_dataset("x", data=data[None], chunks=(1, 4, 8, 8), shuffle=True)
        assert dset.id.read_direct_chunk((0, 0, 0, 0))[1] == shuffle_bytes(data.tobytes(), 2)


def test_options_are_checked_with_clear_errors():
    with pytest.raises(UsageError, match=r"--keep-bits must be in 1\.\.10 for float16"):
        ExtractConfig("a", "b", keep_bits=11)
    with pytest.raises(UsageError, match="does not apply to --dtype uint8"):
        ExtractConfig("a", "b", dtype="uint8", keep_bits=7)
    with pytest.raises(UsageError, match="--pool must be"):
        ExtractConfig("a", "b", pool=(0, 3))
    assert ExtractConfig("a", "b", pool=7).pool == (7, 7)
    assert ExtractConfig("a", "b").shuffled and not ExtractConfig("a", "b", compression="none").shuffled
    run = fmpipe(["extract", "x", "y.h5", "--pool", "7y"])
    assert run.returncode == 2 and "--pool must be H or HxW" in run.stderr


def test_storage_attributes_fmpipe_never_writes_are_refused():
    for attrs in ({"keep_bits": "x"}, {"keep_bits": 99}, {"dtype": "int8"}, {"pool": [0, 3]}, {"pool": [1, 2, 3]}):
        with pytest.raises(InputError, match=r"fmpipe never writes|not fmpipe's|two positive sizes"):
            encoding_of(attrs)
    assert encoding_of({}) == Encoding()  # files from before these options: float16, nothing else
    assert encoding_of({"dtype": "uint8", "pool": [7, 7]}) == Encoding("uint8", pool=(7, 7))


# -- the default model on the sample photos -----------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory, sample_images) -> dict[str, Path]:
    """The sample photos extracted with the default model: float32, float16 (the default), uint8,
    keep-bits 7, pool 7x7 and pool 1."""
    root = tmp_path_factory.mktemp("encoding")
    runs = {
        "float32": {"dtype": "float32"},
        "float16": {},
        "uint8": {"dtype": "uint8"},
        "keep7": {"keep_bits": 7},
        "pool7": {"pool": (7, 7)},
        "pool1": {"pool": (1, 1)},
    }
    out = {}
    for name, options in runs.items():
        out[name] = root / f"{name}.h5"
        pipeline.extract(str(sample_images), str(out[name]), **CPU, **options)
    return out


def maps_bytes(path: Path) -> int:
    with h5py.File(path) as file:
        return sum(file[f"{g}/{schema.DATA}"].id.get_storage_size() for g in schema.map_groups(file))


@pytest.mark.slow
def test_uint8_decodes_within_half_a_step_of_float32_in_half_the_bytes(made):
    with pipeline.open_store(made["uint8"]) as q, pipeline.open_store(made["float32"]) as f:
        assert q.run.dtype == "uint8" and len(q) == 5
        for sq, sf in zip(q.stages, f.stages, strict=True):
            assert sq.data.stored.dtype == np.uint8 and sq.data.dtype == np.float32
            decoded, exact = sq.data[:], sf.data[:]
            step = (sq.max[:] - sq.min[:])[..., None, None] / 510
            err = np.abs(decoded - exact)
            assert (err <= step + 2.0**-20 * np.abs(exact).max()).all(), sq.index
            np.testing.assert_array_equal(sq.min[:], sf.min[:])  # the same statistics: from float32 on the device
            np.testing.assert_allclose(sq.data[2, 3:5, 1], decoded[2, 3:5, 1])  # any index reads decoded values
            assert np.float32(sq.data[1, 0, 2, 2]) == decoded[1, 0, 2, 2]
    assert maps_bytes(made["uint8"]) <= 0.55 * maps_bytes(made["float16"])
    with h5py.File(made["uint8"]) as f, pipeline.open_store(made["uint8"]) as store:  # docs/format.md's 3 lines
        q = f["stages/2/data"][0].astype("float32")
        lo, hi = f["stages/2/min"][0][:, None, None], f["stages/2/max"][0][:, None, None]
        by_hand, decoded = lo + q * (hi - lo) / 255, store.stage(2).data[0]
        np.testing.assert_allclose(by_hand, decoded, rtol=0, atol=2.0**-20 * np.abs(decoded).max())  # float32 order


@pytest.mark.slow
def test_uint8_renders_the_float16_files_pictures_within_one(made, tmp_path):
    for name in ("uint8", "float16"):
        pipeline.render(made[name], stage=1, out=tmp_path / name, layout="channels", normalize="channel", workers=1)
    pngs = sorted((tmp_path / "float16").rglob("*.png"))
    assert len(pngs) == 5 * 24
    worst = 0
    for png in pngs:
        a = np.asarray(Image.open(png)).astype(int)  # palette indices: the colour table's entry per pixel
        b = np.asarray(Image.open(tmp_path / "uint8" / png.relative_to(tmp_path / "float16"))).astype(int)
        worst = max(worst, int(np.abs(a - b).max()))
    assert worst <= 1


@pytest.mark.slow
def test_uint8_verify_passes_recompute_holds_and_a_corrupted_chunk_is_caught(made, tmp_path):
    report = pipeline.verify(made["uint8"], recompute=2)
    assert report.ok and report.recomputed == 2, [str(p) for p in report.problems]
    broken = shutil.copy(made["uint8"], tmp_path / "broken.h5")
    with h5py.File(broken) as file:
        info = file["stages/2/data"].id.get_chunk_info_by_coord((3, 0, 0, 0))
    with open(broken, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(bytes([byte[0] ^ 0xFF]))
    report = pipeline.verify(broken)
    assert [p.stage for p in report.problems] == [2] and "fails its zstd checksum" in str(report.problems[0])


@pytest.mark.slow
def test_uint8_three_shards_merge_into_the_single_run(sample_images, tmp_path):
    """40 images (the photos, flipped and cropped) in shards of 16, 16 and 8 (batches of 4 line up)."""
    images = tmp_path / "images"
    images.mkdir()
    for i, photo in enumerate(sorted(p for p in sample_images.rglob("*") if p.is_file())):
        picture = Image.open(photo).convert("RGB").resize((96, 96))
        for j in range(8):
            variant = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if j % 2 else picture
            variant.crop((j, j, 96 - j, 96 - j)).save(images / f"p{i}-{j}.png")
    options = {**CPU, "dtype": "uint8", "size": (96, 96), "batch_size": 4}
    pipeline.extract(str(images), str(tmp_path / "single.h5"), **options)
    for out, copy in (("virtual.h5", False), ("copy.h5", True)):
        for index in range(3):
            pipeline.extract(str(images), str(tmp_path / out), shard_index=index, num_shards=3, **options)
        pipeline.merge(tmp_path / out, copy=copy)
    for out in ("virtual.h5", "copy.h5"):
        with pipeline.open_store(tmp_path / out) as got, pipeline.open_store(tmp_path / "single.h5") as want:
            assert got.keys == want.keys and len(got) == 40 and got.run.num_shards == 3
            for a, b in zip(got.stages, want.stages, strict=True):
                np.testing.assert_array_equal(a.data.stored[:], b.data.stored[:])
                for name in ("min", "max", "mean"):
                    np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:])
            assert got.file[f"stages/0/{schema.TOP}"].attrs[schema.ATTR_TOP_K] == 40
        assert pipeline.verify(tmp_path / out).ok


@pytest.mark.slow
def test_keep_bits_7_is_plain_float16_within_2_to_the_minus_7_and_smaller(made):
    with h5py.File(made["keep7"]) as kept, h5py.File(made["float16"]) as full:
        for group in schema.map_groups(full):
            a, b = kept[f"{group}/data"], full[f"{group}/data"]
            assert a.dtype == np.float16 and a.compression == b.compression
            x, y = a[:].astype(np.float64), b[:].astype(np.float64)
            # Subnormals (|x| < 2^-14) have fewer mantissa bits: there the 3 dropped bits are 2^-22 absolute.
            assert (np.abs(x - y) <= 2.0**-7 * np.abs(y) + 2.0**-22).all(), group
            assert np.array_equal(np.sign(x), np.sign(y))
    assert made["keep7"].stat().st_size < made["float16"].stat().st_size
    report = pipeline.verify(made["keep7"], recompute=1)
    assert report.ok and report.recomputed == 1, [str(p) for p in report.problems]


@pytest.mark.slow
def test_pool_stores_the_adaptive_average_of_the_float32_maps(made):
    with pipeline.open_store(made["float32"]) as full:
        exact = {s.index: torch.from_numpy(s.data[:]) for s in full.stages}
    for name, pool in (("pool7", (7, 7)), ("pool1", (1, 1))):
        with pipeline.open_store(made[name]) as store:
            assert tuple(store.file.attrs[schema.ATTR_POOL]) == pool
            for s in store.stages:
                c = exact[s.index].shape[1]
                assert s.data.shape[1:] == (
                    c,
                    min(pool[0], exact[s.index].shape[2]),
                    min(pool[1], exact[s.index].shape[3]),
                )
                want = F.adaptive_avg_pool2d(exact[s.index], s.data.shape[2:]).numpy()
                got = s.data[:].astype(np.float64)
                peak = np.abs(want).reshape(*want.shape[:2], -1).max(-1)[..., None, None]
                assert (np.abs(got - want) <= 2.0**-11 * np.abs(want) + 1e-5 * peak + 2.0**-24).all(), (name, s.index)
        report = pipeline.verify(made[name], recompute=1)
        assert report.ok and report.recomputed == 1, [str(p) for p in report.problems]
    text = pipeline.info(made["pool1"])
    assert "pooled to at most 1x1" in text and "(320, 1, 1)" in text


@pytest.mark.slow
def test_uint8_chunks_are_the_declared_zstd_frames_that_plain_h5py_and_verify_read_alike(made):
    """What the file declares (filter 32015 at fmpipe's level, no shuffle, XXH64) is what each chunk
    is: a zstd frame with its content size and checksum, which plain h5py + hdf5plugin and verify's
    own decoder (storage/integrity/chunks.py) read as the same bytes."""
    with h5py.File(made["uint8"]) as file:
        assert schema.text(file.attrs[schema.ATTR_CHUNK_CHECKSUM]) == "zstd-xxh64"
        assert not file.attrs[schema.ATTR_SHUFFLE]
        for group in schema.map_groups(file):
            data = file[f"{group}/{schema.DATA}"]
            dcpl = data.id.get_create_plist()
            assert [dcpl.get_filter(i)[:3:2] for i in range(dcpl.get_nfilters())] == [(32015, (codecs.ZSTD_LEVEL,))]
            n, c, h, w = data.shape
            k = data.chunks[1]
            for row in range(n):
                for c0 in range(0, c, k):
                    mask, raw = data.id.read_direct_chunk((row, c0, 0, 0))
                    frame = zstandard.get_frame_parameters(raw)
                    assert mask == 0 and frame.has_checksum and frame.content_size == k * h * w
                    ours = np.frombuffer(chunks.decode(raw, "zstd", mask, k * h * w, True), np.uint8)
                    plain = data[row, c0 : c0 + k]
                    np.testing.assert_array_equal(ours.reshape(k, h, w)[: len(plain)], plain)


@pytest.mark.slow
def test_shuffle_is_declared_so_plain_h5py_reads_the_same_values(made):
    with h5py.File(made["float16"]) as file:
        data = file["stages/1/data"]
        dcpl = data.id.get_create_plist()
        assert [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())] == [2, 32015]
        assert bool(file.attrs[schema.ATTR_SHUFFLE])
        with pipeline.open_store(made["float16"]) as store:
            np.testing.assert_array_equal(data[:], store.stage(1).data[:])


# -- honest sizes -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_one_image_file_of_the_default_model_is_under_1_mb_and_its_size_is_reported(sample_images, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sample_images / "chelsea.jpg", one)
    out = tmp_path / "one.h5"
    run = fmpipe(["extract", one, out, "--device", "cpu", "--workers", "0"])
    assert run.returncode == 0, run.stderr
    size = out.stat().st_size
    assert size < 1_000_000
    assert f"{size / 1e6:.1f} MB written" in run.stdout
    with h5py.File(out) as file:
        for group in schema.map_groups(file):
            top = file[f"{group}/{schema.TOP}"]
            assert top.attrs[schema.ATTR_TOP_K] == 1 and top["max_rows"].shape[1] == 1
            assert top["max_rows"].compression == "gzip"
    info = fmpipe(["info", out])
    assert f"{size / 1e6:.3f} MB per done image" in info.stdout and "float16, byte shuffle, zstd" in info.stdout


def test_dry_run_and_stages_show_pooled_shapes_and_every_table(sample_images, tmp_path):
    run = fmpipe(["extract", sample_images, tmp_path / "o.h5", "--dry-run", "--pool", "7x7", "--dtype", "uint8"])
    assert run.returncode == 0, run.stderr
    assert "(16, 7, 7)" in run.stdout and "(16, 112, 112)" not in run.stdout
    assert "uint8 (scaled by each map's min and max), pooled to at most 7x7" in run.stdout
    assert "MB of keys, statistics and top lists" in run.stdout and not (tmp_path / "o.h5").exists()
    stages = fmpipe(["stages", "--pool", "1", "--dtype", "uint8"])
    assert stages.returncode == 0 and "(320, 1, 1)" in stages.stdout and "(uint8)" in stages.stdout


def test_a_resume_with_another_storage_choice_is_refused_naming_the_original(image_dir, tmp_path):
    out = tmp_path / "out.h5"
    options = {"model": "resnet18", "random_init": True, "size": (32, 32), "stages": (0, 1), **CPU}
    pipeline.extract(str(image_dir), str(out), dtype="uint8", pool=(3, 3), **options)
    with h5py.File(out, "r+") as file:  # as if stopped after 4 images
        file[schema.DONE][4:] = False
        file.attrs[schema.ATTR_COMPLETE] = False
    out.rename(files.partial_path(out))
    cases = (
        ({"pool": (3, 3)}, "--dtype uint8 (this run: float16)"),
        ({"dtype": "uint8"}, "--pool 3x3 (this run: none)"),
        ({"pool": (3, 3), "keep_bits": 7}, "--keep-bits 0 (this run: 7)"),
        ({"pool": (3, 3), "compression": "gzip"}, "--shuffle off (this run: on)"),
    )
    for other, original in cases:
        with pytest.raises(FingerprintMismatch) as err:
            pipeline.extract(str(image_dir), str(out), **options, **other)
        assert original in str(err.value) and "shapes" not in str(err.value)
    summary = pipeline.extract(str(image_dir), str(out), dtype="uint8", pool=(3, 3), **options)
    assert summary.done_before == 4 and summary.stored == 5
    assert pipeline.verify(out).ok


@pytest.mark.slow
def test_the_viewer_serves_uint8_maps_as_render_draws_them(made, tmp_path):
    from test_viewer import get, running

    path = made["uint8"]
    with running(path) as viewer:
        for stage, row, channel, normalize in ((0, 1, 3, "channel"), (2, 4, 39, "image"), (4, 0, 300, "stage")):
            out = tmp_path / f"r{stage}"
            pipeline.render(
                path,
                stage=stage,
                out=out,
                images=str(row),
                channels=str(channel),
                layout="channels",
                normalize=normalize,
                workers=1,
            )
            (written,) = out.rglob(f"c{channel:04d}.png")
            status, _, body = get(viewer, f"/tile/{stage}/{row}/{channel}.png?normalize={normalize}")
            assert status == 200 and body == written.read_bytes()
        assert sum(b.raw_reads for b in viewer.catalog.blocks.values()) >= 3
        status, _, body = get(viewer, "/api/top?stage=2&channel=5&k=3")
    assert status == 200 and body.count(b'"row"') == 3


def test_uint8_stores_overflowing_values_and_nan_maps_verifiably(image_dir, tmp_path, caplog):
    """float16 refuses 1e6-scaled maps (inf); uint8 scales each map into 0..255 and keeps them. A map with
    NaN reads back as NaN, and verify accepts both."""
    out = tmp_path / "big.h5"
    pipeline.extract(image_dir, out, model="tiny_models:overflow_net", dtype="uint8", size=(16, 16), **CPU)
    with pipeline.open_store(out) as store:
        view = store.stage(0)
        assert np.nanmax(np.abs(view.data[:])) > 65504 and np.isfinite(view.data[:]).all()
    nan = tmp_path / "nan.h5"
    pipeline.extract(image_dir, nan, model="tiny_models:nan_net", dtype="uint8", size=(16, 16), **CPU)
    assert "NaN or inf activations" in caplog.text
    with pipeline.open_store(nan) as store:
        data = store.stage(0).data[:]
        assert np.isnan(data[:, 0]).all() and np.isfinite(data[:, 1]).all()
    assert pipeline.verify(out).ok and pipeline.verify(nan).ok


def test_layers_table_shows_pooled_shapes_and_bytes():
    from types import SimpleNamespace

    from pipeline.extraction.describe import describe_layers

    calls = [
        SimpleNamespace(spec="layer1", calls=1, output="(1, 64, 56, 56)", map_shape=(64, 56, 56)),
        SimpleNamespace(spec="fc", calls=1, output="(1, 1000)", map_shape=(1000, 1, 1)),
        SimpleNamespace(spec="pair", calls=1, output="tuple", map_shape=None),
    ]
    found = SimpleNamespace(model="m", size_hw=(224, 224), calls=calls)
    text = describe_layers(found, 1, (7, 7))
    assert "(64, 7, 7)" in text and f"{64 * 49 / 1e6:8.3f}" in text and "(1000, 1, 1)" in text
    line = next(row for row in text.splitlines() if "layer1" in row)
    assert "(not storable)" in text and line.split()[-2:] == ["7)", f"{64 * 49 / 1e6:.3f}"]
