"""PCA view: files built with the writer from maps of known spatial patterns, recovered by the fit and the PNGs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import OutputExistsError, UsageError
from pipeline.records import BatchResult, StageInfo
from pipeline.rendering import pca as pca_module
from pipeline.rendering.pca import PcaFit, fit_pca, load_fit, pca_rgb
from pipeline.rendering.run import RenderConfig, render
from pipeline.storage.reading.store import open_store
from pipeline.storage.writing.writer import ShardWriter, WritePlan

REPO = Path(__file__).resolve().parent.parent
SIDE = 16  # map height and width: whole periods of every pattern below
AMPLITUDES = (3.0, 2.0, 1.0)  # distinct variances, so the components are the patterns themselves


def write_file(path: Path, keys: list[str], maps: dict[int, np.ndarray], failed=(), root: str | None = None) -> Path:
    """A complete fmpipe file written by the real writer from float32 maps {stage: (N, C, H, W)}."""
    stages = [
        StageInfo(i, f"blocks.{i}", a.shape[1], 2 ** (i + 1), a.shape[2], a.shape[3], "forward_hook")
        for i, a in maps.items()
    ]
    first = next(iter(maps.values()))
    attrs = {"input_size": [first.shape[2] * 4, first.shape[3] * 4], "images_root": root or "/nonexistent"}
    writer = ShardWriter.open(path, WritePlan(keys, stages, "float16", "zstd", "fp-pca-test", {}, attrs), threads=1)
    rows = np.arange(len(keys))
    ok = np.array([r for r in rows if r not in failed], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {
            i: np.stack([a[ok].min((2, 3)), a[ok].max((2, 3)), a[ok].mean((2, 3))]).astype(np.float32)
            for i, a in maps.items()
        }
    data = {i: a[ok].astype(np.float16) for i, a in maps.items()}
    hw = np.tile(np.array([[48, 64]], np.int32), (len(rows), 1))
    writer.submit(BatchResult(rows, ok, hw, [(int(r), "broken on purpose") for r in failed], data, stats))
    return writer.finalize()


def patterns(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, SIDE, SIDE): cos along x, cos along y, cos at twice the x frequency; each image shifted.

    Whole periods, so the three are uncorrelated over any image (and any shift) with variance 1/2.
    """
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    out = np.empty((n, 3, SIDE, SIDE))
    for i in range(n):
        dx, dy, dx2 = rng.integers(0, SIDE, 3)
        out[i, 0] = np.cos(2 * np.pi * (x + dx) / SIDE)
        out[i, 1] = np.cos(2 * np.pi * (y + dy) / SIDE)
        out[i, 2] = np.cos(4 * np.pi * (x + dx2) / SIDE)
    return out


def pattern_maps(rng: np.random.Generator, n: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps (n, C, H, W) float32, loadings (C, 3), patterns (n, 3, H, W)): every channel mixes the three
    patterns through orthonormal loadings scaled 3 : 2 : 1, plus a per-channel offset and a little noise."""
    loadings, _ = np.linalg.qr(rng.standard_normal((channels, 3)))
    shown = patterns(rng, n)
    maps = np.einsum("ck,nkhw->nchw", loadings * AMPLITUDES, shown)
    maps += rng.uniform(2, 5, channels)[None, :, None, None]  # post-ReLU-like positive means: centring matters
    maps += 0.01 * rng.standard_normal(maps.shape)
    return maps.astype(np.float32), loadings, shown


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def patterned(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    maps, loadings, shown = pattern_maps(rng, 6, 24)
    small = rng.uniform(0, 1, (6, 2, 4, 4)).astype(np.float32)  # a stage with fewer channels than components
    path = write_file(tmp_path_factory.mktemp("pca") / "p.h5", [f"img{i}.jpg" for i in range(6)], {0: maps, 1: small})
    return path, loadings, shown


# -- must show 1: three known patterns come back ------------------------------------------


def test_fit_recovers_the_loadings_of_the_three_patterns(patterned):
    path, loadings, _ = patterned
    with open_store(path) as store:
        fit = fit_pca(store, 0)
    assert fit.components.shape == (3, 24) and fit.samples == 6 * SIDE * SIDE and fit.images == 6
    for k in range(3):  # in order of variance, up to sign
        assert abs(float(fit.components[k] @ loadings[:, k])) > 0.999, k
    np.testing.assert_allclose(fit.explained, np.array([9, 4, 1]) / 14, atol=0.01)  # amplitudes² / Σ
    strongest = np.abs(fit.components).argmax(axis=1)
    assert (fit.components[np.arange(3), strongest] > 0).all()  # the sign convention


def test_layout_pca_draws_each_pattern_as_one_colour_channel(patterned, tmp_path):
    path, _, shown = patterned
    summary = render(RenderConfig(str(path), 0, out=str(tmp_path), layout="pca", workers=1))
    assert summary.pngs == 6 and summary.grids == 0
    fit = load_fit(tmp_path / "stage0" / "pca.json")
    assert isinstance(fit, PcaFit) and fit.samples == 6 * SIDE * SIDE
    for i in range(6):
        with Image.open(tmp_path / "stage0" / f"img{i}" / "pca.png") as png:
            assert png.mode == "RGB" and png.size == (128, 128)  # 16 × automatic scale 8
            rgb = np.asarray(png)[::8, ::8]
        matched = [max(range(3), key=lambda p, k=k: abs(correlation(rgb[..., k], shown[i, p]))) for k in range(3)]
        assert sorted(matched) == [0, 1, 2], matched  # each pattern in exactly one colour channel
        for k, p in enumerate(matched):
            assert abs(correlation(rgb[..., k], shown[i, p])) > 0.97, (i, k, p)
        assert matched == [0, 1, 2]  # here also in order: red has the largest variance
        assert rgb.min() <= 5 and rgb.max() >= 250  # the 1st-99th percentile range spans the colours


def test_every_image_uses_the_one_saved_mapping(patterned, tmp_path):
    path, _, _ = patterned
    render(RenderConfig(str(path), 0, out=str(tmp_path), layout="pca", workers=2))
    fit = load_fit(tmp_path / "stage0" / "pca.json")
    with open_store(path) as store:
        for row in (0, 5):
            expected = pca_rgb(fit, store.stage(0).data[row])
            with Image.open(tmp_path / "stage0" / f"img{row}" / "pca.png") as png:
                np.testing.assert_array_equal(np.asarray(png)[::8, ::8], expected)


def test_fit_is_seeded_bounded_and_skips_failed_rows(tmp_path):
    rng = np.random.default_rng(3)
    maps, _, _ = pattern_maps(rng, 10, 12)
    maps[4, :, 2, 3] = np.nan  # NaN activations at one position of a stored image
    path = write_file(tmp_path / "f.h5", [f"k{i}.png" for i in range(10)], {0: maps}, failed=(2, 7))
    with open_store(path) as store:
        first = fit_pca(store, 0, samples=400, seed=11, max_images=5)
        again = fit_pca(store, 0, samples=400, seed=11, max_images=5)
        other = fit_pca(store, 0, samples=400, seed=12, max_images=5)
        json_fit = PcaFit.from_json(first.to_json())
    assert first.images == 5 and 395 <= first.samples <= 400  # 80 positions from each of 5 images, NaN dropped
    for name in ("mean", "components", "lo", "hi", "explained"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        np.testing.assert_array_equal(getattr(first, name), getattr(json_fit, name))
    assert not np.array_equal(first.mean, other.mean)  # another sample ...
    assert abs(float(other.components[0] @ first.components[0])) > 0.999  # ... the same first component
    assert all(np.isfinite(getattr(first, n)).all() for n in ("mean", "components", "lo", "hi"))


def test_sample_shrinks_for_many_channels(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    path = write_file(tmp_path / "wide.h5", ["a.png", "b.png"], {0: rng.random((2, 64, 8, 8), dtype=np.float32)})
    monkeypatch.setattr(pca_module, "MAX_SAMPLE_VALUES", 64 * 50)
    with open_store(path) as store:
        fit = fit_pca(store, 0)
    assert fit.samples == 50  # 25 positions from each image: samples × C stays under the cap


def test_fewer_than_three_channels_still_give_an_rgb_picture(patterned, tmp_path):
    path, _, _ = patterned
    render(RenderConfig(str(path), 1, out=str(tmp_path), layout="pca", workers=1, images="0"))
    rgb = np.asarray(Image.open(tmp_path / "stage1" / "img0" / "pca.png"))
    assert rgb.shape == (128, 128, 3)  # 4 × 32 (the automatic scale's ceiling)
    assert rgb[..., 0].std() > 10 and rgb[..., 1].std() > 10 and (rgb[..., 2] == 0).all()  # no third component


def test_pca_option_errors_and_clobber(patterned, tmp_path):
    path, _, _ = patterned
    for options in ({"channels": "0,1"}, {"top_k": 3}, {"overlay": True}, {"pca_samples": 2}):
        with pytest.raises(UsageError, match="pca"):
            RenderConfig(str(path), 0, layout="pca", **options)
    render(RenderConfig(str(path), 0, out=str(tmp_path), layout="pca", workers=1, images="0"))
    with pytest.raises(OutputExistsError, match=r"pca\.png"):
        render(RenderConfig(str(path), 0, out=str(tmp_path), layout="pca", workers=1, images="0"))
    render(RenderConfig(str(path), 0, out=str(tmp_path), layout="grid", workers=1, images="0"))  # other PNGs: fine


def test_cli_layout_pca(patterned, tmp_path):
    path, _, _ = patterned
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "render",
            str(path),
            "--stage",
            "0",
            "--layout",
            "pca",
            "--out",
            str(tmp_path),
            "--pca-samples",
            "500",
            "--pca-seed",
            "3",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "6 PNGs written (0 grids) for 6 images" in run.stdout
    saved = json.loads((tmp_path / "stage0" / "pca.json").read_text())
    assert saved["seed"] == 3 and saved["samples"] <= 500 and len(saved["components"]) == 3
