"""Gallery: pages over real renders, every link checked on disk; headless Chromium on the quick-start file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image
from test_pca import write_file
from test_render import CLASHING, crafted_root, files_below, gray_pixels, write_store

from pipeline import extract
from pipeline.errors import InputError, OutputExistsError
from pipeline.rendering import painting
from pipeline.rendering.run import RenderConfig, render
from pipeline.rendering.tiling import Grid
from pipeline.site import build
from pipeline.site.build import GalleryConfig, write_gallery
from pipeline.site.inventory import grid_layout
from pipeline.storage.reading.store import open_store

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ["a b#1.jpg", "dir/ü?x.png", "<script>alert(1)</script>.jpg", "plain.jpg", "q%20.jpg"]
# Headless Chromium, quiet and offline.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--hide-scrollbars",
]


class Page(HTMLParser):
    """Every tag's attributes, and the text of <script> elements, of one HTML page (a file, or `text`)."""

    def __init__(self, path: Path, text: str | None = None):
        super().__init__()
        self.path, self.tags, self.scripts, self._in_script = path, [], [], False
        self.feed(path.read_text(encoding="utf-8") if text is None else text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]

    def links(self) -> list[str]:
        return [a[k] for _, a in self.tags for k in ("src", "href") if k in a]

    def data(self) -> dict:
        assert [a for a in self.all("script") if a.get("id") == "fm-data"]
        text = next(s for s in self.scripts if s.lstrip().startswith("{"))
        return json.loads(text)["stages"]


def target(page: Path, url: str) -> Path:
    """The file a relative link of `page` points to."""
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc, f"{page}: non-relative link {url}"
    return (page.parent / unquote(parts.path)).resolve()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(file, render folder, images root): hostile keys, one failed row, one source missing; rendered."""
    base = tmp_path_factory.mktemp("gallery")
    root = base / "photos"
    for i, key in enumerate(HOSTILE):
        if key != "plain.jpg":  # its source is missing
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (40 * i, 90, 200 - 30 * i)).save(
                root / key, "PNG" if key.endswith("png") else "JPEG"
            )
    rng = np.random.default_rng(5)
    maps = {0: rng.random((5, 6, 12, 16), dtype=np.float32), 1: rng.random((5, 4, 6, 8), dtype=np.float32)}
    path = write_file(base / "h.h5", HOSTILE, maps, failed=(4,), root=str(root))
    out = base / "render"
    render(RenderConfig(str(path), 0, out=str(out), layout="both", top_k=3, workers=1))
    render(RenderConfig(str(path), 0, out=str(out), layout="grid", overlay=True, workers=1))
    render(RenderConfig(str(path), 1, out=str(out), layout="pca", workers=1))
    write_gallery(GalleryConfig(str(path), out=str(out)))
    return path, out, root


# -- pages: links, escaping, placeholders, failures -----------------------------------------


def test_every_link_is_relative_and_points_to_a_file(hostile):
    _, out, _ = hostile
    pages = [out / "index.html", *sorted((out / "gallery").glob("*.html"))]
    assert len(pages) == 1 + 4  # the failed row gets no page
    for path in pages:
        page = Page(path)
        assert not page.all("link") and all("src" not in s for s in page.all("script"))  # nothing external
        for url in page.links():
            assert target(path, url).is_file(), (path.name, url)
        text = path.read_text(encoding="utf-8")
        assert "<script>alert" not in text and "http://" not in text and "https://" not in text


def test_image_page_shows_each_stage_with_its_pictures_and_stats(hostile):
    path, out, _ = hostile
    page = Page(out / "gallery" / "000002.html")  # row 2: "<script>alert(1)</script>.jpg"
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;.jpg</h1>" in page.path.read_text()
    images = [unquote(a["src"]) for a in page.all("img")]
    folder = "../stage{}/<script>alert(1)</script>/"  # the key's "/" makes two folders
    source = hostile[2] / "<script>alert(1)</script>.jpg"
    assert images == [
        f"../gallery/thumbs/{hashlib.sha256(source.read_bytes()).hexdigest()[:32]}-240.jpg",  # by content
        folder.format(0) + "grid.png",
        folder.format(0) + "grid-overlay.png",
        folder.format(1) + "pca.png",
    ]
    data = page.data()
    with open_store(path) as store:
        view = store.stage(0)
        top = [int(c) for c in np.argsort(-view.mean[2], kind="stable")[:3]]
        assert data["0"]["png"] == sorted(top) and data["0"]["ovl"] == []
        assert [g["order"] for g in data["0"]["grids"]] == [top, list(range(6))]  # top-k grid, overlay grid
        for name, stat in (("min", view.min), ("max", view.max), ("mean", view.mean)):
            np.testing.assert_allclose(data["0"][name], stat[2], rtol=1e-3)
    assert data["1"]["png"] == [] and data["1"]["grids"] == []  # PCA only
    assert sum(1 for a in page.all("img") if "clickable" in a.get("class", "")) == 2


def test_missing_source_and_failures_show_as_text(hostile):
    _, out, _ = hostile
    plain = out / "gallery" / "000003.html"
    assert "source image not found" in plain.read_text() and "plain.jpg" in plain.read_text()
    assert not any("thumbs" in a["src"] for a in Page(plain).all("img"))
    index = (out / "index.html").read_text()
    assert "Failures (1)" in index and "q%20.jpg" in index and "broken on purpose" in index
    assert index.count('class="card"') == 4 and index.count("source image not found") == 1


def test_clashing_keys_each_page_shows_its_own_pngs_and_source(tmp_path):
    root, colours = tmp_path / "photos", {}
    for i, key in enumerate(CLASHING):  # a.jpg, a.png, A.jpg, sub/x.png, sub/x.PNG, ...: one colour each
        colours[key] = (30 * i, 220 - 25 * i, 60 + 10 * i)
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), colours[key]).save(root / key, "PNG")
    maps = np.random.default_rng(9).standard_normal((len(CLASHING), 3, 6, 6), np.float32)
    path = write_store(tmp_path / "c.h5", CLASHING, {0: maps}, root=root)
    out = tmp_path / "render"
    for key in reversed(CLASHING):  # asked for one at a time, so no render saw the whole list
        render(RenderConfig(str(path), 0, out=str(out), images=key, cmap="gray", scale=1, workers=1))
    write_gallery(GalleryConfig(str(path), out=str(out)))
    with open_store(path) as store:
        view = store.stage(0)
        data, lo, hi = view.data[:], view.min[:], view.max[:]
    for row, key in enumerate(CLASHING):
        page = Page(out / "gallery" / f"{row:06d}.html")
        thumb, grid = (target(page.path, a["src"]) for a in page.all("img"))
        assert repr(key) in Image.open(grid).info["Description"], key  # painting writes the key into the grid
        assert np.abs(np.asarray(Image.open(thumb)).mean((0, 1)) - colours[key]).max() < 3, key
        stage = page.data()["0"]
        assert stage["png"] == [0, 1, 2]
        for c in stage["png"]:
            png = np.asarray(Image.open(target(page.path, f"{stage['dir']}c{c:04d}.png")).convert("L"))
            assert np.abs(png.astype(int) - gray_pixels(data, lo, hi, row, c)).max() <= 1, (key, c)


def test_gallery_never_reads_a_source_outside_the_root(tmp_path, monkeypatch):
    path, root, _ = crafted_root(tmp_path)
    out = tmp_path / "out"
    render(RenderConfig(str(path), 0, out=str(out), layout="grid", workers=1))
    opened = []
    real = build.read_source
    monkeypatch.setattr(build, "read_source", lambda p, *a, **k: opened.append(Path(p).resolve()) or real(p, *a, **k))
    before = files_below(tmp_path, out)
    summary = write_gallery(GalleryConfig(str(path), out=str(out)))
    assert opened == [(root / "inside.jpg").resolve()]
    assert (summary.images, summary.sources_missing, summary.thumbs_written) == (4, 3, 1)
    thumbs = out / "gallery" / "thumbs"
    inside = hashlib.sha256((root / "inside.jpg").read_bytes()).hexdigest()[:32]
    assert [p.relative_to(thumbs).as_posix() for p in thumbs.rglob("*") if p.is_file()] == [f"{inside}-240.jpg"]
    for row in range(3):  # ../../outside.jpg, the absolute key, a/../../b.jpg
        assert "source image not found" in (out / "gallery" / f"{row:06d}.html").read_text()
    assert files_below(tmp_path, out) == before  # nothing written outside --out


def test_index_pages_and_prev_next_chain(tmp_path):
    rng = np.random.default_rng(2)
    keys = [f"k{i:02d}.png" for i in range(23)]
    path = write_file(tmp_path / "many.h5", keys, {0: rng.random((23, 2, 4, 4), dtype=np.float32)})
    render(RenderConfig(str(path), 0, out=str(tmp_path / "r"), layout="grid", workers=1))
    summary = write_gallery(GalleryConfig(str(path), str(tmp_path / "r"), per_page=10))
    assert (summary.images, summary.index_pages, summary.sources_missing) == (23, 3, 23)
    cards = [
        (tmp_path / "r" / n).read_text().count('class="card"') for n in ("index.html", "index-2.html", "index-3.html")
    ]
    assert cards == [10, 10, 3]
    page, seen = tmp_path / "r" / "gallery" / "000000.html", []
    while page is not None:  # follow "next" from the first image to the last
        seen.append(page.name)
        nxt = [a["href"] for a in Page(page).all("a") if a.get("id") == "next"]
        page = target(page, nxt[0]) if nxt else None
    assert seen == [f"{i:06d}.html" for i in range(23)]
    up = [a["href"] for a in Page(tmp_path / "r" / "gallery" / "000015.html").all("a") if a.get("id") == "up"]
    assert up == ["../index-2.html"]
    write_gallery(GalleryConfig(str(path), str(tmp_path / "r"), per_page=100))  # fewer pages: stale ones go
    assert sorted(p.name for p in (tmp_path / "r").glob("index*.html")) == ["index.html"]


def test_grid_layout_matches_tiling():
    for count in (1, 2, 3, 5, 16, 24, 40, 112, 320):
        for h, w in ((7, 7), (28, 28), (12, 16), (50, 20)):
            grid = Grid(count, h * 3, w * 3)
            assert grid_layout(count, h, w, grid.pixels.shape[1], grid.pixels.shape[0]) == (grid.cols, grid.rows)
    assert grid_layout(4, 7, 7, 100, 100) is None  # 2×2 tiles of 47 pixels: not 7×7 enlarged
    assert grid_layout(4, 7, 7, 2 + 2 * 44, 2 + 2 * 44) == (2, 2)  # 42 = 7 × 6


def test_thumbnails_are_reused_and_errors(hostile, tmp_path, caplog):
    path, out, _ = hostile
    again = write_gallery(GalleryConfig(str(path), str(out)))
    assert again.thumbs_written == 0 and again.sources_missing == 1 and again.stages == [0, 1]
    name = hashlib.sha256((hostile[2] / "a b#1.jpg").read_bytes()).hexdigest()[:32]
    with Image.open(out / "gallery" / "thumbs" / f"{name}-240.jpg") as thumb:
        assert thumb.size == (64, 48)  # never enlarged
    shutil.copytree(out, tmp_path / "copy")  # a moved render folder still works, and says where sources are
    with caplog.at_level(logging.DEBUG, logger="pipeline.site.build"):
        moved = write_gallery(GalleryConfig(str(path), str(tmp_path / "copy"), images_root=str(tmp_path / "nowhere")))
    assert moved.sources_missing == 4 and moved.images == 4
    thumbs = [r for r in caplog.records if r.getMessage().startswith("no thumbnail for")]
    assert thumbs and all(r.levelno == logging.DEBUG for r in thumbs)  # missing sources are counted, not warned
    assert "source image not found" in (tmp_path / "copy" / "gallery" / "000000.html").read_text()
    with pytest.raises(InputError, match="fmpipe render"):
        write_gallery(GalleryConfig(str(path), str(tmp_path / "empty")))
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "index.html").write_text("<html>someone's page</html>")
    render(RenderConfig(str(path), 0, out=str(tmp_path / "theirs"), layout="grid", workers=1))
    with pytest.raises(OutputExistsError, match=r"not written by fmpipe.*another --out"):
        write_gallery(GalleryConfig(str(path), str(tmp_path / "theirs")))
    assert (tmp_path / "theirs" / "index.html").read_text() == "<html>someone's page</html>"


def test_gallery_and_pca_never_import_torch():
    modules = "pipeline.cli, pipeline.site.build, pipeline.rendering.pca, pipeline.rendering.run"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr


def test_cli_gallery(hostile):
    path, out, _ = hostile
    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "gallery", str(path), "--out", str(out), "--per-page", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "4 images on 2 index pages, stages 0,1, 0 thumbnails written, 1 failures listed" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline", "gallery", str(path), "--out", str(out / "nothing")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert bad.returncode == 2 and "fmpipe render" in bad.stderr and "Traceback" not in bad.stderr


# -- headless Chromium on the quick-start file ----------------------------------------------

PROBE = """<script>
// Test only: once stage 2's grid has loaded, press keys and click a tile; record what the channel view shows.
function fmProbe() {
  var grid = document.querySelector('#stage-2 img.grid');
  if (!(grid && grid.complete && grid.naturalWidth > 0)) { setTimeout(fmProbe, 50); return; }
  var log = {};
  function press(k) { document.dispatchEvent(new KeyboardEvent('keydown', {key: k})); }
  function state() {
    var body = document.getElementById('vbody'), img = body.querySelector('img');
    return {hidden: document.getElementById('viewer').hidden, title: document.getElementById('vtitle').textContent,
            stats: document.getElementById('vstats').textContent, current: document.querySelector('section.current').id,
            shows: img ? img.getAttribute('src') : body.querySelector('.tile') ? 'tile' : body.textContent,
            scale: [document.getElementById('vscale').dataset.lo, document.getElementById('vscale').dataset.hi,
                    document.getElementById('vscale').textContent],
            previews: [...document.querySelectorAll('#vlist button:not(.more)')].map(
              b => [+b.dataset.c, b.querySelector('img, .tile') ? 'picture' : 'none']),
            more: [...document.querySelectorAll('#vlist button.more')].map(b => +b.dataset.c)};
  }
  press('c'); log.open = state();
  press('ArrowRight'); log.right = state();
  press('ArrowDown'); log.down = state();
  press('ArrowDown'); press('ArrowDown'); press('ArrowDown'); log.big = state();  // stage 4: 320 channels
  press('ArrowLeft'); log.wrap = state();  // channel 319: the last window of previews
  press('Escape'); log.closed = state();
  var g = JSON.parse(document.getElementById('fm-data').textContent).stages['2'].grids[0];
  var p = g.order.indexOf(__CHANNEL__), col = p % g.cols, row = Math.floor(p / g.cols);
  grid.scrollIntoView();
  var box = grid.getBoundingClientRect(), step = [(g.width - g.gutter) / g.cols, (g.height - g.gutter) / g.rows];
  grid.dispatchEvent(new MouseEvent('click', {bubbles: true,
    clientX: box.left + (g.gutter + (col + 0.5) * step[0]) * box.width / grid.naturalWidth,
    clientY: box.top + (g.gutter + (row + 0.5) * step[1]) * box.height / grid.naturalHeight}));
  log.click = state();
  document.body.dataset.probe = JSON.stringify(log);
}
fmProbe();
</script></body>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of Debian's chromium; skips without it, unless FMPIPE_REQUIRE_BROWSER=1 (CI) makes that a failure.

    Module-scoped and listed before `quick`, so a skip comes before the extraction."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("FMPIPE_REQUIRE_BROWSER") == "1":
        pytest.fail("FMPIPE_REQUIRE_BROWSER=1 but chromium is not installed: apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); CI sets FMPIPE_REQUIRE_BROWSER=1")


def browse(binary: str, profile: Path, page: Path, *args: str, timeout: float = 90) -> str:
    """Headless Chromium on a file with `args`; its stdout. Its whole session is killed by the PID we started."""
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    out = None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # chromium's helper processes are in the session we started
        proc.communicate()
    if out is None:
        pytest.fail(f"chromium did not finish {page} within {timeout} s")
    return out


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick-start file (5 sample photos, pretrained efficientnet_lite0), every stage rendered, and a gallery."""
    base = tmp_path_factory.mktemp("quick")
    extract(str(REPO / "data" / "images"), str(base / "out.h5"), workers=0)
    for stage in range(5):
        render(RenderConfig(str(base / "out.h5"), stage, layout="grid", workers=1))
    render(RenderConfig(str(base / "out.h5"), 2, layout="channels", top_k=4, workers=1))
    render(RenderConfig(str(base / "out.h5"), 3, layout="pca", workers=1))
    write_gallery(GalleryConfig(str(base / "out.h5")))
    return base


@pytest.mark.slow
def test_gallery_opens_in_headless_chromium_with_every_image_loaded(chromium, quick, tmp_path):
    binary, out = chromium, quick / "out-render"
    pages = [out / "index.html", *sorted((out / "gallery").glob("*.html"))]
    assert len(pages) == 6
    for page in pages:
        dom = browse(
            binary, tmp_path / "profile", page, "--window-size=1280,8000", "--virtual-time-budget=10000", "--dump-dom"
        )
        states = [img.get("data-state") for img in Page(page, dom).all("img")]
        assert len(states) == len(Page(page).all("img")) >= 5, page.name  # 5 thumbnails; source + 6 figures
        assert states == ["loaded"] * len(states), (page.name, states)
    shot = tmp_path / "chelsea.png"
    browse(
        binary,
        tmp_path / "profile",
        out / "gallery" / "000002.html",
        "--window-size=1280,1600",
        "--virtual-time-budget=10000",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={shot}",
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1280, 3)
    assert pixels.std() > 30 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000  # photos and maps, not blank


@pytest.mark.slow
def test_keyboard_and_channel_view_in_chromium(chromium, quick, tmp_path):
    binary, out = chromium, quick / "out-render"
    page = out / "gallery" / "000002.html"  # chelsea
    with open_store(quick / "out.h5") as store:
        view0, view2 = store.stage(0), store.stage(2)
        stats = (float(view0.min[2, 1]), float(view0.max[2, 1]), float(view0.mean[2, 1]))
        channel = int(np.argsort(-view2.mean[2], kind="stable")[1])  # one of the top-4 with its own PNG
    probe = out / "gallery" / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE.replace("__CHANNEL__", str(channel))))
    dom = browse(
        binary, tmp_path / "profile", probe, "--window-size=1280,3000", "--virtual-time-budget=10000", "--dump-dom"
    )
    (body,) = Page(probe, dom).all("body")
    log = json.loads(body["data-probe"])
    assert log["open"]["title"] == "stage 0 · channel 0 of 16" and not log["open"]["hidden"]
    assert log["open"]["shows"] == "tile"  # stage 0 has a grid only: the tile is cut out of it
    assert log["right"]["title"] == "stage 0 · channel 1 of 16"
    shown = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", log["right"]["stats"])]
    np.testing.assert_allclose(shown, stats, rtol=2e-3, atol=1e-4)  # min, max, mean as stored
    # The colour bar: render's default scale (each channel its own min to max), from the grid's text.
    lo, hi, text = log["right"]["scale"]
    np.testing.assert_allclose([float(lo), float(hi)], stats[:2], rtol=2e-3, atol=1e-4)
    assert "viridis, normalised per channel" in text
    # Previews, not numbered buttons: every channel of the window shows its picture.
    assert log["right"]["previews"] == [[c, "picture"] for c in range(16)] and log["right"]["more"] == []
    assert log["big"]["title"] == "stage 4 · channel 0 of 320"
    assert log["big"]["previews"] == [[c, "picture"] for c in range(32)] and log["big"]["more"] == [32]
    assert log["wrap"]["title"] == "stage 4 · channel 319 of 320"
    assert log["wrap"]["previews"] == [[c, "picture"] for c in range(288, 320)] and log["wrap"]["more"] == [256]
    assert log["down"]["title"] == "stage 1 · channel 0 of 24" and log["down"]["current"] == "stage-1"
    assert log["closed"]["hidden"]
    assert log["click"]["title"] == f"stage 2 · channel {channel} of 40" and not log["click"]["hidden"]
    assert log["click"]["shows"].endswith(f"/c{channel:04d}.png")
    probe.unlink()


@pytest.mark.slow
def test_large_grids_open_full_size_and_say_their_colour_scale(quick):
    """A 320-channel grid is shrunk to fit the page: its figure links to the PNG itself, and its text
    names the colour scale the gallery's colour bar shows."""
    page = (quick / "out-render" / "gallery" / "000002.html").read_text()
    (link,) = re.findall(
        r'<a class="full" href="(\.\./stage4/chelsea/grid\.png)" target="_blank">open full size \((\d+)×(\d+)\)', page
    )
    with Image.open(quick / "out-render" / "stage4" / "chelsea" / "grid.png") as grid:
        assert grid.size == (int(link[1]), int(link[2]))
        assert "colour map viridis, normalised per channel;" in grid.info["Description"]
    render(
        RenderConfig(
            str(quick / "out.h5"), 1, layout="grid", normalize="stage", cmap="magma", out=str(quick / "s"), workers=1
        )
    )
    with Image.open(quick / "s" / "stage1" / "chelsea" / "grid.png") as grid:
        text = grid.info["Description"]
    with open_store(quick / "out.h5") as store:
        lo, hi = painting.stage_range(store.stage(1), store.ok)
    assert f"colour map magma, normalised per stage from {lo!r} to {hi!r};" in text


@pytest.mark.slow
def test_readme_pictures_match_the_commands(quick):
    run = subprocess.run(
        [sys.executable, "scripts/make_readme_pictures.py", "--check", "--from", str(quick / "out.h5")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all 10 pictures match the commands; 7 screenshots show their pages" in run.stdout


def test_readme_shows_every_picture_and_they_are_small():
    readme = (REPO / "README.md").read_text()
    pictures = sorted((REPO / "docs" / "images").glob("*.png"))
    assert len(pictures) == 17  # 10 drawn by commands (RSA figure, crop grid too), 2 gallery and 5 viewer screenshots
    for picture in pictures:
        assert f"docs/images/{picture.name}" in readme, picture.name
        assert picture.stat().st_size < 250_000, picture.name
