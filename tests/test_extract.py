"""Extract end to end: stored maps equal a direct forward pass, keys line up, shapes, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
import torch
from conftest import write_images

import pipeline
from pipeline import sources
from pipeline.decoding import decode
from pipeline.errors import ModelError, OutputExistsError, UsageError
from pipeline.extraction import models
from pipeline.extraction.loading import normalize


def reference_maps(model_name: str, folder, keys, size_hw, modules: list[str], **resolve_kw) -> dict:
    """Stage maps from a plain forward pass with our own hooks: {module: (N, C, H, W) float32}."""
    model = models.resolve(model_name, **resolve_kw)
    pixels = torch.from_numpy(np.stack([decode(str(folder / k), size_hw).pixels for k in keys]))
    x = normalize(pixels, model.mean, model.std)
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.module.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().clone())
        )
        for name in modules
    ]
    with torch.inference_mode():
        model.module(x)
    for handle in handles:
        handle.remove()
    return {name: t.float().numpy() for name, t in captured.items()}


@pytest.mark.parametrize("batch_size", [1, 7])
def test_stored_maps_equal_direct_forward(image_dir, tmp_path, batch_size):
    out = tmp_path / "out.h5"
    summary = pipeline.extract(
        image_dir, out, model="efficientnet_lite0", random_init=True, size=(64, 96), batch_size=batch_size, workers=0
    )
    assert summary.stored == 9 and summary.failed == 0
    keys = sources.discover(image_dir)
    with pipeline.open_store(out, require_complete=True) as store:
        assert store.keys == keys
        assert store.done.all()
        modules = [s.module for s in store.stages]
        ref = reference_maps("efficientnet_lite0", image_dir, keys, (64, 96), modules, random_init=True)
        assert [s.shape for s in store.stages] == [ref[m].shape[1:] for m in modules]
        for stage in store.stages:
            expected = ref[stage.module]
            stored = stage.data[:]
            assert stored.dtype == np.float16
            # float16 rounding (half an ulp, relative 2**-11) plus float32 accumulation noise of
            # ~1e-5 between batch shapes (the reference ran all 9 images as one batch).
            np.testing.assert_allclose(stored.astype(np.float32), expected, rtol=2**-10, atol=1e-4)
            # Statistics are float32 of the unrounded maps; the reference ran as one batch of 9,
            # so CPU kernels may differ in the last float32 bits.
            for name, reduce in (("min", np.min), ("max", np.max), ("mean", np.mean)):
                np.testing.assert_allclose(getattr(stage, name)[:], reduce(expected, axis=(2, 3)), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(store.orig_hw, np.tile([48, 64], (9, 1)))


def test_batch_sizes_store_the_same_rows(image_dir, tmp_path):
    files = []
    for batch_size in (1, 7):
        out = tmp_path / f"b{batch_size}.h5"
        pipeline.extract(
            image_dir, out, model="tv:resnet18", random_init=True, size=(32, 32), batch_size=batch_size, workers=2
        )
        files.append(out)
    with pipeline.open_store(files[0]) as one, pipeline.open_store(files[1]) as seven:
        assert one.keys == seven.keys
        for a, b in zip(one.stages, seven.stages, strict=True):
            # Different batch shapes may pick different CPU kernels: allow float16 rounding.
            np.testing.assert_allclose(
                a.data[:].astype(np.float32), b.data[:].astype(np.float32), rtol=2**-9, atol=2e-3
            )


def test_inplace_relu_does_not_change_the_stored_stage(image_dir, tmp_path):
    out = tmp_path / "inplace.h5"
    pipeline.extract(image_dir, out, model="tiny_models:inplace_net", size=(16, 16), workers=0)
    keys = sources.discover(image_dir)
    ref = reference_maps("tiny_models:inplace_net", image_dir, keys, (16, 16), ["conv1"])["conv1"]
    with pipeline.open_store(out) as store:
        stage0 = store.stage(0).data[:].astype(np.float32)
    assert (ref < 0).any(), "the reference conv output must have negative values"
    assert (stage0 < 0).sum() == (ref < 0).sum()  # post-ReLU values would have none
    np.testing.assert_allclose(stage0, ref, rtol=2**-10, atol=1e-5)


def test_undeclared_model_stages_are_discovered(image_dir, tmp_path):
    out = tmp_path / "plain.h5"
    pipeline.extract(image_dir, out, model="tiny_models:plain_net", size=(32, 32), workers=0, stages=(0, -1))
    with pipeline.open_store(out) as store:
        assert store.stage_indices == [0, 2]
        assert [(s.module, s.shape, s.stride) for s in store.stages] == [
            ("stem", (4, 16, 16), 2),
            ("head", (16, 4, 4), 8),
        ]


@pytest.mark.slow
def test_pvt_v2_b1_reproduces_the_article_shapes(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(folder / "grey.png")
    out = tmp_path / "pvt.h5"
    pipeline.extract(folder, out, model="pvt_v2_b1", size=(800, 1200), random_init=True, workers=0)
    with pipeline.open_store(out) as store:
        assert [s.shape for s in store.stages] == [(64, 200, 300), (128, 100, 150), (320, 50, 75), (512, 25, 38)]
        assert [s.data.shape[0] for s in store.stages] == [1] * 4
        assert np.isfinite(store.stage(3).data[0]).all()
        assert store.attrs["input_size"].tolist() == [800, 1200]


def test_exact_size_passes_an_image_through_unchanged(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    assert np.array_equal(decode(str(folder / "a.png"), (40, 56)).pixels, pixels)


def test_out_of_range_stage_lists_the_valid_ones(image_dir, tmp_path):
    with pytest.raises(UsageError, match=r"valid indices are 0\.\.4"):
        pipeline.extract(image_dir, tmp_path / "x.h5", random_init=True, stages=(7,), size=(32, 32))
    assert not (tmp_path / "x.h5.partial").exists()


def test_stage_ranges_have_python_slice_meaning(image_dir, tmp_path):
    from pipeline.config import parse_stages, pick_indices, resolve_stage_indices

    five = list(range(5))
    for text, expected in (("0:-1", five[0:-1]), ("-2:", five[-2:]), (":3", five[:3]), ("::2", five[::2])):
        assert resolve_stage_indices(parse_stages(text), 5) == expected, text
    assert resolve_stage_indices(parse_stages("4,0:2,-1"), 5) == [0, 1, 4]
    assert pick_indices("3:0:-1", 5, "channel", "x") == [3, 2, 1]  # render's --channels: the same parser
    for bad in ("5:", "1:1", "-1:0"):
        with pytest.raises(UsageError, match=rf"stage range '{bad}' selects nothing"):
            resolve_stage_indices(parse_stages(bad), 5)
    for bad in ("a", "1:2:0", "0-3"):
        with pytest.raises(UsageError):
            parse_stages(bad)
    # `0:-1` stores every stage but the last (it used to store none and call the file complete).
    out = tmp_path / "r.h5"
    pipeline.extract(image_dir, out, random_init=True, stages="0:-1", size=(32, 32), workers=0)
    with pipeline.open_store(out, require_complete=True) as store:
        assert [s.index for s in store.stages] == [0, 1, 2, 3]
        assert all(np.isfinite(s.data[0]).all() for s in store.stages)
    with pytest.raises(UsageError, match="would hold no maps"):
        pipeline.extract(image_dir, tmp_path / "none.h5", random_init=True, stages=(), size=(32, 32))
    assert not list(tmp_path.glob("none.h5*"))


def test_an_extract_storing_no_map_is_refused_naming_the_selection(tmp_path):
    from helpers import fmpipe

    argv = ["extract", "data/images", tmp_path / "x.h5", "--stages", "5:", "--random-init", "--size", "32"]
    result = fmpipe(argv, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2, result.stderr
    assert "fmpipe: error: stage range '5:' selects nothing" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("x.h5*"))


def test_unknown_model_suggests_names(image_dir, tmp_path):
    with pytest.raises(ModelError, match="resnet"):
        pipeline.extract(image_dir, tmp_path / "x.h5", model="resnet_5O")


def test_existing_output_needs_overwrite(image_dir, tmp_path):
    out = tmp_path / "o.h5"
    kw = dict(model="tiny_models:plain_net", size=(16, 16), workers=0)
    pipeline.extract(image_dir, out, **kw)
    again = pipeline.extract(image_dir, out, **kw)  # same config: already complete, nothing to do
    assert again.stored == 0 and again.done_before == 9
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pipeline.extract(image_dir, out, dtype="float32", **kw)
    replaced = pipeline.extract(image_dir, out, dtype="float32", overwrite=True, **kw)
    assert replaced.stored == 9
    with h5py.File(out) as f:
        assert f["stages/0/data"].dtype == np.float32


def test_dry_run_computes_and_writes_nothing(image_dir, tmp_path):
    summary = pipeline.extract(image_dir, tmp_path / "d.h5", random_init=True, size=(64, 64), dry_run=True)
    assert summary.dry_run and summary.images == 9
    assert summary.stages[0].shape == (16, 32, 32)
    assert not list(tmp_path.glob("d.h5*"))


def test_bad_option_values_are_usage_errors(image_dir, tmp_path):
    from pipeline.config import parse_size, parse_stages

    assert parse_size("800x1200") == (800, 1200) and parse_size("224") == (224, 224)
    assert parse_stages("0,2,-1") == (0, 2, -1) and parse_stages("all") is None
    for bad in ("0x5", "axb", "1x2x3"):
        with pytest.raises(UsageError):
            parse_size(bad)
    with pytest.raises(UsageError, match="--batch-size"):
        pipeline.extract(image_dir, tmp_path / "x.h5", batch_size=0)


def test_every_row_records_its_source_digest_and_the_weights_digest(tmp_path):
    import hashlib

    folder = tmp_path / "images"
    keys = write_images(folder, 4, size=(20, 24))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"not an image at all")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")  # unreadable: no bytes, no digest
    out = tmp_path / "out.h5"
    pipeline.extract(folder, out, model="resnet18", random_init=True, size=(32, 32), workers=0, device="cpu")
    with h5py.File(out) as f:
        stored = dict(zip([k.decode() for k in f["images/key"][:]], f["images/source_sha256"][:], strict=True))
        sizes = dict(zip([k.decode() for k in f["images/key"][:]], f["images/source_size"][:], strict=True))
        weights = f.attrs["weights_sha256"]
        assert f.attrs["chunk_checksum"] == "zstd-xxh64" and int(f.attrs["format_version"]) == 2
    for key in [*keys, "empty.jpg", "text.png"]:
        data = (folder / key).read_bytes()
        assert stored[key].decode() == hashlib.sha256(data).hexdigest() and sizes[key] == len(data), key
    assert stored["gone.jpg"] == b"" and sizes["gone.jpg"] == -1
    assert weights == models.resolve("resnet18", random_init=True).weights_sha256


def test_state_dict_digest_changes_with_any_weight_and_not_with_the_file(tmp_path):
    model = models.resolve("resnet18", random_init=True)
    before = models.state_dict_sha256(model.module)
    for name in ("a.pt", "b.pt"):
        torch.save(model.module.state_dict(), tmp_path / name)
    assert models.resolve("resnet18", weights=str(tmp_path / "a.pt")).weights_sha256 == before
    assert models.resolve("resnet18", weights=str(tmp_path / "b.pt")).weights_sha256 == before
    with torch.no_grad():
        model.module.layer1[0].bn1.running_mean[3] += 1e-3  # a buffer, not a parameter
    assert models.state_dict_sha256(model.module) != before
