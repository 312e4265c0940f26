"""A render folder is shared with its user: fmpipe replaces or removes only the files it wrote there
(its ledger, `.fmpipe-ledger`), never a user's file, even one named like fmpipe's own; and the gallery
shows only this file's pictures and thumbnails of the sources' current content.

Everything runs through the CLI (`fmpipe render --html`, `fmpipe gallery`) as a user would.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from helpers import fmpipe
from PIL import Image

import pipeline
from pipeline.errors import OutputExistsError

TINY = {"model": "tiny_models:plain_net", "size": (32, 32), "workers": 0}  # stage 1: 8 channels of 8x8
USER_FILES = {  # named like fmpipe's own outputs, each at a name this run does not write
    "index-7.html": b"<html>my notes, page 7</html>",
    "gallery/000099.html": b"<html>my page 99</html>",
    "gallery/thumbs/img000.jpg": b"my thumbnail",
    "gallery/thumbs/0123456789abcdef0123456789abcdef-240.jpg": b"a name like a content-keyed thumbnail",
    "stage1/img000/c0099.png": b"my channel 99",
    "stage1/img000/grid-overlay.png": b"my overlay",  # this render draws no overlay
    "stage1/gone/c0000.png": b"a folder no image of the file has",
    "stage1/img001/notes.txt": b"next to the PNGs",
    "stage0/img000/c0000.png": b"a stage this run does not render",
    "pca.json": b"{}",
}


def _plant(site: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)


def _intact(site: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (site / name).read_bytes() == data, f"{name} was changed or removed"


def _ok(*args) -> str:
    result = fmpipe(list(args))
    assert result.returncode == 0, result.stderr
    return result.stdout


def _refused(*args) -> str:
    result = fmpipe(list(args))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("fmpipe: error: "), result.stderr
    return result.stderr


@pytest.mark.slow
def test_user_files_survive_render_html_gallery_rerenders_and_fewer_images(tmp_path):
    images = tmp_path / "images"
    write_images(images, 6, size=(40, 40))
    out = tmp_path / "out.h5"
    pipeline.extract(images, out, **TINY)
    site = tmp_path / "site"
    _plant(site, USER_FILES)

    _ok("render", out, "--stage", "1", "--out", site, "--html", "--workers", "2")
    _intact(site, USER_FILES)
    assert sorted(p.name for p in (site / "stage1" / "img000").glob("c*.png")) == [
        *(f"c{c:04d}.png" for c in range(8)),
        "c0099.png",
    ]
    page = (site / "gallery" / "000000.html").read_text()
    assert "c0099" not in page and "grid-overlay" not in page  # a user's PNG is never shown as a map
    _ok("render", out, "--stage", "1", "--out", site, "--overwrite", "--html", "--top-k", "2")  # a second render
    _ok("gallery", out, "--out", site, "--per-page", "2")  # index.html, index-2.html, index-3.html
    _intact(site, USER_FILES)
    assert (site / "index-3.html").is_file() and len(list((site / "stage1" / "img000").glob("c00*.png"))) == 3

    # A name this run would write, held by a user's file: refused, naming it, and nothing is touched.
    for name in ("index-2.html", "gallery/000001.html", "stage1/img002/c0003.png"):
        other = tmp_path / f"other-{name.replace('/', '_')}"
        _plant(other, {name: b"mine"})
        if name.startswith("stage1"):  # refused before a PNG is drawn
            stderr = _refused("render", out, "--stage", "1", "--out", other, "--html")
            assert "not written by fmpipe" in stderr and not (other / "stage1" / "img000").exists(), stderr
        else:  # the PNGs are drawn; the gallery refuses before writing a page
            _ok("render", out, "--stage", "1", "--out", other)
            stderr = _refused("gallery", out, "--out", other, "--per-page", "2")
            assert "not written by fmpipe" in stderr and not (other / "index.html").exists(), stderr
        assert (other / name).read_bytes() == b"mine" and name in stderr

    # The same output re-extracted with fewer images (and another size: another file): render refuses
    # to mix its pictures with the earlier file's; with --overwrite it replaces fmpipe's own only.
    for key in sorted(p.name for p in images.iterdir())[3:]:
        (images / key).unlink()
    pipeline.extract(images, out, **{**TINY, "size": (48, 48)}, overwrite=True)
    assert "rendered from another file" in _refused("render", out, "--stage", "1", "--out", site, "--html")
    _ok("render", out, "--stage", "1", "--out", site, "--overwrite", "--html")
    _intact(site, USER_FILES)
    assert not (site / "index-2.html").exists() and not (site / "index-3.html").exists()  # fmpipe's stale pages
    assert sorted(p.name for p in (site / "gallery").glob("*.html")) == [
        "000000.html",
        "000001.html",
        "000002.html",
        "000099.html",
    ]
    assert not (site / "stage1" / "img004").exists()  # the earlier file's pictures are gone...
    assert sorted(p.name for p in (site / "stage1" / "img000").glob("c*.png"))[-1] == "c0099.png"  # ...not the user's


@pytest.mark.slow
def test_the_gallery_never_shows_an_earlier_files_pictures_and_a_replaced_image_gets_a_new_thumbnail(tmp_path):
    images = tmp_path / "images"
    write_images(images, 3, size=(40, 40))
    out, site = tmp_path / "out.h5", tmp_path / "site"
    pipeline.extract(images, out, **TINY)
    pipeline.render(out, 1, out=site, layout="grid", workers=1)
    pipeline.render(out, 2, out=site, layout="grid", workers=1)
    summary = pipeline.gallery(out, out=site)
    assert summary.stages == [1, 2] and summary.thumbs_written == 3
    first = (site / "gallery" / "000000.html").read_text()
    assert "stage2/img000/grid.png" in first

    # extract --overwrite with another model; only stage 1 is rendered again.
    pipeline.extract(images, out, **{**TINY, "model": "tiny_models:inplace_net"}, overwrite=True)
    with pytest.raises(OutputExistsError, match="rendered from another file"):
        pipeline.render(out, 1, out=site, layout="grid", workers=1)
    pipeline.render(out, 1, out=site, layout="grid", workers=1, overwrite=True)
    summary = pipeline.gallery(out, out=site)
    page = (site / "gallery" / "000000.html").read_text()
    assert summary.stages == [1] and "stage2/" not in page and "stage1/img000/grid.png" in page
    assert summary.thumbs_written == 0  # same sources: same thumbnails

    # The image at row 0 is replaced (same name, same mtime even) and the file re-extracted.
    source = images / "img000.jpg"
    stat = source.stat()
    Image.new("RGB", (40, 40), (250, 10, 10)).save(source, "JPEG")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    pipeline.extract(images, out, **{**TINY, "model": "tiny_models:inplace_net"}, overwrite=True)
    pipeline.render(out, 1, out=site, layout="grid", workers=1, overwrite=True)
    summary = pipeline.gallery(out, out=site)
    assert summary.thumbs_written == 1
    name = hashlib.sha256(source.read_bytes()).hexdigest()[:32]
    thumb = re.search(
        r'src="\.\./(gallery/thumbs/[0-9a-f]{32}-240\.jpg)"', (site / "gallery" / "000000.html").read_text()
    )
    assert thumb and thumb.group(1) == f"gallery/thumbs/{name}-240.jpg"
    pixels = np.asarray(Image.open(site / thumb.group(1))).reshape(-1, 3).mean(0)
    assert pixels[0] > 200 and pixels[1] < 60  # the new red picture, not the old random one

    # A source changed after extraction (not re-extracted): the page keeps the thumbnail of the
    # content that was extracted (its maps are of that content); a new folder gets none, never a wrong one.
    extracted = hashlib.sha256((images / "img001.png").read_bytes()).hexdigest()[:32]
    Image.new("RGB", (40, 40), (10, 250, 10)).save(images / "img001.png")
    assert pipeline.gallery(out, out=site).sources_missing == 0
    assert f"thumbs/{extracted}-240.jpg" in (site / "gallery" / "000001.html").read_text()
    pipeline.render(out, 1, out=tmp_path / "site2", layout="grid", workers=1)
    assert pipeline.gallery(out, out=tmp_path / "site2").sources_missing == 1
    assert "source image not found" in (tmp_path / "site2" / "gallery" / "000001.html").read_text()


def test_a_ledger_shipped_with_a_folder_never_removes_a_file_outside_it(tmp_path):
    """A render folder from elsewhere may carry a crafted `.fmpipe-ledger`: its `..` paths and paths
    through a symlinked folder are ignored, so `render --overwrite` removes nothing outside."""
    images = tmp_path / "images"
    write_images(images, 2, size=(40, 40))
    out, site, outside = tmp_path / "out.h5", tmp_path / "site", tmp_path / "outside"
    pipeline.extract(images, out, **TINY)
    outside.mkdir()
    for name in ("victim.txt", "c0000.png"):
        (outside / name).write_bytes(b"keep me")
    (site / "stage1").mkdir(parents=True)
    (site / "stage1" / "link").symlink_to(outside)
    (site / ".fmpipe-ledger").write_text(
        "@stage1 0123\n+stage1/../../outside/victim.txt\n+stage1/link/c0000.png\n+/etc/hostname\n"
    )
    pipeline.render(out, 1, out=site, layout="grid", workers=1, overwrite=True)  # another file's folder: replaced
    assert (outside / "victim.txt").read_bytes() == b"keep me" and (outside / "c0000.png").read_bytes() == b"keep me"
    assert (site / "stage1" / "img000" / "grid.png").is_file()
