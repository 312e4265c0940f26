"""Property-based tests (hypothesis): the option parsers, shard bounds, source paths, the key-list hash, render folders,
the PNG encoder and Fletcher-32 hold their stated invariants for generated inputs, not only chosen ones.

Examples are few and unbounded in time (`deadline=None`) so the suite stays fast on 2 loaded cores.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import struct

import h5py
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline import config, sources
from pipeline.errors import UsageError
from pipeline.rendering import png, selection
from pipeline.storage.format import codecs, schema
from pipeline.storage.writing import layout

# FMPIPE_HYPOTHESIS_SCALE=20 multiplies every test's examples: a deeper search than CI's (CONTRIBUTING.md).
SCALE = max(1, int(os.environ.get("FMPIPE_HYPOTHESIS_SCALE", "1")))
FAST = settings(max_examples=200 * SCALE, deadline=None)
SLOW = settings(max_examples=40 * SCALE, deadline=None)  # each example writes an HDF5 file or decodes a PNG

counts = st.integers(min_value=1, max_value=60)
bounds = st.one_of(st.none(), st.integers(min_value=-80, max_value=80))


def _slice_text(lo: int | None, hi: int | None, step: int | None) -> str:
    text = f"{'' if lo is None else lo}:{'' if hi is None else hi}"
    return text if step is None else f"{text}:{step}"


# ---- the one index-and-range parser (--stages, --images, --channels) ----------------------------


@FAST
@given(count=counts, lo=bounds, hi=bounds, step=st.one_of(st.none(), st.integers(-7, 7).filter(bool)))
def test_a_range_picks_what_the_python_slice_picks_or_is_refused_when_empty(count, lo, hi, step):
    text = _slice_text(lo, hi, step)
    expected = list(range(count))[slice(lo, hi, step)]
    assert config.parse_index(text) == slice(lo, hi, step)
    if expected:
        assert config.pick_indices(text, count, "stage", "here") == expected
        assert config.pick_indices(f"  {text} ", count, "stage", "here") == expected
    else:
        with pytest.raises(UsageError, match="selects nothing"):
            config.pick_indices(text, count, "stage", "here")


@FAST
@given(count=counts, index=st.integers(-100, 100), sign=st.sampled_from(["", "+"]))
def test_an_index_picks_its_python_element_or_names_the_valid_ones(count, index, sign):
    text = f"{sign}{index}" if index >= 0 else str(index)
    for item in (index, text):
        if -count <= index < count:
            assert config.pick_indices(item, count, "channel", "here") == [list(range(count))[index]]
        else:
            with pytest.raises(UsageError, match=rf"valid indices are 0\.\.{count - 1}"):
                config.pick_indices(item, count, "channel", "here")


@FAST
@given(text=st.text(max_size=12))
@example("0:1:0")
@example("1::")
@example("-:")
def test_parse_index_returns_an_index_a_slice_or_none_and_never_crashes(text):
    try:
        parsed = config.parse_index(text)
    except UsageError as err:
        assert "step of 0" in str(err)
        return
    assert parsed is None or isinstance(parsed, int | slice)
    if isinstance(parsed, slice):  # whatever it says, Python agrees on what it selects
        assert parsed.step != 0
        list(range(10))[parsed]


@FAST
@given(count=counts, items=st.lists(st.one_of(st.integers(-70, 70), st.tuples(bounds, bounds)), min_size=1, max_size=5))
def test_stages_resolve_to_the_sorted_union_of_what_each_item_picks(count, items):
    texts = [str(i) if isinstance(i, int) else _slice_text(*i, None) for i in items]
    requested = config.parse_stages(",".join(texts))
    assert len(requested) == len(texts)
    expected: set[int] = set()
    error = False
    for item in items:
        if isinstance(item, int):
            error |= not -count <= item < count
            expected |= {item % count} if not error else set()
        else:
            picked = list(range(count))[slice(*item)]
            error |= not picked
            expected |= set(picked)
    if error:
        with pytest.raises(UsageError):
            config.resolve_stage_indices(requested, count)
    else:
        assert config.resolve_stage_indices(requested, count) == sorted(expected)


@FAST
@given(text=st.text(alphabet="0123456789:,-+ ab", max_size=12))
def test_stages_text_is_accepted_or_refused_cleanly(text):
    try:
        stages = config.parse_stages(text)
    except UsageError as err:
        assert "--stages takes indices and ranges" in str(err) or "step of 0" in str(err)
        return
    if stages is not None:
        assert all(isinstance(s, int) or config.parse_index(s) is not None for s in stages)
        try:
            picked = config.resolve_stage_indices(stages, 5)
        except UsageError:
            return
        assert picked == sorted(set(picked)) and all(0 <= i < 5 for i in picked)


@FAST
@given(
    channels=st.integers(1, 40),
    items=st.lists(st.one_of(st.integers(-45, 45), st.tuples(bounds, bounds)), min_size=1, max_size=4),
)
def test_channels_keep_the_order_given_without_duplicates(channels, items):
    texts = [str(i) if isinstance(i, int) else _slice_text(*i, None) for i in items]
    expected: list[int] = []
    for item in items:
        picked = (
            ([item % channels] if -channels <= item < channels else [])
            if isinstance(item, int)
            else list(range(channels))[slice(*item)]
        )
        if not picked:
            with pytest.raises(UsageError):
                selection.select_channels(",".join(texts), channels, 0)
            return
        expected += [i for i in picked if i not in expected]
    assert selection.select_channels(",".join(texts), channels, 0) == tuple(expected)


# ---- --size and --layers ---------------------------------------------------------------------------


@FAST
@given(h=st.integers(1, 10_000), w=st.integers(1, 10_000), sep=st.sampled_from(["x", "X", "×"]))
def test_size_reads_h_by_w_and_a_square(h, w, sep):
    assert config.parse_size(f"{h}{sep}{w}") == (h, w)
    assert config.parse_size(str(h)) == (h, h)


@FAST
@given(text=st.text(max_size=12))
def test_size_is_two_positive_ints_or_a_usage_error(text):
    try:
        size = config.parse_size(text)
    except UsageError as err:
        assert "--size must be H or HxW" in str(err)
        return
    assert size is None or (len(size) == 2 and min(size) >= 1)


layer_names = st.text(alphabet="abcxyz019._:", min_size=1, max_size=10).filter(lambda s: s.strip())


@FAST
@given(names=st.lists(layer_names, min_size=1, max_size=5), pad=st.sampled_from(["", " ", "  "]))
def test_layers_split_on_commas_and_strip(names, pad):
    assert config.parse_layers(",".join(f"{pad}{n}{pad}" for n in names)) == tuple(names)
    assert config.parse_layers(f",{pad},") is None


# ---- shard bounds ----------------------------------------------------------------------------------


@settings(max_examples=300 * SCALE, deadline=None)
@given(count=st.integers(0, 5000), num_shards=st.integers(1, 64))
@example(count=33, num_shards=2)  # before the fix: 32 + 1 images
@example(count=100, num_shards=3)  # before the fix: 48 + 32 + 20
def test_shards_are_contiguous_covering_cut_in_units_and_balanced(count, num_shards):
    unit = sources.SHARD_UNIT
    parts = [sources.shard_bounds(count, i, num_shards) for i in range(num_shards)]
    assert parts[0][0] == 0 and parts[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert all(start <= stop for start, stop in parts)
    assert all(start % unit == 0 or start == count for start, _ in parts)
    sizes = [stop - start for start, stop in parts]
    assert max(sizes) - min(sizes) <= unit, sizes


def test_shards_are_balanced_for_every_count_to_400_and_up_to_39_shards():
    # The grid of the issue that found the imbalance: 3,570 of these 15,600 pairs had shards more
    # than one unit apart (33 images in 2 shards: 32 + 1).
    unbalanced = []
    for count in range(1, 401):
        for num_shards in range(1, 40):
            sizes = [
                stop - start for start, stop in (sources.shard_bounds(count, i, num_shards) for i in range(num_shards))
            ]
            if max(sizes) - min(sizes) > sources.SHARD_UNIT or sum(sizes) != count:
                unbalanced.append((count, num_shards, sizes))
    assert unbalanced == []


# ---- source_path: keys from a file never leave the images root -------------------------------------

key_parts = st.sampled_from(["a", "b.jpg", "..", ".", "", "x\x00y", "c d", "é", "...", "~"])


@FAST
@given(parts=st.lists(key_parts, min_size=1, max_size=5), absolute=st.booleans())
def test_source_path_stays_inside_the_root(parts, absolute):
    root = "/data/images"
    key = ("/" if absolute else "") + "/".join(parts)
    if absolute:
        key = root + key  # an absolute key that starts inside the root, then wanders
    path = sources.source_path(root, key)
    if path is None:
        return
    resolved = os.path.normpath(str(path))
    assert resolved.startswith(root + "/") and resolved == str(path)
    assert "\x00" not in str(path)
    assert sources.source_path(root, key) == path  # deterministic


@FAST
@given(key=st.text(max_size=30))
def test_source_path_of_any_text_is_none_or_inside(key):
    path = sources.source_path("/r", key)
    assert path is None or os.path.normpath(str(path)).startswith("/r/")


# ---- the key-list hash: the one extract records is the one merge and verify recompute -------------


@FAST
@given(names=st.lists(st.binary(min_size=1, max_size=12).filter(lambda b: b"\n" not in b), min_size=1, max_size=6))
@example(names=[b"a.jpg", b"caf\xc3\xa9.png"])
@example(names=[b"bad\xff.jpg"])
def test_the_key_hash_extract_records_is_the_one_merge_and_verify_recompute(names):
    keys = [os.fsdecode(name) for name in names]  # as a folder listing gives them
    recorded = sources.keys_sha256(keys)
    assert recorded == hashlib.sha256(b"\n".join(names)).hexdigest()  # the names' own bytes
    read_back = [layout.to_utf8(k).encode("utf-8").decode("utf-8") for k in keys]  # stored, then read
    if not any("\\" in k for k in read_back):  # no name was escaped: merge and verify compare
        assert sources.keys_sha256(read_back) == recorded


# ---- render's folder naming: safe, deterministic, collision-free ----------------------------------


class _Keys:
    """Just enough of a Store for `image_folders`: its key dataset and its length."""

    def __init__(self, keys: list[str]):
        self.file = {schema.KEY: np.array([k.encode("utf-8", "surrogatepass") for k in keys], dtype=object)}
        self._n = len(keys)

    def __len__(self) -> int:
        return self._n


name_parts = st.sampled_from(
    ["a", "A", "a.jpg", "A.JPG", "a.png", "a_png", "a~1", "..", ".", "b.c.d", "ß", "SS", "x:y"]
)


@FAST
@given(key=st.text(max_size=40))
def test_a_key_folder_is_relative_without_dot_parts(key):
    folder, _ = selection.safe_folder(key)
    assert folder and not folder.startswith("/")
    assert all(part not in ("", ".", "..") for part in folder.split("/")), folder
    assert not any(c in folder for c in "\\\x00:")
    assert all(len(part.encode("utf-8", "surrogatepass")) <= 255 for part in folder.split("/"))
    assert selection.safe_folder(key) == (folder, _)


@SLOW
@given(keys=st.sets(st.lists(name_parts, min_size=1, max_size=3).map("/".join), min_size=1, max_size=12))
def test_every_image_gets_its_own_folder_whatever_the_keys(keys):
    keys = sorted(keys)
    folders = selection.image_folders(_Keys(keys))
    names = [folders.folder(row, key) for row, key in enumerate(keys)]
    assert len({n.casefold() for n in names}) == len(names), list(zip(keys, names, strict=True))
    assert selection.image_folders(_Keys(keys)).renamed == folders.renamed  # a function of the key list
    for name in names:
        assert all(part not in ("", ".", "..") for part in name.split("/"))


# ---- PNG: what PIL decodes is what was encoded ------------------------------------------------------

sides = st.integers(1, 70)


@SLOW
@given(h=sides, w=sides, seed=st.integers(0, 2**32 - 1), level=st.sampled_from([0, 1, 9]))
def test_indexed_png_round_trips_through_pil(h, w, seed, level):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 256, (h, w), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(png.encode_indexed(indices, palette, level=level))) as image:
        assert image.mode == "P" and image.size == (w, h)
        np.testing.assert_array_equal(np.asarray(image), indices)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), palette[indices])


@SLOW
@given(h=sides, w=sides, seed=st.integers(0, 2**32 - 1), text=st.one_of(st.none(), st.text(max_size=20)))
def test_rgb_png_round_trips_through_pil(h, w, seed, text):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(png.encode_rgb(pixels, text=text))) as image:
        assert image.mode == "RGB" and image.size == (w, h)
        np.testing.assert_array_equal(np.asarray(image), pixels)


# ---- Fletcher-32: ours equals the checksum HDF5 stores ----------------------------------------------


@SLOW
@given(data=st.binary(min_size=1, max_size=3000))
@example(data=b"\xff" * 2881)  # 1440 words + an odd byte: several 360-word blocks at the maximum sum
@example(data=b"\x01")
def test_fletcher32_equals_the_checksum_hdf5_stores(data):
    with h5py.File(io.BytesIO(), "w") as f:
        dset = f.create_dataset("d", data=np.frombuffer(data, np.uint8), chunks=(len(data),), fletcher32=True)
        _, stored = dset.id.read_direct_chunk((0,))
    assert stored[:-4] == data
    assert struct.unpack("<I", stored[-4:])[0] == codecs.fletcher32(data)


@FAST
@given(names=st.lists(layer_names, min_size=1, max_size=5))
def test_the_apis_layers_read_as_the_clis(names):
    """`extract(layers="a, b")` names two layers, as `--layers "a, b"` does, never characters."""
    text = ", ".join(names)
    assert config.ExtractConfig("i", "o", layers=text).layers == config.parse_layers(text)
    assert config.ExtractConfig("i", "o", layers=list(names)).layers == tuple(names)
