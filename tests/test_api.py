"""The Python API reads like numpy's or xarray's: explicit keyword-only options with their defaults
in the signature (`help(pipeline.render)` shows them), taken from the config dataclasses so they
cannot drift, numpy-style docstrings, Python's own TypeError for an unknown keyword, and every
keyword handed to the config field of the same name."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re
import subprocess
import sys
import types

import pytest
from conftest import REPO

import pipeline
from pipeline import errors
from pipeline.analysis.config import ExportConfig, ReduceConfig
from pipeline.config import ExtractConfig
from pipeline.jobs.findings import VerifyConfig
from pipeline.rendering.config import RenderConfig
from pipeline.site.config import GalleryConfig
from pipeline.viewer.config import TopConfig, ViewConfig

VERBS = sorted(name for name in pipeline.__all__ if inspect.isfunction(getattr(pipeline, name)))
CONFIGS = {  # verb → the config dataclass whose fields are its parameters, in order
    "extract": ExtractConfig,
    "verify": VerifyConfig,
    "render": RenderConfig,
    "gallery": GalleryConfig,
    "view": ViewConfig,
    "top": TopConfig,
    "export": ExportConfig,
    "reduce": ReduceConfig,
}
# verb → (module, function) it forwards its options to, for the verbs without a config
FORWARDS = {
    "colorize": ("pipeline.rendering.painting", "colorize"),
    "merge": ("pipeline.jobs.merge", "merge"),
    "open_store": ("pipeline.storage.reading.store", "open_store"),
    "open_dataset": ("pipeline.analysis.dataset", "open_dataset"),
}


def test_the_verbs_are_the_commands_and_the_two_readers():
    commands = "colorize export extract gallery info layers merge open_dataset open_store reduce render stages top"
    assert [*commands.split(), "verify", "view"] == VERBS


@pytest.mark.parametrize("name", VERBS)
def test_a_verb_takes_no_var_args_and_its_options_are_keyword_only(name):
    signature = inspect.signature(getattr(pipeline, name))
    kinds = [p.kind for p in signature.parameters.values()]
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert set(kinds) <= {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    positional_options = [
        p.name
        for p in signature.parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is not inspect.Parameter.empty
    ]
    assert positional_options == (["model"] if name in ("stages", "layers") else []), positional_options  # the input
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name}) has no annotation"
    assert signature.return_annotation is not inspect.Signature.empty


@pytest.mark.parametrize("name", VERBS)
def test_help_lists_every_option_with_its_default(name):
    verb = getattr(pipeline, name)
    text = pydoc.render_doc(verb, renderer=pydoc.plaintext)
    assert f"function {name} in module pipeline" in text
    for parameter in inspect.signature(verb).parameters.values():
        if parameter.default is inspect.Parameter.empty:
            assert re.search(rf"\b{parameter.name}: '[^']+'[,)]", text), parameter.name
        else:
            assert re.search(rf"\b{parameter.name}: '[^']+' = {re.escape(repr(parameter.default))}[,)]", text), (
                parameter.name
            )


@pytest.mark.parametrize("name", VERBS)
def test_a_verb_documents_every_parameter_and_its_return_numpy_style(name):
    verb = getattr(pipeline, name)
    doc = inspect.getdoc(verb)
    assert "\nParameters\n----------\n" in doc and "\nReturns\n-------\n" in doc, doc
    section = doc.split("\nParameters\n----------\n")[1].split("\nReturns\n")[0]
    entries = [line.split(" : ")[0] for line in section.splitlines() if line and not line[0].isspace()]
    documented = [parameter for entry in entries for parameter in entry.split(", ")]
    assert documented == list(inspect.signature(verb).parameters), documented


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_verbs_parameters_and_defaults_are_its_configs_fields(name):
    parameters = list(inspect.signature(getattr(pipeline, name)).parameters.values())
    fields = dataclasses.fields(CONFIGS[name])
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        expected = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        assert parameter.default == expected, f"{name}({parameter.name}): {parameter.default!r} != {expected!r}"


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_a_verbs_defaults_are_those_of_the_function_it_calls(name):
    import importlib

    module, function = FORWARDS[name]
    inner = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    outer = inspect.signature(getattr(pipeline, name)).parameters
    for parameter in list(outer.values())[1:]:  # the first is the path (the inner one may call it source)
        assert parameter.name in inner, f"{module}.{function} takes no {parameter.name}"
        assert parameter.default == inner[parameter.name].default, parameter.name


@pytest.mark.parametrize("name", VERBS)
def test_an_unknown_keyword_is_pythons_type_error(name):
    verb = getattr(pipeline, name)
    required = [p for p in inspect.signature(verb).parameters.values() if p.default is inspect.Parameter.empty]
    args = ["nothing-here.h5" for p in required if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    with pytest.raises(TypeError, match=f"{name}\\(\\) got an unexpected keyword argument 'colour'"):
        verb(*args, colour="red")


# A value other than the default for every option of every verb with a config; each is passed alone
# (with what it needs, BASE) and must reach the config field of its name.
ALTERNATIVES = {
    "model": "resnet18",
    "weights": "w.pt",
    "weights_key": "model_ema",
    "weights_prefix": "body.",
    "random_init": True,
    "stages": (0, -1),
    "layers": ("avgpool",),
    "size": (32, 48),
    "batch_size": 3,
    "device": "cpu",
    "dtype": "float32",
    "keep_bits": 5,
    "shuffle": "off",
    "pool": (2, 3),
    "compression": "gzip",
    "workers": 5,
    "shard_index": 1,
    "num_shards": 4,
    "overwrite": True,
    "dry_run": True,
    "unsafe_pickle": True,
    "seed": 7,
    "amp": True,
    "null_writer": True,
    "out": "elsewhere",
    "images": "0:2,cats/a.jpg",
    "channels": "1,3:5",
    "top_k": 2,
    "layout": "grid",
    "cmap": "magma",
    "normalize": "image",
    "overlay": True,
    "scale": 2,
    "allow_partial": True,
    "pca_samples": 50,
    "pca_seed": 3,
    "per_page": 7,
    "thumb_side": 64,
    "recompute": 2,
    "trust_model": True,
    "host": "0.0.0.0",
    "port": 9000,
    "k": 4,
    "by": "mean",
    "crop": True,
    "stage": "layer1",
    "format": "hdf5",
    "max_memory_gb": 1.5,
}
BASE = {  # positional arguments, required keywords, and what an option needs beside it
    "extract": (
        (["imgs", "o.h5"], {}),
        {"weights_key": {"weights": "w.pt"}, "weights_prefix": {"weights": "w.pt"}, "shard_index": {"num_shards": 4}},
    ),
    "verify": ((["o.h5"], {}), {}),
    "render": ((["o.h5", 1], {}), {}),
    "gallery": ((["o.h5"], {}), {}),
    "view": ((["o.h5"], {}), {}),
    "top": ((["o.h5"], {"stage": 1, "channel": 2}), {}),
    "export": ((["o.h5", "dest"], {"stage": 2}), {}),
    "reduce": ((["o.h5"], {"stage": 1, "method": "srp", "dim": 8, "out": "f.npz"}), {}),
}
# where each verb hands its config on (the first call that receives it)
RECEIVERS = {
    "extract": ("pipeline.extraction.summary", "already_complete"),
    "verify": ("pipeline.jobs.verify", "check_integrity"),
    "render": ("pipeline.rendering.run", "render"),
    "gallery": ("pipeline.site.build", "write_gallery"),
    "view": ("pipeline.viewer.server", "serve"),
    "top": ("pipeline.viewer.examples", "top"),
    "export": ("pipeline.analysis.export", "export"),
    "reduce": ("pipeline.analysis.reduction", "reduce"),
}
CASES = [
    (verb, option.name)
    for verb in sorted(CONFIGS)
    for option in inspect.signature(getattr(pipeline, verb)).parameters.values()
    if option.default is not inspect.Parameter.empty and option.default != ALTERNATIVES.get(option.name, option.default)
]


@pytest.mark.parametrize(("verb", "option"), CASES)
def test_every_keyword_reaches_its_config_field(verb, option, monkeypatch, tmp_path):
    import importlib

    received = []
    module, function = RECEIVERS[verb]
    receive = lambda config, *rest: received.append(config) or "received"  # noqa: E731  (extract: stop there)
    monkeypatch.setattr(importlib.import_module(module), function, receive)
    if verb == "verify":  # recompute=N would import torch to rebuild the model
        fake = types.ModuleType("pipeline.extraction.recompute")
        fake.prepare = fake.recompute = lambda *args: None
        monkeypatch.setitem(sys.modules, "pipeline.extraction.recompute", fake)
    (args, required), needs = BASE[verb]
    value = str(tmp_path) if option == "images_root" else ALTERNATIVES[option]  # verify checks the folder
    options = {**required, **needs.get(option, {}), option: value}
    getattr(pipeline, verb)(*args, **options)
    config = CONFIGS[verb]
    positional = [f.name for f in dataclasses.fields(config)][: len(args)]
    assert received == [config(**dict(zip(positional, args, strict=True)), **options)]
    assert getattr(received[0], option) == value


def test_images_root_reaches_every_config(monkeypatch, tmp_path):
    names = [v for v in sorted(CONFIGS) if "images_root" in inspect.signature(getattr(pipeline, v)).parameters]
    assert names == ["gallery", "render", "top", "verify", "view"]
    for verb in names:
        test_every_keyword_reaches_its_config_field(verb, "images_root", monkeypatch, tmp_path)


def test_colorize_forwards_each_keyword(monkeypatch):
    from pipeline.rendering import painting

    calls = []
    monkeypatch.setattr(painting, "colorize", lambda *args, **kwargs: calls.append((args, kwargs)))
    pipeline.colorize("o.h5", "cats/a.jpg", "layer1", 3, normalize="stage")
    pipeline.colorize("o.h5", 0, 2, 3, cmap="gray", scale=4)
    assert calls == [
        (("o.h5", "cats/a.jpg", "layer1", 3), {"cmap": "viridis", "normalize": "stage", "scale": 1}),
        (("o.h5", 0, 2, 3), {"cmap": "gray", "normalize": "channel", "scale": 4}),
    ]


def test_every_public_name_imports_and_none_imports_torch():
    """`from pipeline import X` works for every name in `__all__`, lazily: neither `import pipeline`
    nor a star import loads torch, xarray or scikit-learn."""
    code = (
        "import sys, pipeline\n"
        "heavy = ('torch', 'xarray', 'sklearn')\n"
        "assert not [m for m in heavy if m in sys.modules], 'import pipeline'\n"
        "from pipeline import *\n"
        "assert not [m for m in heavy if m in sys.modules], 'from pipeline import *'\n"
        "missing = [n for n in pipeline.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "assert set(pipeline.__all__) <= set(dir(pipeline)) and set(pipeline._LAZY) <= set(pipeline.__all__)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


def test_the_public_types_are_classes_of_their_name_and_every_error_is_public():
    types_ = [name for name in pipeline.__all__ if name[0].isupper()]
    assert {"ExtractSummary", "Store", "VerifyReport", "RenderSummary", "TopResult", "UsageError"} <= set(types_)
    for name in types_:
        assert isinstance(getattr(pipeline, name), type) and getattr(pipeline, name).__name__ == name
    raised = {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)}
    assert raised <= set(pipeline.__all__), raised - set(pipeline.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        pipeline.Nothing  # noqa: B018


@pytest.mark.parametrize("part", ["analysis", "extraction", "jobs", "rendering", "site", "viewer"])
def test_each_part_says_it_is_internal_and_exports_nothing(part):
    import importlib

    module = importlib.import_module(f"pipeline.{part}")
    assert module.__all__ == []
    assert "internal" in module.__doc__ and "import" in module.__doc__ and "`pipeline`" in module.__doc__
