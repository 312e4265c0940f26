"""Models: the default is genuinely pretrained (offline); weights files load safely."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pipeline.decoding import decode
from pipeline.errors import InputError
from pipeline.extraction import models
from pipeline.extraction.loading import normalize

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _top5(model, path) -> list[int]:
    pixels = torch.from_numpy(decode(str(path), model.input_hw).pixels)[None]
    with torch.inference_mode():
        logits = model.module(normalize(pixels, model.mean, model.std))
    return logits[0].topk(5).indices.tolist()


def test_default_model_is_pretrained_on_imagenet(sample_images):
    model = models.resolve(models.LITE0)
    assert model.weights_id.startswith(models.LITE0_PACKAGE)
    assert model.input_hw == (224, 224)
    cat = _top5(model, sample_images / "chelsea.jpg")
    assert cat[0] in CAT_CLASSES, cat
    coffee = _top5(model, sample_images / "coffee.jpg")
    assert coffee[0] == ESPRESSO, coffee


def test_random_init_is_reproducible_and_not_pretrained(sample_images):
    a = models.resolve(models.LITE0, random_init=True)
    b = models.resolve(models.LITE0, random_init=True)
    for (name, pa), pb in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert _top5(a, sample_images / "chelsea.jpg")[0] not in CAT_CLASSES | {ESPRESSO}


def test_weights_file_loads_a_state_dict(tmp_path):
    source = models.resolve("tiny_models:inplace_net")
    state = {k: torch.full_like(v, 0.5) for k, v in source.module.state_dict().items()}
    path = tmp_path / "w.pt"
    torch.save({"state_dict": state}, path)
    loaded = models.resolve("tiny_models:inplace_net", weights=str(path))
    assert loaded.weights_id.startswith("file:w.pt:sha256=")
    assert all(torch.all(v == 0.5) for v in loaded.module.state_dict().values())


class _Exploit:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED').touch()",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": _Exploit()}))
    with pytest.raises(InputError, match="--unsafe-pickle"):
        models.resolve("tiny_models:inplace_net", weights=str(path))
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_weights_are_refused(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="does not fit"):
        models.resolve("tiny_models:inplace_net", weights=str(path))


def test_hub_weights_offline_give_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(models.ModelError, match="--random-init"):
        models.resolve("resnet18")


def test_lite0_package_mapping_checks_every_shape():
    import timm

    module = timm.create_model("efficientnet_lite0", num_classes=10)
    with pytest.raises(models.ModelError, match="refusing to load mismatched weights"):
        models.load_lite0_package(module)
    assert np.isfinite(sum(float(v.float().sum()) for v in module.state_dict().values()))
