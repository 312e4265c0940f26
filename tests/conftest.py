"""Shared fixtures: generated images and tiny models. Tests never touch the network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/tiny_models.py for module:factory

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_images(folder: Path, count: int, size=(48, 64), seed: int = 0, prefix: str = "img") -> list[str]:
    """`count` random RGB images (H, W = size), alternating JPEG and PNG; returns sorted keys."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        suffix = ".png" if i % 2 else ".jpg"
        name = f"{prefix}{i:03d}{suffix}"
        Image.fromarray(pixels).save(folder / name)
        keys.append(name)
    return sorted(keys)


def single_and_merged(root: Path, images: Path, options: dict) -> dict[str, Path]:
    """`images` extracted into `root` as one file (`single`) and as a 2-task job array merged both
    ways: virtually (`merged`, over its shards) and with --copy (`copied`, from a copy of the shards)."""
    import shutil

    import pipeline
    from pipeline.jobs import merge
    from pipeline.storage.writing.files import shards_folder

    single, merged, copied = root / "single.h5", root / "merged.h5", root / "copied.h5"
    pipeline.extract(str(images), str(single), **options)
    for index in range(2):
        pipeline.extract(str(images), str(merged), shard_index=index, num_shards=2, **options)
    shutil.copytree(shards_folder(merged), shards_folder(copied))
    merge.merge(merged)
    merge.merge(copied, copy=True)
    return {"single": single, "merged": merged, "copied": copied}


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Nine small random images: batch sizes 1 and 7 both leave a partial last batch."""
    folder = tmp_path / "images"
    write_images(folder, 9)
    return folder


@pytest.fixture(scope="session")
def sample_images() -> Path:
    """The bundled sample photos (data/images)."""
    return REPO / "data" / "images"


# The fast loop (`pytest -m "not slow"`, CONTRIBUTING.md) leaves out what takes seconds. Besides the
# tests marked in their files, these are measured with `pytest -m "not slow" --durations=45` on the
# 2-core machine: module fixtures that extract real models (every test using one is slow, since
# whichever runs first pays) and single tests of 2.4 s or more. Marking them here keeps each file
# as it is; CI runs every test either way.
SLOW_FIXTURES = {
    ("test_merge", "collection"),  # 13 s: an unsharded run and 4 shards of resnet18
    ("test_dims", "outputs"),  # 10 s
    ("test_toplists", "merged"),  # 8 s
    ("test_verify", "made"),  # 6 s
    ("test_viewer", "merged"),  # 5 s
}
SLOW_TESTS = {
    "test_encoding.py::test_dry_run_and_stages_show_pooled_shapes_and_every_table",  # 8 s: three models probed
    "test_crops.py::test_each_box_frames_its_crop_on_a_photo_shown_in_its_own_shape",  # 4 s: a real extract
    "test_checkpoints.py::test_a_detr_backbone_is_stored_like_timm_forward_intermediates",  # 2.5 s
    "test_layers.py::test_verify_checks_and_recomputes_layers",
    "test_layers.py::test_layers_resume_merge_and_render_like_stages",
    "test_layers.py::test_layers_store_what_forward_hooks_see",
    "test_image_lists.py::test_a_list_is_taken_in_its_order_and_a_missing_file_is_a_failure_row",
    "test_resume.py::test_a_resume_from_a_corrected_copy_records_the_new_images_root",
    "test_resume.py::test_a_different_configuration_is_refused_naming_it",
    "test_resume.py::test_rerun_continues_from_the_first_not_done_image",
    "test_resume.py::test_a_resume_from_a_folder_missing_done_images_keeps_the_recorded_root",
    "test_resume.py::test_a_done_image_broken_at_resume_is_a_failure_whose_maps_read_nan",
    "test_resume.py::test_failures_of_an_unfinished_batch_are_not_listed_twice",
    "test_resume.py::test_a_done_image_missing_at_resume_keeps_its_maps_and_is_reported",
    "test_extract.py::test_an_extract_storing_no_map_is_refused_naming_the_selection",
    "test_extract.py::test_stored_maps_equal_direct_forward",
    "test_extract.py::test_batch_sizes_store_the_same_rows",
    "test_startup.py::test_an_unknown_model_name_offline_still_says_unknown_model",
    "test_merge.py::test_shards_cut_in_whole_units_equal_the_unsharded_run_bit_for_bit",
    "test_merge.py::test_a_replaced_source_is_detected",
    "test_viewer_values.py::test_every_channel_page_pages_all_channels_each_with_its_scale",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        test = f"{item.path.name}::{item.originalname}"
        if test in SLOW_TESTS or any((module, name) in SLOW_FIXTURES for name in item.fixturenames):
            item.add_marker(pytest.mark.slow)
