"""Layers by name: `--layers` stores what forward hooks on the same modules see, per call for a
module that runs more than once; tokens and vectors become maps; bad names say what to do."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, write_images

import pipeline
from pipeline.decoding import decode
from pipeline.errors import OutputExistsError, UsageError
from pipeline.extraction import models
from pipeline.extraction.loading import normalize

LAYERS = ("layer3.1.conv2", "layer4", "avgpool", "layer1.0.relu:1", "layer1.0.relu:2")


def hooked(model, folder, keys, size_hw, names) -> dict[str, np.ndarray]:
    """Every call's output of each named module, from plain forward hooks: {"name:call": (N, ...)}."""
    pixels = torch.from_numpy(np.stack([decode(folder / k, size_hw).pixels for k in keys]))
    seen: dict[str, np.ndarray] = {}
    calls: dict[str, int] = {}

    def make(name):
        def hook(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            seen[f"{name}:{calls[name]}"] = out.detach().clone().float().numpy()

        return hook

    handles = [model.module.get_submodule(n).register_forward_hook(make(n)) for n in names]
    with torch.inference_mode():
        model.module(normalize(pixels, model.mean, model.std))
    for h in handles:
        h.remove()
    return seen


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    base = tmp_path_factory.mktemp("layers")
    keys = write_images(base / "images", 6, size=(50, 70))
    model = models.resolve("tv:resnet18", random_init=True, seed=3)
    torch.save(model.module.state_dict(), base / "r18.pt")
    return base, keys, models.resolve("tv:resnet18", weights=str(base / "r18.pt"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_layers_store_what_forward_hooks_see(resnet, dtype):
    base, keys, model = resnet
    out = base / f"l-{dtype}.h5"
    options = dict(model="tv:resnet18", weights=str(base / "r18.pt"), size=(64, 64), batch_size=6, workers=0)
    pipeline.extract(base / "images", out, layers=LAYERS, dtype=dtype, **options)
    want = hooked(model, base / "images", keys, (64, 64), ["layer3.1.conv2", "layer4", "avgpool", "layer1.0.relu"])
    assert want["layer1.0.relu:1"].shape == want["layer1.0.relu:2"].shape
    assert not np.array_equal(want["layer1.0.relu:1"], want["layer1.0.relu:2"])  # two calls, two maps
    with pipeline.open_store(out) as store:
        assert store.layer_names == list(LAYERS) and store.stage_indices == []
        for name in LAYERS:
            stored = store.layer(name).data[:].astype(np.float32)
            expected = want[name if ":" in name else f"{name}:1"]
            assert stored.shape == expected.shape, name
            if dtype == "float32":
                np.testing.assert_array_equal(stored, expected, err_msg=name)
            else:  # float16 rounding: half an ulp, relative 2**-11
                np.testing.assert_allclose(stored, expected, rtol=2**-10, atol=1e-6, err_msg=name)
        view = store.layer("avgpool")
        assert (view.channels, view.height, view.width, view.module) == (512, 1, 1, "avgpool")
        assert store.layer("layer4").stride == 32
        np.testing.assert_allclose(view.max[:], want["avgpool:1"].reshape(6, 512), rtol=1e-6)


@pytest.mark.slow
def test_layers_with_stages_vectors_and_tokens(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 2, size=(40, 40))
    out = tmp_path / "v.h5"
    pipeline.extract(
        folder, out, model="vit_tiny_patch16_224", random_init=True, workers=0,
        stages=(-1,), layers=("blocks.1", "head", "blocks.2.mlp.fc1"),
    )  # fmt: skip
    with pipeline.open_store(out) as store:
        assert store.stage_indices == [11]
        assert store.layer("blocks.1").shape == (192, 14, 14)  # 1 class token + 14x14 patches → a 14x14 grid
        assert store.layer("blocks.2.mlp.fc1").shape == (768, 14, 14)
        assert store.layer("blocks.1").stride == 16
        assert store.layer("head").shape == (1000, 1, 1)  # a vector per image
        assert np.isfinite(store.layer("blocks.1").data[:]).all()


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (("layer1.0.relu",), "runs 2 times per forward pass; pick a call: layer1.0.relu:1, layer1.0.relu:2"),
        (("layer1.0.relu:3",), "there is no call 3"),
        (("layer9",), "no module named 'layer9'"),
        (("layer1.0.rleu",), "Close names: layer1.0.relu"),
        (("layer4", "layer4"), "lists a name twice"),
    ],
)
def test_bad_layer_names_say_what_to_do(tmp_path, layers, message):
    folder = tmp_path / "images"
    write_images(folder, 1)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipeline.extract(folder, tmp_path / "x.h5", model="tv:resnet18", random_init=True, size=(32, 32), layers=layers)


def test_a_module_returning_a_tuple_is_refused_naming_it(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 1)
    with pytest.raises(UsageError, match="returns a tuple of 2"):
        pipeline.extract(
            folder, tmp_path / "x.h5", model="tiny_models:tuple_net", size=(32, 32), layers=("pair",), workers=0
        )


@pytest.mark.slow
def test_layers_command_lists_names_calls_and_shapes():
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "layers", "tv:resnet18", "--size", "64"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line for line in run.stdout.splitlines()[2:] if line.strip()}
    for name, shape in [
        ("layer3.1.conv2", "(256, 4, 4)"),
        ("layer4", "(512, 2, 2)"),
        ("avgpool", "(512, 1, 1)"),
        ("layer1.0.relu:1", "(64, 16, 16)"),
        ("layer1.0.relu:2", "(64, 16, 16)"),
    ]:
        assert name in rows and shape in rows[name], (name, run.stdout)
    assert "layer1.0.relu " not in run.stdout  # a repeated module is only listed per call
    filtered = subprocess.run(
        [sys.executable, "-m", "pipeline", "layers", "tv:resnet18", "--size", "64", "--filter", r"^layer2\.0\.conv"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    names = [line.split()[0] for line in filtered.stdout.splitlines()[2:] if line.strip()]
    assert names == ["layer2.0.conv1", "layer2.0.conv2"], filtered.stdout


def test_layers_resume_merge_and_render_like_stages(resnet, tmp_path):
    base, _, _ = resnet
    options = dict(model="tv:resnet18", weights=str(base / "r18.pt"), size=(64, 64), batch_size=4, workers=0)
    options["layers"] = ("layer2", "layer1.0.relu:2")
    for index in range(2):
        pipeline.extract(base / "images", tmp_path / "m.h5", shard_index=index, num_shards=2, **options)
    pipeline.merge(tmp_path / "m.h5")
    pipeline.extract(base / "images", tmp_path / "s.h5", **options)
    with pipeline.open_store(tmp_path / "m.h5") as merged, pipeline.open_store(tmp_path / "s.h5") as single:
        for name in options["layers"]:
            np.testing.assert_array_equal(merged.layer(name).data[:], single.layer(name).data[:])
    with h5py.File(tmp_path / "s.h5") as f:
        assert "layers/layer1.0.relu:2/top/max_rows" in f
    summary = pipeline.render(tmp_path / "s.h5", "layer1.0.relu:2", channels="0:3", layout="channels", workers=1)
    assert summary.pngs == 3 * 6
    with pytest.raises(OutputExistsError, match="--layers"):
        pipeline.extract(base / "images", tmp_path / "s.h5", **{**options, "layers": ("layer2",)})


def test_layers_are_viewed_like_stages(resnet, tmp_path):
    """A layer's tile equals render's PNG; /api/top?layer= equals the top command; pages link it."""
    import json
    from urllib.parse import quote

    from test_viewer import decoded, get, running

    base, _, _ = resnet
    out = tmp_path / "v.h5"
    name = "layer1.0.relu:2"
    pipeline.extract(
        base / "images", out, model="tv:resnet18", weights=str(base / "r18.pt"), size=(64, 64), workers=0,
        stages=(1,), layers=(name, "avgpool"),
    )  # fmt: skip
    render = pipeline.render(out, name, images="2", channels="5", layout="channels", workers=1, out=str(tmp_path / "r"))
    png = next((tmp_path / "r" / render.folder).rglob("c0005.png"))
    segment = "layer:" + quote(name, safe="")
    with running(out) as viewer:
        status, _, body = get(viewer, f"/tile/{segment}/2/5.png")
        assert status == 200
        np.testing.assert_array_equal(decoded(body), decoded(png.read_bytes()))
        status, _, body = get(viewer, f"/api/top?layer={quote(name)}&channel=5&k=3")
        assert status == 200
        assert json.loads(body) == json.loads(pipeline.top(out, stage=name, channel=5, k=3).to_json())
        status, _, page = get(viewer, "/image/2")
        assert status == 200 and f"/tile/{segment}/2/" in page.decode() and b"layer avgpool" in page
        assert get(viewer, f"/examples/{segment}/5")[0] == 200
        assert get(viewer, "/tile/layer:nope/2/5.png")[0] == 404


def test_verify_checks_and_recomputes_layers(resnet, tmp_path):
    base, _, _ = resnet
    out = tmp_path / "l.h5"
    options = dict(model="tv:resnet18", weights=str(base / "r18.pt"), size=(64, 64), workers=0)
    pipeline.extract(base / "images", out, layers=("layer1.0.relu:2", "avgpool"), **options)
    assert pipeline.verify(out, recompute=6).ok
    with h5py.File(out, "r+") as f:  # swap two rows of one layer, maps and statistics alike
        group = f["layers/layer1.0.relu:2"]
        for name in ("data", "min", "max", "mean"):
            a, b = group[name][1], group[name][4]
            group[name][1], group[name][4] = b, a
    report = pipeline.verify(out, recompute=6)
    assert not report.ok
    assert any("layer layer1.0.relu:2" in str(p) and "recomputed maps differ" in str(p) for p in report.problems)


@pytest.mark.slow
def test_channels_last_layers_of_swin_are_stored_channels_first(tmp_path):
    folder = tmp_path / "images"
    keys = write_images(folder, 1, size=(40, 40))
    out = tmp_path / "s.h5"
    pipeline.extract(
        folder, out, model="swin_tiny_patch4_window7_224", random_init=True, workers=0, dtype="float32",
        layers=("layers.1", "layers.1.blocks.0.mlp"),
    )  # fmt: skip
    model = models.resolve("swin_tiny_patch4_window7_224", random_init=True)
    want = hooked(model, folder, keys, (224, 224), ["layers.1", "layers.1.blocks.0.mlp"])
    with pipeline.open_store(out) as store:
        np.testing.assert_array_equal(store.layer("layers.1").data[:], want["layers.1:1"].transpose(0, 3, 1, 2))
        tokens = want["layers.1.blocks.0.mlp:1"]  # (N, 784, 192): a 28x28 grid of tokens
        grid = tokens.transpose(0, 2, 1).reshape(1, 192, 28, 28)
        np.testing.assert_array_equal(store.layer("layers.1.blocks.0.mlp").data[:], grid)


def test_a_layer_overwritten_in_place_later_is_stored_as_it_was(tmp_path):
    """conv1's output is overwritten by an in-place ReLU right after: the layer keeps its negatives,
    and relu1 (the same tensor after the ReLU) holds none."""
    folder = tmp_path / "images"
    write_images(folder, 3, size=(16, 16))
    out = tmp_path / "i.h5"
    pipeline.extract(folder, out, model="tiny_models:inplace_net", size=(16, 16), workers=0, layers=("conv1", "relu1"))
    with pipeline.open_store(out) as store:
        conv, relu = store.layer("conv1").data[:], store.layer("relu1").data[:]
    assert (conv < 0).any() and (relu >= 0).all()
    np.testing.assert_array_equal(np.maximum(conv, 0), relu)
