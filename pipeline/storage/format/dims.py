"""Named axes: HDF5 dimension scales on every stage group, so that xarray opens a stage with
dimensions `image`, `channel`, `y`, `x` and the image keys as the `image` coordinate:

    xr.open_dataset("out.h5", engine="h5netcdf", group="stages/2")

h5netcdf names a dimension after the scale dataset and reads coordinates from the opened group
only, so each stage group holds its own `image` scale (a copy of `images/key`: tens of bytes per
image, next to kilobytes of maps). Plain h5py and h5dump read the file as before. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import h5py
import numpy as np

from . import schema

_STR = h5py.string_dtype("utf-8")


def attach_dimensions(group: h5py.Group, keys: Sequence) -> None:
    """Create the `image` (keys), `channel`, `y`, `x` scales of a stage group and attach them to its
    (N, C, H, W) data and (N, C) statistics. `keys`: the file's keys, row order."""
    data = group[schema.DATA]
    _, channels, height, width = data.shape
    image = group.create_dataset(schema.DIM_IMAGE, data=np.asarray(keys, dtype=object), dtype=_STR)
    image.make_scale(schema.DIM_IMAGE)
    for name, size in ((schema.DIM_CHANNEL, channels), (schema.DIM_Y, height), (schema.DIM_X, width)):
        group.create_dataset(name, data=np.arange(size, dtype=np.int32)).make_scale(name)
    for axis, name in enumerate(schema.DIMS):
        data.dims[axis].attach_scale(group[name])
    for stat in [*schema.STAT_NAMES, *([schema.STAT_ARGMAX] if schema.STAT_ARGMAX in group else [])]:
        group[stat].dims[0].attach_scale(image)
        group[stat].dims[1].attach_scale(group[schema.DIM_CHANNEL])
