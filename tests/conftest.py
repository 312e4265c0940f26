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
