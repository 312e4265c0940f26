"""fmpipe view answers "what value is this": downloads, hover readouts, colour bars, every channel,
compare, a location across stages, links back. Each check compares with the stored maps.

The file: the five sample photos through the default model, every stage and the layer
`blocks.2.0`. Browser tests drive a headless Debian chromium through Playwright (marked slow;
CI sets FMPIPE_REQUIRE_BROWSER=1 so a missing browser fails instead of skipping).
"""

from __future__ import annotations

import html
import io
import logging
import re
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_viewer import browser, decoded, get, running, settle  # noqa: F401  (browser: a fixture)

import pipeline
from pipeline.rendering.colormaps import finite_range, lut
from pipeline.storage.reading.store import open_store
from pipeline.viewer.maps import cell_of
from pipeline.viewer.pages import num

REPO = Path(__file__).resolve().parent.parent
LAYER = "blocks.2.0"
CHELSEA = 2  # row of chelsea.jpg (451×300)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("values") / "out.h5"
    pipeline.extract(str(REPO / "data" / "images"), str(out), workers=0, stages=(0, 1, 2, 3, 4), layers=(LAYER,))
    return out


def stored(path: Path, ref: int | str, row: int) -> np.ndarray:
    """(C, H, W) float32 of the stored maps, read with the store (h5py), not through the viewer."""
    with open_store(path) as store:
        return np.asarray(store.view(ref).data[row], dtype=np.float32)


def expected_scale(path: Path, ref: int | str, row: int, channel: int, normalize: str) -> tuple[float, float]:
    """The (lo, hi) render's --normalize uses, computed here from the stored statistics."""
    with open_store(path) as store:
        view, ok = store.view(ref), store.ok
        if normalize == "channel":
            return float(view.min[row, channel]), float(view.max[row, channel])
        if normalize == "image":
            return finite_range(view.min[row])[0], finite_range(view.max[row])[1]
        return finite_range(view.min[ok])[0], finite_range(view.max[ok])[1]


def bars(page: str) -> list[tuple[float, float, str, str]]:
    """(lo, hi, lo text, hi text) of every colour bar on a page, in order."""
    found = re.findall(
        r'<span class="cbar" data-lo="([^"]+)" data-hi="([^"]+)"><span class="lo">([^<]+)</span>.*?'
        r'<span class="hi">([^<]+)</span>',
        page,
    )
    return [(float(lo), float(hi), lo_text, hi_text) for lo, hi, lo_text, hi_text in found]


# -- /map/...npy ------------------------------------------------------------------------------------


def test_map_downloads_equal_the_stored_maps_as_float32(sample):
    with running(sample) as viewer:
        for ref, part in ((2, "2"), (4, "4"), (LAYER, f"layer:{LAYER}")):
            for row in (0, CHELSEA, 4):
                status, headers, body = get(viewer, f"/map/{part}/{row}.npy")
                assert status == 200 and headers["Content-Type"] == "application/octet-stream", (part, row, body)
                assert "attachment" in headers["Content-Disposition"]
                maps = np.load(io.BytesIO(body), allow_pickle=False)
                want = stored(sample, ref, row)
                assert maps.dtype == np.float32 and maps.shape == want.shape
                assert np.array_equal(maps, want, equal_nan=True)
                for channel in (0, want.shape[0] - 1):
                    one = np.load(io.BytesIO(get(viewer, f"/map/{part}/{row}/{channel}.npy")[2]))
                    assert one.dtype == np.float32 and np.array_equal(one, want[channel], equal_nan=True)
        for bad in ("/map/9/0.npy", "/map/2/99/0.npy", "/map/2/0/40.npy", "/map/layer:nope/0.npy", "/map/2/0.npy.x"):
            assert get(viewer, bad)[0] == 404, bad


# -- colour bars --------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["channel", "image", "stage"])
def test_colour_bar_ends_are_the_scale_the_map_is_drawn_with(sample, normalize):
    """The bar's ends equal render's scale for that normalisation, and the tile's pixel where the map
    is largest has the bar's right-end colour (the map's smallest value: the left end)."""
    with running(sample) as viewer:
        for ref, part, channel in ((2, "2", 6), (LAYER, f"layer:{LAYER}", 3)):
            page = get(viewer, f"/image/{CHELSEA}/{part}/{channel}?normalize={normalize}&cmap=magma")[2].decode()
            ((lo, hi, lo_text, hi_text),) = bars(page)
            assert (lo, hi) == expected_scale(sample, ref, CHELSEA, channel, normalize)
            assert (lo_text, hi_text) == (num(lo), num(hi))
            assert 'src="/colorbar/magma.png"' in page
            bar = decoded(get(viewer, "/colorbar/magma.png")[2])
            tile = decoded(
                get(viewer, f"/tile/{part}/{CHELSEA}/{channel}.png?normalize={normalize}&cmap=magma&scale=1")[2]
            )
            plane = stored(sample, ref, CHELSEA)[channel]
            top, bottom = np.unravel_index(plane.argmax(), plane.shape), np.unravel_index(plane.argmin(), plane.shape)
            table = lut("magma")
            assert (bar[0, 0] == table[0]).all() and (bar[0, -1] == table[255]).all()
            if normalize == "channel":  # the map's own max and min are the scale's ends
                assert (tile[top] == bar[0, -1]).all() and (tile[bottom] == bar[0, 0]).all()
            else:  # a wider scale: the map's max is at most the bar's top
                index = np.round((plane[top] - lo) / (hi - lo) * 255)
                assert np.abs(tile[top].astype(int) - table[int(index)]).max() <= 1


def test_every_channel_page_pages_all_channels_each_with_its_scale(sample):
    with running(sample) as viewer:
        with open_store(sample) as store:
            channels = store.view(4).channels  # 320
        pages = -(-channels // 64)
        seen = []
        for page in range(pages):  # ?page=0 is the first (the viewer's URL contract, README "View and top")
            text = get(viewer, f"/image/{CHELSEA}/4?page={page}")[2].decode()
            shown = [int(c) for c in re.findall(r'<figure class="cell" data-channel="(\d+)"', text)]
            seen += shown
            per_map = bars(text)  # one per map (the legend above them states no numbers)
            assert len(per_map) == len(shown)
            for channel, (lo, hi, _, _) in zip(shown, per_map, strict=True):
                assert (lo, hi) == expected_scale(sample, 4, CHELSEA, channel, "channel")
        assert seen == list(range(channels))
        assert get(viewer, f"/image/{CHELSEA}/4?page={pages}")[0] == 400
        assert get(viewer, f"/image/{CHELSEA}/4?page=-1")[0] == 400
        links = re.findall(
            r'href="/image/\d+/4\?page=(\d+)[^"]*"[^>]*>page', get(viewer, f"/image/{CHELSEA}/4")[2].decode()
        )
        assert links == ["1"]  # the first page's "page →" goes to the second, ?page=1
        text = get(viewer, f"/image/{CHELSEA}/4?normalize=stage")[2].decode()
        ((lo, hi, _, _),) = bars(text)  # one bar for the page
        assert (lo, hi) == expected_scale(sample, 4, CHELSEA, 0, "stage")


def test_compare_and_location_pages_show_the_maps_asked_for(sample):
    with running(sample) as viewer:
        text = get(viewer, "/compare/2/6?rows=4,0,2")[2].decode()
        assert re.findall(r'<figure class="column" data-row="(\d+)" data-channel="6">', text) == ["4", "0", "2"]
        tiles = re.findall(r'src="(/tile/2/(\d+)/6\.png[^"]*)"', text)
        assert [row for _, row in tiles] == ["4", "0", "2"]
        assert all("normalize=stage" in src for src, _ in tiles)  # comparable: one scale by default
        assert len({b[:2] for b in bars(text)}) == 1
        for src, row in tiles:  # each picture is that image's map
            assert get(viewer, html.unescape(src))[2] == get(viewer, f"/tile/2/{row}/6.png?normalize=stage")[2]
        for bad in ("rows=", "rows=0,0", "rows=1,x", "rows=" + ",".join(map(str, range(13))), "rows=99"):
            assert get(viewer, f"/compare/2/6?{bad}")[0] in (400, 404), bad

        y, x = 120, 300  # a source pixel of chelsea.jpg (300×451)
        text = get(viewer, f"/location/{CHELSEA}?y={y}&x={x}")[2].decode()
        sections = re.findall(
            r'<section class="stage" data-stage="([^"]+)" data-cell="(\d+),(\d+)">(.*?)</section>', text
        )
        assert [s[0] for s in sections] == ["0", "1", "2", "3", "4", "layer-blocks.2.0"]
        for (_, i, j, body), ref in zip(sections, [0, 1, 2, 3, 4, LAYER], strict=True):
            maps = stored(sample, ref, CHELSEA)
            assert (int(i), int(j)) == cell_of((300, 451), maps.shape[1:], y, x)
            listed = [(int(c), float(v)) for c, v in re.findall(r'data-channel="(\d+)" data-value="([^"]+)"', body)]
            values = maps[:, int(i), int(j)]
            assert [c for c, _ in listed] == list(np.argsort(-values, kind="stable")[:8])
            assert all(v == float(values[c]) for c, v in listed)


def test_source_link_ranking_labels_error_pages_and_pca_on_request(sample):
    with running(sample) as viewer:
        status, headers, body = get(viewer, f"/source/{CHELSEA}.png")
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(body)).size == (451, 300)
        page = get(viewer, f"/image/{CHELSEA}")[2].decode()
        assert f'href="/source/{CHELSEA}.png"' in page
        tiles = re.findall(r'<a class="tile pick" href="([^"]+)"><img[^>]* data-npy="([^"]+)"', page)
        assert len(tiles) == 16 * 6  # the 16 strongest channels of each of 5 stages and the layer
        for target, npy in tiles:  # each tile opens its own channel page; its readout reads its own values
            stage, row, channel = re.fullmatch(r"/map/([^/]+)/(\d+)/(\d+)\.npy", npy).groups()
            assert target == f"/image/{row}/{stage}/{channel}" and int(row) == CHELSEA
        assert "<img" in page and "/pca/" not in re.sub(r'<a class="pca" href="/pca/[^"]+"', "", page)
        stage = get(viewer, "/stage/2")[2].decode()
        with open_store(sample) as store:
            keys = store.keys
        for block in re.findall(r'<a class="tile pick".*?</a>', stage)[:5]:
            row = int(re.search(r'src="/tile/2/(\d+)/', block).group(1))
            key = html.escape(keys[row])
            assert f'<span class="on" title="{key}">on {key}</span>' in block
        examples = get(viewer, "/examples/2/6?normalize=image")[2].decode()
        shown = [int(r) for r in re.findall(r'<a class="example(?: cropped)? pick" href="/image/(\d+)/2/6', examples)]
        assert len(shown) == 5 and [b[:2] for b in bars(examples)] == [
            expected_scale(sample, 2, row, 6, "image") for row in shown
        ]
        status, headers, body = get(viewer, f"/image/{CHELSEA}/2/999")
        assert status == 404 and headers["Content-Type"].startswith("text/html")
        assert f'href="/image/{CHELSEA}/2"' in body.decode() and 'href="/"' in body.decode()
        status, headers, _ = get(viewer, f"/tile/2/{CHELSEA}/999.png")
        assert status == 404 and headers["Content-Type"].startswith("text/plain")
        for crafted in ("//evil.example/x", "/\\evil.example/x", "/image//evil.example/x", "/a/%5Cevil.example/x"):
            status, _, body = get(viewer, crafted)  # an error page never links off the viewer
            links = [u for u in re.findall(r'href="([^"]*)"', body.decode()) if u != "data:,"]
            assert status == 404 and links and all(re.match(r"/(?![/\\])", u) for u in links), (crafted, links)


def test_a_client_that_leaves_mid_response_is_one_log_line(sample, caplog, capfd):
    with running(sample) as viewer, caplog.at_level(logging.INFO, logger="pipeline.viewer.server"):
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", viewer.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /map/0/{CHELSEA}.npy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            sock.recv(1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len([r for r in caplog.records if "went away" in r.message]) < 3:
            time.sleep(0.05)
        assert get(viewer, "/")[0] == 200  # still serving
    gone = [r for r in caplog.records if "went away" in r.message]
    assert len(gone) == 3 and all(r.exc_info is None for r in gone)
    assert "Traceback" not in capfd.readouterr().err


# -- a real browser ----------------------------------------------------------------------------------


def point_at(page, selector: str, index: int, cell: tuple[int, int], shape: tuple[int, int]) -> dict:
    """Move the pointer to the centre of map cell (y, x) of the index-th picture matching `selector`;
    the readout's data once it shows that picture's cell."""
    picture = page.locator(selector).nth(index)
    picture.scroll_into_view_if_needed()
    box = picture.bounding_box()
    page.mouse.move(
        box["x"] + (cell[1] + 0.5) * box["width"] / shape[1], box["y"] + (cell[0] + 0.5) * box["height"] / shape[0]
    )
    page.wait_for_function(
        "([y, x]) => { const r = document.getElementById('readout'); return r.dataset.y == y && r.dataset.x == x; }",
        arg=list(cell),
    )
    return page.evaluate(
        "({...document.getElementById('readout').dataset, text: document.getElementById('readout').textContent})"
    )


@pytest.mark.slow
def test_browser_hover_reads_the_stored_value_on_every_kind_of_map(browser, sample):  # noqa: F811
    rng = np.random.default_rng(5)
    with running(sample) as viewer:
        base = viewer.url.rstrip("/")
        page = browser.new_context(viewport={"width": 1400, "height": 1200}).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        cases = [  # (page, picture selector, which picture, stored map, row, channel)
            (f"/image/{CHELSEA}/2/6", "img.map", 0, 2, CHELSEA, 6),
            (f"/image/{CHELSEA}/2/6", "img.over", 0, 2, CHELSEA, 6),
            (f"/image/{CHELSEA}/layer:{LAYER}/3", "img.map", 0, LAYER, CHELSEA, 3),
            (f"/image/{CHELSEA}/1?page=0", "figure.cell img.map", 5, 1, CHELSEA, 5),
            ("/compare/3/9?rows=0,4,2", "figure.column img.map", 1, 3, 4, 9),
            ("/compare/3/9?rows=0,4,2", "figure.column img.over", 2, 3, CHELSEA, 9),
            (f"/image/{CHELSEA}", "a.tile img.map", 20, None, None, None),  # stage 1's 5th tile
            ("/examples/2/6", "a.example img.over", 1, None, None, None),
            ("/stage/3", "a.tile img.map", 2, None, None, None),
        ]
        for target, selector, index, ref, row, channel in cases:
            page.goto(base + target)
            assert settle(page)["broken"] == []
            if ref is None:  # the map a picture shows, from its values' URL
                part, row, channel = re.fullmatch(
                    r"/map/([^/]+)/(\d+)/(\d+)\.npy", page.locator(selector).nth(index).get_attribute("data-npy")
                ).groups()
                ref, row, channel = int(part) if part.isdigit() else part.removeprefix("layer:"), int(row), int(channel)
            plane = stored(sample, ref, row)[channel]
            for cell in [
                (0, 0),
                (plane.shape[0] - 1, plane.shape[1] - 1),
                np.unravel_index(plane.argmax(), plane.shape),
            ]:
                cell = tuple(int(v) for v in cell)
                shown = point_at(page, selector, index, cell, plane.shape)
                assert float(shown["value"]) == float(plane[cell]), (target, cell)
                assert f"y {cell[0]}, x {cell[1]}" in shown["text"]
            for _ in range(3):
                cell = (int(rng.integers(plane.shape[0])), int(rng.integers(plane.shape[1])))
                assert float(point_at(page, selector, index, cell, plane.shape)["value"]) == float(plane[cell])
        # The bars a browser shows: their ends as the page states them, the bar picture loaded.
        page.goto(base + f"/image/{CHELSEA}/2/6?normalize=image")
        settle(page)
        ends = page.evaluate(
            "[...document.querySelectorAll('.cbar')]"
            ".map(b => [+b.dataset.lo, +b.dataset.hi, b.querySelector('img').dataset.state])"
        )
        assert ends == [[*expected_scale(sample, 2, CHELSEA, 6, "image"), "loaded"]]
        # A click on the map opens that point in every stage.
        plane = stored(sample, 2, CHELSEA)[6]
        point_at(page, "img.map", 0, (10, 20), plane.shape)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_url(re.compile(r".*/location/2\?y=\d+&x=\d+$"))
        y, x = (int(v) for v in re.search(r"y=(\d+)&x=(\d+)", page.url).groups())
        assert cell_of((300, 451), plane.shape, y, x) == (10, 20)
        assert settle(page)["broken"] == []
        page.context.close()
    assert not errors, errors


@pytest.mark.slow
def test_browser_brackets_step_images_and_pca_draws_on_request(browser, sample):  # noqa: F811
    with running(sample) as viewer:
        base = viewer.url.rstrip("/")
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        for start, key, end in (
            (f"/image/{CHELSEA}", "]", "/image/3"),
            (f"/image/{CHELSEA}", "[", "/image/1"),
            (f"/image/{CHELSEA}/2", "]", "/image/3/2?cmap=viridis&normalize=channel"),
            (f"/image/{CHELSEA}/2/6", "[", "/image/1/2/6?cmap=viridis&normalize=channel"),
            (f"/location/{CHELSEA}?y=5&x=5", "]", "/location/3?y=5&x=5"),
        ):
            page.goto(base + start)
            settle(page)
            page.keyboard.press(key)
            page.wait_for_url(base + end)
        page.goto(base + f"/image/{CHELSEA}/2/999")  # an error page: u goes back up
        page.keyboard.press("u")
        page.wait_for_url(base + f"/image/{CHELSEA}/2")
        page.goto(base + f"/image/{CHELSEA}")
        settle(page)
        assert page.locator("img[src*='/pca/']").count() == 0  # nothing fitted until asked
        page.locator("a.pca").first.click()
        page.wait_for_function("() => document.querySelector(\"img[src*='/pca/']\")?.dataset.state === 'loaded'")
        page.context.close()


def test_without_photos_the_collection_shows_tiles_and_fits_no_pca(sample, tmp_path):
    """Photos not found (moved, or viewed where they are not): each card is the middle stage's
    strongest channel of that image, and the first page fits no PCA."""
    with running(sample, images_root=str(tmp_path)) as viewer:
        text = get(viewer, "/")[2].decode()
        cards = re.findall(r'<a class="card pick" href="/image/(\d+)"><img[^>]* src="([^"]+)"', text)
        assert len(cards) == 5
        with open_store(sample) as store:
            means = store.view(3).mean  # the middle of stages 0-4 and the layer
            for row, src in cards:
                assert src == f"/tile/3/{row}/{int(np.argmax(means[int(row)]))}.png"
                assert get(viewer, src)[0] == 200
        assert not [key for key in viewer.catalog._small._items if key[0] == "pca"]
