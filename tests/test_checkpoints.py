"""--weights: training checkpoints, nested keys, DDP prefixes, safetensors, --weights-prefix, clear refusals."""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from safetensors.torch import save_file

import pipeline
from pipeline.config import ExtractConfig
from pipeline.decoding import decode
from pipeline.errors import InputError, UsageError
from pipeline.extraction import models
from pipeline.extraction.checkpoints import prefix_summary, suggest_prefix
from pipeline.extraction.loading import normalize

REPO = Path(__file__).resolve().parent.parent
TINY = "tiny_models:inplace_net"  # conv1 (6,3,3,3), conv2 (8,6,3,3), fc (4,8): 6 tensors
BODY = "backbone.0.body."


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights for TINY, distinct from its factory's."""
    generator = torch.Generator().manual_seed(seed)
    shapes = models.resolve(TINY).module.state_dict()
    return {name: torch.randn(value.shape, generator=generator) for name, value in shapes.items()}


def loaded(path: Path, **kw) -> tuple[dict[str, torch.Tensor], str]:
    model = models.resolve(TINY, weights=str(path), **kw)
    return model.module.state_dict(), model.weights_id


def assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the seed: a DETR-family detector with a PVT backbone ------------------------------------------------


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> dict:
    """A DETR-style training checkpoint around random pvt_v2_b1 weights, and three 64x64 images."""
    import timm

    root = tmp_path_factory.mktemp("detr")
    torch.manual_seed(11)
    backbone = timm.create_model("pvt_v2_b1").eval()
    weights = backbone.state_dict()
    detector = {BODY + name: value for name, value in weights.items()}
    detector.update({f"transformer.encoder.layers.{i}.linear1.weight": torch.randn(8, 4) for i in range(2)})
    detector["transformer.decoder.norm.weight"] = torch.randn(8)
    detector.update({"class_embed.weight": torch.randn(92, 256), "class_embed.bias": torch.randn(92)})
    checkpoint = {"model": detector, "optimizer": {"state": {}}, "epoch": 49, "args": argparse.Namespace(lr=1e-4)}
    torch.save(checkpoint, root / "ckpt.pth")
    images = root / "images"
    keys = write_images(images, 3, size=(64, 64))
    return {"root": root, "ckpt": root / "ckpt.pth", "model": backbone, "images": images, "keys": keys}


def test_a_detr_backbone_is_stored_like_timm_forward_intermediates(detr, tmp_path):
    out = tmp_path / "pvt.h5"
    options = dict(model="pvt_v2_b1", size=(64, 64), workers=0, device="cpu", dtype="float32")
    pipeline.extract(detr["images"], out, weights=str(detr["ckpt"]), weights_prefix=BODY, **options)
    model = detr["model"]
    pixels = torch.from_numpy(np.stack([decode(str(detr["images"] / k), (64, 64)).pixels for k in detr["keys"]]))
    with torch.inference_mode():
        x = normalize(pixels, models.IMAGENET_MEAN, models.IMAGENET_STD)
        expected = model.forward_intermediates(x, intermediates_only=True)
    with pipeline.open_store(out, require_complete=True) as store:
        assert store.keys == detr["keys"]
        assert [s.shape for s in store.stages] == [(64, 16, 16), (128, 8, 8), (320, 4, 4), (512, 2, 2)]
        for stage, reference in zip(store.stages, expected, strict=True):
            np.testing.assert_allclose(stage.data[:], reference.numpy(), rtol=1e-5, atol=1e-5)
        assert store.attrs["weights"] == f"file:ckpt.pth:sha256={sha256(detr['ckpt'])}:key=model:prefix={BODY}"
        assert store.attrs["weights_sha256"] == models.state_dict_sha256(model)


def test_a_wrong_prefix_is_refused_with_the_checkpoint_prefixes(detr, tmp_path):
    with pytest.raises(InputError) as caught:
        models.resolve("pvt_v2_b1", weights=str(detr["ckpt"]), weights_prefix="backbone.body.")
    text = str(caught.value)
    assert caught.value.exit_code == 2
    assert "backbone.0.body. (178 tensors), transformer. (3), class_embed. (2)" in text
    hint = "178 of the model's 178 tensors are there under 'backbone.0.body.': pass --weights-prefix backbone.0.body."
    assert text.endswith(hint)
    with pytest.raises(InputError, match=r"178 of the model's 178 tensors are missing .*pass --weights-prefix"):
        models.resolve("pvt_v2_b1", weights=str(detr["ckpt"]))  # no prefix at all


def fmpipe(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_wrong_prefix_exits_2_through_the_cli(detr, tmp_path):
    out = tmp_path / "x.h5"
    args = ["extract", detr["images"], out, "--model", "pvt_v2_b1", "--weights", detr["ckpt"], "--size", "64"]
    run = fmpipe(*args, "--weights-prefix", "backbone.body.", "--device", "cpu")
    assert run.returncode == 2, run.stderr
    assert "backbone.0.body. (178 tensors)" in run.stderr and "Traceback" not in run.stderr
    assert not list(tmp_path.iterdir())


# -- where the state dict is in the file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrap", "key"),
    [
        (lambda s: s, None),
        (lambda s: {"state_dict": s, "epoch": 3}, "state_dict"),
        (lambda s: {"model": {"state_dict": s}, "optimizer": {"lr": 0.1}}, "model.state_dict"),
        (lambda s: {"ema": s, "step": 1000}, "ema"),
        (lambda s: {"module." + k: v for k, v in s.items()}, None),  # DataParallel / DDP
        (lambda s: {"model": {"module." + k: v for k, v in s.items()}}, "model"),
    ],
)
def test_state_dicts_are_found_where_training_scripts_put_them(tmp_path, wrap, key):
    state = tiny_state(1)
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(state), path)
    weights, weights_id = loaded(path)
    assert_same(weights, state)
    assert weights_id == f"file:ckpt.pt:sha256={sha256(path)}" + (f":key={key}" if key else "")


def test_of_several_state_dicts_the_plain_one_is_taken_and_weights_key_chooses(tmp_path, caplog):
    plain, ema = tiny_state(1), tiny_state(2)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": plain, "model_ema": {"module": ema}, "epoch": 7}, path)
    with caplog.at_level(logging.WARNING):
        weights, weights_id = loaded(path)
    assert_same(weights, plain)
    assert weights_id.endswith(":key=model")
    assert "holds state dicts under model, model_ema.module; took 'model'" in caplog.text
    weights, weights_id = loaded(path, weights_key="model_ema.module")
    assert_same(weights, ema)
    assert weights_id.endswith(":key=model_ema.module")
    with pytest.raises(InputError, match=r"no entry 'shadow' at model_ema; there it holds a mapping with keys module"):
        loaded(path, weights_key="model_ema.shadow")
    with pytest.raises(InputError, match=r"'epoch' in .* is a int, not a state dict"):
        loaded(path, weights_key="epoch")


def test_a_file_without_a_state_dict_names_what_it_holds(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weights_of_the_net": tiny_state(1), "epoch": 2}, path)
    with pytest.raises(InputError, match=r"it holds a mapping with keys weights_of_the_net, epoch\. Name the entry"):
        loaded(path)
    assert_same(loaded(path, weights_key="weights_of_the_net")[0], tiny_state(1))


def test_safetensors_load_by_name_and_by_content(tmp_path):
    state = tiny_state(3)
    for name in ("w.safetensors", "w.bin"):
        save_file({"module." + k: v.contiguous() for k, v in state.items()}, tmp_path / name)
        weights, weights_id = loaded(tmp_path / name)
        assert_same(weights, state)
        assert weights_id == f"file:{name}:sha256={sha256(tmp_path / name)}"
    with pytest.raises(InputError, match=r"safetensors file: one flat state dict\. Drop --weights-key"):
        loaded(tmp_path / "w.safetensors", weights_key="model")


def test_weights_prefix_takes_a_sub_tree(tmp_path):
    state = tiny_state(4)
    path = tmp_path / "detector.pt"
    torch.save({"model": {**{"backbone.body." + k: v for k, v in state.items()}, "head.w": torch.zeros(2)}}, path)
    for prefix in ("backbone.body.", "backbone.body"):  # the final dot may be left out
        weights, weights_id = loaded(path, weights_prefix=prefix)
        assert_same(weights, state)
        assert weights_id.endswith(":key=model:prefix=backbone.body.")


# -- refusals ----------------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshapen_tensors_are_counted_with_examples(tmp_path):
    state = tiny_state(5)
    del state["fc.bias"]
    state["fc.weight"] = torch.zeros(5, 8)
    state["extra.scale"] = torch.ones(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as caught:
        loaded(path)
    assert str(caught.value) == (
        "--weights bad.pt does not fit the model: 1 of the model's 6 tensors are missing (e.g. fc.bias); "
        "1 of the file's 6 are unexpected (e.g. extra.scale); 1 have another shape (fc.weight: file (5, 8), "
        "model (4, 8)). The file's tensors by prefix: conv1. (2 tensors), conv2. (2), fc. (1), extra. (1). "
        "Give --weights-prefix P to take the tensors under P, or another --model."
    )


def test_a_timm_backbone_without_its_classifier_or_batch_counts_loads(tmp_path):
    import timm

    torch.manual_seed(6)
    source = timm.create_model("resnet18", num_classes=0)  # a detector's backbone: no fc
    # older checkpoints have no BatchNorm num_batches_tracked: BatchNorm fills it in (0)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": state}, tmp_path / "backbone.pt")
    model = models.resolve("resnet18", weights=str(tmp_path / "backbone.pt"))
    assert isinstance(model.module.fc, torch.nn.Identity)
    assert model.weights_sha256 == models.state_dict_sha256(source)


def test_weights_key_and_prefix_need_a_weights_file(tmp_path):
    with pytest.raises(UsageError, match=r"--weights-prefix backbone\. picks tensors of a weights file"):
        ExtractConfig(images=str(tmp_path), out="o.h5", weights_prefix="backbone.")
    with pytest.raises(UsageError, match="--weights-key model"):
        ExtractConfig(images=str(tmp_path), out="o.h5", weights_key="model", random_init=True)


def test_prefix_summary_and_suggestion():
    names = [f"backbone.0.body.stages.{i}.w" for i in range(4)] + ["transformer.enc.w", "transformer.dec.w", "bias"]
    assert prefix_summary(names) == "backbone.0.body.stages. (4 tensors), transformer. (2), bias (1)"
    assert prefix_summary(names, limit=1) == "backbone.0.body.stages. (4 tensors), and 2 more"
    assert suggest_prefix(names, {"stages.0.w", "stages.1.w", "stages.2.w", "stages.3.w"}) == ("backbone.0.body.", 4)
    assert suggest_prefix(names, {"stages.0.w", "a", "b", "c", "d"}) is None  # 1 of 5: not a good guess


def test_verify_recompute_loads_the_weights_as_extract_did(tmp_path):
    images = tmp_path / "images"
    write_images(images, 2, size=(16, 16))
    state = tiny_state(7)
    torch.save({"model": {"body." + k: v for k, v in state.items()}, "epoch": 1}, tmp_path / "ckpt.pt")
    out = tmp_path / "o.h5"
    options = dict(model=TINY, size=(16, 16), workers=0, device="cpu")
    pipeline.extract(images, out, weights=str(tmp_path / "ckpt.pt"), weights_prefix="body.", **options)
    report = pipeline.verify(out, recompute=2, model=TINY)  # a factory model: named again by the user
    assert report.ok and report.recomputed == 2
