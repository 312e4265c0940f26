"""storage/format/metadata.py: `RunInfo`, the typed view of a file's root attributes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.storage.format import schema
from pipeline.storage.format.metadata import run_info

ATTRS = {
    schema.ATTR_FORMAT_VERSION: np.int64(2),
    schema.ATTR_COMPLETE: np.True_,
    schema.ATTR_MODEL: "resnet18",
    schema.ATTR_INPUT_SIZE: np.array([224, 320], np.int64),
    schema.ATTR_MEAN: np.array([0.5, 0.25, 0.125], np.float32),
    schema.ATTR_FINGERPRINT: "ab" * 32,
    schema.ATTR_SEAL: b"cd" * 32,  # fixed-length strings come back from h5py as bytes
    schema.ATTR_CONFIG: '{"model": "resnet18"}',
    schema.ATTR_SHARD_START: np.float64(32.0),  # an integral float is an integer
}


def test_run_info_types_every_attribute_and_fills_defaults():
    run = run_info(ATTRS)
    assert run.format_version == 2 and run.complete is True and run.model == "resnet18"
    assert run.input_size == (224, 320) and run.mean == (0.5, 0.25, 0.125)
    assert run.seal_sha256 == "cd" * 32 and run.config == {"model": "resnet18"} and run.shard_start == 32
    assert run.num_shards == 1 and run.images_root is None and run.timings == {} and not run.merged


@pytest.mark.parametrize(
    "name, value",
    [(schema.ATTR_CONFIG, "{not json"), (schema.ATTR_CONFIG, "[1, 2]"), (schema.ATTR_SHARD_START, "x")],
)
def test_a_malformed_attribute_is_named_never_read_as_empty(name, value):
    with pytest.raises(InputError, match=rf"out\.h5: the root attribute '{name}' is malformed"):
        run_info({**ATTRS, name: value}, "out.h5")
