"""`fmpipe reduce`: sparse random projection (seeded, distances within the Johnson-Lindenstrauss
bound) and incremental PCA (explained variance as an exact PCA's), failed images left out, pooling,
and PCA refused up front when it would not fit in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_images
from helpers import fmpipe
from scipy.spatial.distance import pdist
from sklearn.decomposition import PCA
from sklearn.random_projection import johnson_lindenstrauss_min_dim

import pipeline
from pipeline.analysis.features import pooled
from pipeline.errors import InputError, OutputExistsError, UsageError

OPTIONS = dict(model="tiny_models:plain_net", size=(64, 64), batch_size=32, workers=0, device="cpu")
BROKEN = "img007b.png"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """200 images (+1 that fails): stage 0 is 4×32×32 = 4,096 numbers per image."""
    base = tmp_path_factory.mktemp("reduce")
    images = base / "images"
    write_images(images, 200, size=(48, 48))
    (images / BROKEN).write_bytes(b"broken")
    pipeline.extract(str(images), str(base / "out.h5"), **OPTIONS)
    return base / "out.h5"


def flattened(path, stage: int) -> tuple[np.ndarray, list[str]]:
    """(N, F) float64 maps of the images that hold maps, and their keys (in memory: the reference)."""
    with pipeline.open_store(path) as store:
        ok = store.ok
        maps = store.read(stage, slice(None))[ok]
        keys = [key for key, good in zip(store.keys, ok, strict=True) if good]
        return maps.reshape(len(maps), -1).astype(np.float64), keys


def jl_epsilon(n: int, dim: int) -> float:
    """The smallest ε whose Johnson-Lindenstrauss dimension for n points is at most `dim`."""
    lo, hi = 1e-3, 0.999
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if johnson_lindenstrauss_min_dim(n, eps=mid) <= dim else (mid, hi)
    return hi


@pytest.mark.slow
def test_srp_is_reproducible_and_keeps_distances_within_the_jl_bound(collection, tmp_path):
    first, again, other = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    summary = pipeline.reduce(collection, stage=0, method="srp", dim=1024, out=first, seed=3)
    pipeline.reduce(collection, stage=0, method="srp", dim=1024, out=again, seed=3)
    pipeline.reduce(collection, stage=0, method="srp", dim=1024, out=other, seed=4)
    a, b, c = np.load(first), np.load(again), np.load(other)
    np.testing.assert_array_equal(a["features"], b["features"])  # same seed, same features
    assert not np.allclose(a["features"], c["features"])
    maps, keys = flattened(collection, 0)
    assert a["features"].shape == (200, 1024) and a["features"].dtype == np.float32
    assert list(a["keys"]) == keys and BROKEN not in keys
    assert summary.images == 200 and summary.left_out == 1 and summary.features == 4096
    assert float(a["density"]) == pytest.approx(1 / np.sqrt(4096))
    ratio = pdist(a["features"].astype(np.float64), "sqeuclidean") / pdist(maps, "sqeuclidean")
    eps = jl_epsilon(200, 1024)
    assert 0.2 < eps < 0.25
    assert 1 - eps < ratio.min() and ratio.max() < 1 + eps, (ratio.min(), ratio.max(), eps)


@pytest.mark.slow
def test_pca_explains_the_variance_an_exact_pca_does(collection, tmp_path):
    out = tmp_path / "pca.npz"
    summary = pipeline.reduce(collection, stage=1, method="pca", dim=30, out=out)
    got = np.load(out)
    maps, keys = flattened(collection, 1)  # 8×16×16 = 2,048 numbers per image
    exact = PCA(n_components=30, svd_solver="full").fit(maps)
    assert got["features"].shape == (200, 30) and list(got["keys"]) == keys
    assert np.abs(got["explained_variance_ratio"][:10] - exact.explained_variance_ratio_[:10]).max() < 0.01
    np.testing.assert_allclose(got["mean"], maps.mean(axis=0), rtol=1e-4, atol=1e-5)
    # The first component's scores agree with the exact PCA's up to sign.
    r = np.corrcoef(got["features"][:, 0], exact.transform(maps)[:, 0])[0, 1]
    assert abs(r) > 0.99
    assert summary.left_out == 1 and "1 images left out" in summary.line()


@pytest.mark.slow
def test_pca_in_small_blocks_matches_one_block(collection, tmp_path, monkeypatch):
    """Partial fits over many blocks (the held-back rows included) give the same PCA as one block."""
    one = tmp_path / "one.npz"
    pipeline.reduce(collection, stage=2, method="pca", dim=8, out=one)
    monkeypatch.setattr("pipeline.analysis.features.BLOCK_BYTES", 4 * 1024 * 9)  # 9 images per read
    many = tmp_path / "many.npz"
    pipeline.reduce(collection, stage=2, method="pca", dim=8, out=many)
    a, b = np.load(one), np.load(many)
    assert a["features"].shape == b["features"].shape == (200, 8)
    np.testing.assert_allclose(a["explained_variance_ratio"][:5], b["explained_variance_ratio"][:5], atol=0.01)


def test_pooling_is_adaptive_average_pooling():
    maps = np.random.default_rng(0).normal(size=(3, 4, 7, 5)).astype(np.float32)
    for size in ((3, 2), (7, 5), (1, 1), (4, 4)):
        want = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps), size).numpy()
        np.testing.assert_allclose(pooled(maps, size), want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_cli_reduce_with_pool_and_its_refusals(collection, tmp_path):
    out = tmp_path / "f.npz"
    srp = ["reduce", collection, "--stage", "0", "--method", "srp", "--dim", "16"]
    run = fmpipe([*srp, "--pool", "4x4", "--out", out])
    assert run.returncode == 0, run.stderr
    assert "200 images × 16 (srp of 64 features); 1 images left out" in run.stdout
    assert np.load(out)["features"].shape == (200, 16)
    again = fmpipe([*srp, "--out", out])
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    pca = ["reduce", collection, "--stage", "0", "--method", "pca", "--dim", "100", "--out", tmp_path / "p.npz"]
    big = fmpipe([*pca, "--max-memory", "0.01"])
    assert big.returncode == 2 and "needs about" in big.stderr and "10.0 MB --max-memory" in big.stderr, big.stderr
    assert not (tmp_path / "p.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]  # no spool or temporary file left


def test_bad_requests_are_usage_errors(collection, tmp_path):
    with pytest.raises(UsageError, match="--method"):
        pipeline.reduce(collection, stage=0, method="umap", dim=4, out=tmp_path / "f.npz")
    with pytest.raises(UsageError, match="more than the 1,024 numbers"):
        pipeline.reduce(collection, stage=2, method="srp", dim=2000, out=tmp_path / "f.npz")
    with pytest.raises(UsageError, match="larger than stage 2's maps"):
        pipeline.reduce(collection, stage=2, method="srp", dim=4, pool=(9, 9), out=tmp_path / "f.npz")
    with pytest.raises(UsageError, match=r"must end in \.npz"):
        pipeline.reduce(collection, stage=2, method="srp", dim=4, out=tmp_path / "f.npy")
    with pytest.raises(InputError, match=r"needs at least 300 images with maps; .* has 200"):
        pipeline.reduce(collection, stage=2, method="pca", dim=300, out=tmp_path / "f.npz")
    (tmp_path / "f.npz").write_bytes(b"mine")
    with pytest.raises(OutputExistsError):
        pipeline.reduce(collection, stage=2, method="srp", dim=4, out=tmp_path / "f.npz")
    assert (tmp_path / "f.npz").read_bytes() == b"mine"


def test_the_readme_rsa_example_is_the_code_its_figure_runs():
    import importlib
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo / "scripts"))
    example = importlib.import_module("make_readme_pictures").RSA_EXAMPLE
    readme = (repo / "README.md").read_text()
    assert f"```python\n{example}```" in readme
    assert "fmpipe reduce out.h5 --stage S --method srp --dim 256 --out sS.npz" in readme


@pytest.mark.slow
def test_reduce_export_and_open_dataset_never_import_torch(collection, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, pipeline\n"
        "path, out = sys.argv[1], sys.argv[2]\n"
        "pipeline.reduce(path, stage=2, method='srp', dim=8, out=out + '/s.npz')\n"
        "pipeline.reduce(path, stage=2, method='pca', dim=4, out=out + '/p.npz')\n"
        "pipeline.export(path, out + '/npy', stage=2, images='0:3')\n"
        "pipeline.open_dataset(path, 2)['data'][:2].values\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(collection), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


@pytest.mark.slow
def test_missing_optional_libraries_are_named_with_the_install_command(collection, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['sklearn'] = sys.modules['xarray'] = None  # as if not installed\n"
        "import pipeline\n"
        "for call in (lambda: pipeline.reduce(sys.argv[1], stage=0, method='srp', dim=4, out=sys.argv[2]),\n"
        "             lambda: pipeline.open_dataset(sys.argv[1], 0)):\n"
        "    try:\n"
        "        call()\n"
        "    except pipeline.errors.UsageError as err:\n"
        "        print(err)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(collection), str(tmp_path / "f.npz")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "pip install 'fmpipe[reduce]'" in lines[0] and "pip install 'fmpipe[xarray]'" in lines[1]
    assert not (tmp_path / "f.npz").exists()


def test_a_stage_declaring_huge_maps_is_refused_before_reading(collection, tmp_path):
    """A crafted file may declare any shape: one image of 100,000×1,000×1,000 is 400 GB as float32."""
    import shutil

    import h5py

    path = tmp_path / "huge.h5"
    shutil.copy(collection, path)
    with h5py.File(path, "r+") as f:
        group = f["stages/0"]
        n = group["data"].shape[0]
        for name in ("data", "min", "max", "mean", "image", "channel", "y", "x"):
            del group[name]
        group.create_dataset("data", shape=(n, 100_000, 1000, 1000), dtype="f2", chunks=(1, 1, 1000, 1000))
        for name in ("min", "max", "mean"):
            group.create_dataset(name, shape=(n, 100_000), dtype="f4")
        group.attrs.update({"channels": 100_000, "height": 1000, "width": 1000})
    for call in (
        lambda: pipeline.reduce(path, stage=0, method="srp", dim=8, out=tmp_path / "f.npz"),
        lambda: pipeline.export(path, tmp_path / "npy", stage=0),
        lambda: pipeline.export(path, tmp_path / "copy.h5", format="hdf5"),
    ):
        # Refused on open by the structure check every reader shares (storage/format/structure.py), before
        # reduce's or export's own memory check would be reached.
        with pytest.raises(
            InputError, match=r"stage 0 declares maps of shape \(100000, 1000, 1000\) per image; refusing"
        ):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.h5"]
