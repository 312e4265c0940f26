"""fmpipe view: tiles equal render's PNGs, rankings equal the stored maps', pages, safety, a real browser.

Servers run in a thread of this process (`running`) or in a child process started here and
stopped by its PID; they listen on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images
from PIL import Image
from test_render import crafted_root, smooth_maps, write_store

import pipeline
from pipeline.errors import UsageError
from pipeline.jobs import merge
from pipeline.rendering.run import RenderConfig, render
from pipeline.storage.reading.store import open_store
from pipeline.viewer import catalog as catalog_module
from pipeline.viewer.cache import Lru
from pipeline.viewer.config import DEFAULT_HOST, TopConfig, ViewConfig
from pipeline.viewer.examples import top
from pipeline.viewer.server import Viewer

REPO = Path(__file__).resolve().parent.parent
OPTIONS = dict(model="resnet18", random_init=True, size=(32, 32), batch_size=4, workers=0, device="cpu")
BROKEN = "img005b.png"  # a file that is no image: a failed row
BROKEN_ROW = 6  # img005b.png sorts after img005.png
HOSTILE = ["<script>alert(1)</script>.jpg", "a b#1.jpg", "q%20&x=1.png", "ü/\"quote'.jpg"]


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> dict[str, Path]:
    """41 images (one broken) in 3 shards of 16, 16 and 9, merged virtually and with --copy."""
    base = tmp_path_factory.mktemp("view")
    images = base / "images"
    write_images(images, 40, size=(40, 40))
    (images / BROKEN).write_bytes(b"not an image")
    for index in range(3):
        pipeline.extract(str(images), str(base / "virtual.h5"), shard_index=index, num_shards=3, **OPTIONS)
    shutil.copytree(base / "virtual.h5.shards", base / "copy.h5.shards")
    merge.merge(base / "virtual.h5")
    merge.merge(base / "copy.h5", copy=True)
    return {"images": images, "virtual": base / "virtual.h5", "copy": base / "copy.h5"}


@contextlib.contextmanager
def running(path: Path, **options):
    """A viewer on 127.0.0.1 and a free port, serving from a thread; shut down on exit."""
    viewer = Viewer(ViewConfig(str(path), port=0, **options))
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    try:
        yield viewer
    finally:
        viewer.shutdown()
        thread.join(10)
        viewer.close()


def get(viewer: Viewer, target: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of one request (http.client: no proxy settings apply)."""
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=30)
    try:
        conn.request(method, target, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def raw(viewer: Viewer, data: bytes) -> int:
    """Send raw bytes as a request; the status code of the answer."""
    with socket.create_connection(("127.0.0.1", viewer.port), timeout=30) as sock:
        sock.sendall(data)
        answer = sock.recv(4096)
    # http.server answers a request line it cannot parse without a status line (as HTTP/0.9).
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer) or re.search(rb"Error code: (\d{3})", answer)
    assert match, answer[:200]
    return int(match.group(1))


def decoded(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


# -- must show 1: tiles are render's PNGs, rankings are the stored maps' --------------------------

CASES = [  # (stage, row, channel, cmap, normalize, scale): rows in each of the three shards
    (0, 3, 5, "viridis", "channel", 0),
    (1, 20, 17, "magma", "image", 1),
    (2, 37, 100, "gray", "stage", 3),
    (1, 40, 63, "turbo", "channel", 2),
    (3, 16, 0, "cividis", "stage", 0),
    (2, 31, 7, "viridis", "image", 0),
]


@pytest.mark.parametrize("kind", ["virtual", "copy"])
def test_tiles_equal_render_pngs(merged, kind, tmp_path):
    path = merged[kind]
    with running(path) as viewer:
        for n, (stage, row, channel, cmap, normalize, scale) in enumerate(CASES):
            out = tmp_path / f"r{n}"
            render(
                RenderConfig(
                    str(path),
                    stage,
                    out=str(out),
                    images=str(row),
                    channels=str(channel),
                    layout="channels",
                    cmap=cmap,
                    normalize=normalize,
                    scale=scale,
                    workers=1,
                )
            )
            (written,) = out.rglob(f"c{channel:04d}.png")
            query = f"cmap={cmap}&normalize={normalize}" + (f"&scale={scale}" if scale else "")
            status, headers, body = get(viewer, f"/tile/{stage}/{row}/{channel}.png?{query}")
            assert status == 200 and headers["Content-Type"] == "image/png"
            np.testing.assert_array_equal(decoded(body), decoded(written.read_bytes()))
            assert body == written.read_bytes()  # the same encoder: the very bytes
        blocks = viewer.catalog.blocks
        assert sum(b.raw_reads for b in blocks.values()) >= len(CASES)  # chunks read raw, below the VDS too
        assert sum(b.fallback_reads for b in blocks.values()) == 0


def test_overlay_and_pca_equal_render_pictures(merged, tmp_path):
    path = merged["virtual"]
    render(
        RenderConfig(
            str(path),
            1,
            out=str(tmp_path / "o"),
            images="20",
            channels="9",
            layout="channels",
            overlay=True,
            cmap="magma",
            normalize="image",
            workers=1,
        )
    )
    render(RenderConfig(str(path), 2, out=str(tmp_path / "p"), images="3,37", layout="pca", workers=1))
    with running(path) as viewer:
        (overlay,) = (tmp_path / "o").rglob("c0009-overlay.png")
        status, _, body = get(viewer, "/overlay/1/20/9.png?cmap=magma&normalize=image")
        assert status == 200 and body == overlay.read_bytes()
        for row, key in ((3, "img003"), (37, "img036")):
            status, _, body = get(viewer, f"/pca/2/{row}.png")
            assert status == 200
            np.testing.assert_array_equal(
                decoded(body), decoded((tmp_path / "p" / "stage2" / key / "pca.png").read_bytes())
            )


def maxima_of_maps(path: Path, stage: int) -> tuple[np.ndarray, np.ndarray]:
    """((N, C) float32 max of every stored map, (N,) ok) computed from the maps themselves."""
    with open_store(path) as store:
        data = store.stage(stage).data[:].astype(np.float32)
        ok = store.ok
    with np.errstate(invalid="ignore"):
        return data.max(axis=(2, 3)), ok


@pytest.mark.parametrize("kind", ["virtual", "copy"])
def test_map_downloads_of_merged_files_equal_the_stored_maps(merged, kind):
    """/map/...npy on a merged file (rows in each of the three shards) equals the maps read with h5py."""
    with running(merged[kind]) as viewer, open_store(merged[kind]) as store:
        for stage, row in ((0, 3), (1, 20), (3, 37), (2, 40)):
            want = np.asarray(store.stage(stage).data[row], dtype=np.float32)
            maps = np.load(io.BytesIO(get(viewer, f"/map/{stage}/{row}.npy")[2]))
            assert maps.dtype == np.float32 and np.array_equal(maps, want)
            one = np.load(io.BytesIO(get(viewer, f"/map/{stage}/{row}/{want.shape[0] - 1}.npy")[2]))
            assert np.array_equal(one, want[-1])
        assert get(viewer, f"/map/0/{BROKEN_ROW}.npy")[0] == 404  # a failed image has no maps


@pytest.mark.parametrize("kind", ["virtual", "copy"])
def test_api_top_and_top_json_equal_a_ranking_of_the_stored_maps(merged, kind):
    path, k, stage = merged[kind], 10, 1
    maxima, ok = maxima_of_maps(path, stage)
    rows = np.flatnonzero(ok)
    with open_store(path) as store:
        stored_keys = store.keys
    exact = 0
    with running(path) as viewer:
        for channel in range(maxima.shape[1]):
            values = maxima[rows, channel]
            order = np.lexsort((rows, -values))  # value descending, ties to the lower row
            want_rows, want_values = rows[order][:k], values[order][:k]
            status, headers, body = get(viewer, f"/api/top?stage={stage}&channel={channel}&k={k}&by=max")
            assert status == 200 and headers["Content-Type"] == "application/json"
            items = json.loads(body)["items"]
            got_rows = [item["row"] for item in items]
            # The same k maxima, best first; each stored max (float32) rounds to its float16 map's max.
            np.testing.assert_array_equal(maxima[got_rows, channel], want_values)
            np.testing.assert_array_equal(np.float16([i["value"] for i in items]).astype(np.float32), want_values)
            if len(np.unique(values[order][: k + 1])) == k + 1:  # no float16 tie: the very rows
                assert got_rows == [int(r) for r in want_rows], channel
                exact += 1
            assert [item["key"] for item in items] == [stored_keys[r] for r in got_rows]
            if channel % 16 == 0:
                body_cli = top(TopConfig(str(path), stage, channel, k=k)).to_json().encode()
                assert body_cli == body  # `fmpipe top --json` prints what /api/top returns
        assert exact >= maxima.shape[1] // 2
        everything = json.loads(get(viewer, "/api/top?stage=1&channel=3&k=41")[2])["items"]
        assert len(everything) == 40 and BROKEN_ROW not in [item["row"] for item in everything]


def test_rank_by_mean_and_channel_ranking_follow_the_statistics(merged):
    path = merged["virtual"]
    with open_store(path) as store, running(path) as viewer:
        view, ok = store.stage(2), store.ok
        means, rows = view.mean[:], np.flatnonzero(ok)
        for channel in (0, 9, 77):
            order = np.lexsort((rows, -means[rows, channel]))
            items = json.loads(get(viewer, f"/api/top?stage=2&channel={channel}&k=5&by=mean")[2])["items"]
            assert [i["row"] for i in items] == [int(r) for r in rows[order][:5]]
        ranking = json.loads(get(viewer, "/api/ranking?stage=2&by=max")[2])
        response = np.nanmean(view.max[:][ok], axis=0)
        np.testing.assert_allclose(ranking["scores"], response[ranking["channels"]], rtol=1e-5)
        assert sorted(ranking["channels"]) == list(range(view.channels)) and np.all(np.diff(ranking["scores"]) <= 0)


# -- pages ------------------------------------------------------------------------------------------


class Links(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def urls(self) -> list[str]:
        return [a[k] for _, a in self.tags for k in ("href", "src") if a.get(k)]


PAGE_LIMITS = {  # pages of each kind the crawl visits
    **{"": 2, "image": 3, "channels": 3, "channel": 4, "examples": 3, "stage": 2, "compare": 2, "location": 2},
    **{"map": 6},
}


def test_every_page_link_and_picture_answers(merged):
    """A crawl from / over every kind of page: each link and picture answers 200; no external URL."""
    with running(merged["virtual"]) as viewer:
        seen, todo, visited = set(), ["/"], dict.fromkeys(PAGE_LIMITS, 0)
        while todo:
            target = todo.pop(0)
            kind = target.split("?")[0].split("/")[1]
            kind = "channel" if re.match(r"/image/\d+/\d+/\d+", target) else kind
            kind = "channels" if re.fullmatch(r"/image/\d+/\d+(\?.*)?", target) else kind
            if target in seen or visited.get(kind, 0) >= PAGE_LIMITS.get(kind, 10**6):
                continue
            seen.add(target)
            visited[kind] = visited.get(kind, 0) + 1
            status, headers, body = get(viewer, target)
            assert status == 200, (target, status, body[:200])
            if headers["Content-Type"].startswith("text/html"):
                text = body.decode()
                assert "http://" not in text and "https://" not in text and "<script>" not in text
                urls = [html.unescape(u) for u in Links(text).urls() if not u.startswith("data:")]
                assert all(u.startswith("/") for u in urls), (target, urls)
                todo += [u for u in urls if u not in seen]
        assert set(visited) >= {
            "",
            "image",
            "channel",
            "tile",
            "pca",
            "source",
            "overlay",
            "examples",
            "stage",
            "assets",
            "channels",
            "compare",
            "location",
            "map",
            "colorbar",
        }
        assert len(seen) > 100


def test_collection_search_paging_and_failed_rows(merged):
    with running(merged["copy"]) as viewer:
        page = get(viewer, "/")[2].decode()
        assert "41 images, 40 images with maps, 1 failed" in page and page.count('class="card pick"') == 40
        found = get(viewer, "/?q=IMG01")[2].decode()
        assert found.count('class="card pick"') == 10 and "10 images whose key contains" in found
        assert get(viewer, "/?page=2")[0] == 404
        assert get(viewer, f"/image/{BROKEN_ROW}")[0] == 404  # the broken image: no maps
        assert get(viewer, f"/tile/0/{BROKEN_ROW}/0.png")[0] == 404
        image = get(viewer, "/image/7")[2].decode()  # prev/next skip the failed row
        assert (
            'href="/image/5" data-key="ArrowLeft p ["' in image and 'href="/image/8" data-key="ArrowRight n ]"' in image
        )
        channel = get(viewer, "/image/7/2/3?cmap=magma&normalize=stage")[2].decode()
        assert "/tile/2/7/3.png?cmap=magma&amp;normalize=stage" in channel
        assert 'data-key="m"' in channel and 'data-key="e"' in channel


def test_partial_file_shows_done_rows_and_says_so(tmp_path):
    rng = np.random.default_rng(3)
    maps = {0: smooth_maps(rng, 6, 4, 8, 8)}
    partial = write_store(tmp_path / "out.h5", [f"k{i}.png" for i in range(6)], maps, done=[0, 1, 2, 4])
    assert partial.name == "out.h5.partial" and not (tmp_path / "out.h5").exists()
    with running(tmp_path / "out.h5") as viewer:  # OUT.h5 names the unfinished file
        page = get(viewer, "/")[2].decode()
        assert "partial file: 4 of 6 images have maps so far" in page and page.count('class="card pick"') == 4
        assert get(viewer, "/image/3")[0] == 404 and get(viewer, "/image/4")[0] == 200
        items = json.loads(get(viewer, "/api/top?stage=0&channel=1&k=6")[2])["items"]
        data_max = maps[0].astype(np.float16).astype(np.float32).max(axis=(2, 3))[:, 1]
        done = np.array([0, 1, 2, 4])
        assert [i["row"] for i in items] == [int(r) for r in done[np.lexsort((done, -data_max[done]))]]
        assert get(viewer, "/tile/0/4/1.png")[0] == 200 and get(viewer, "/tile/0/5/1.png")[0] == 404


def test_keys_are_escaped_in_pages_urls_and_json(tmp_path):
    keys = sorted(HOSTILE)
    path = write_store(tmp_path / "h.h5", keys, {0: smooth_maps(np.random.default_rng(4), len(keys), 3, 8, 8)})
    with running(path) as viewer:
        for target in ["/", "/image/0", "/image/1", "/image/0/0/2", "/examples/0/1", "/stage/0", "/?q=%3Cscript%3E"]:
            text = get(viewer, target)[2].decode()
            assert "<script>alert" not in text and "alert(1)" not in text.replace("&lt;script&gt;alert(1)", ""), target
            if target not in ("/image/1", "/stage/0"):
                assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in text, target
        items = json.loads(get(viewer, "/api/top?stage=0&channel=0&k=4")[2])["items"]
        assert sorted(i["key"] for i in items) == keys  # JSON carries the keys exactly
        search = get(viewer, "/?q=" + "%22%3E%3Cscript%3E")[2].decode()
        assert 'value="&quot;&gt;&lt;script&gt;"' in search


# -- must show 4: safety ----------------------------------------------------------------------------


def test_loopback_by_default_and_a_warning_otherwise(merged, caplog):
    assert ViewConfig("x.h5").host == DEFAULT_HOST == "127.0.0.1"
    with running(merged["virtual"]) as viewer:
        assert viewer.httpd.server_address[0] == "127.0.0.1" and viewer.url.startswith("http://127.0.0.1:")
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding fails after the warning, nothing is sent.
    with pytest.raises(UsageError, match=r"cannot listen on 192\.0\.2\.1"):
        pipeline.view(merged["virtual"], host="192.0.2.1", port=0)
    assert "anyone who can reach this address" in caplog.text


def test_traversal_and_malformed_requests_are_refused_and_the_server_keeps_serving(merged):
    with running(merged["virtual"]) as viewer:
        bad = [
            "/../../etc/passwd",
            "/assets/../../etc/passwd",
            "/assets/..%2f..%2fetc%2fpasswd",
            "/%2e%2e/%2e%2e/etc",
            "/source/..%2F..%2Fetc%2Fpasswd.jpg",
            "/tile/0/0/0.png/../../x",
            "//etc/passwd",
            "/assets/view.py",
            "/tile/-1/0/0.png",
            "/tile/0/0/99999.png",
            "/tile/0/99999999/0.png",
            "/tile/9/0/0.png",
            "/tile/0/0/0.png?scale=-1",
            "/tile/0/0/0.png?scale=257",
            "/tile/0/0/0.png?scale=256",  # 16×16 × 256: 4096×4096, over the 2048² pixel cap
            "/tile/0/0/0.png?scale=1e3",
            "/tile/0/0/0.png?cmap=../../x",
            "/tile/0/0/0.png?normalize=<script>",
            "/tile/0/0/0.png?cmap=a&cmap=b",
            "/api/top",
            "/api/top?stage=1&channel=x",
            "/api/top?stage=1&channel=0&k=0",
            "/api/top?stage=1&channel=0&k=1001",
            "/api/top?stage=1&channel=0&by=median",
            "/api/top?stage=9&channel=0",
            "/api/top?stage=1&channel=64",
            "/api/ranking?stage=1&by=x",
            "/source/0.jpg?side=abc",
            "/?page=0",
            "/?q=" + "x" * 300,
            "/image/0/1/64",
            "/examples/1/64",
            "/stage/7",
            "/?page=99999999999",
            "/api/top?stage=1&channel=0&k=" + "9" * 50,
            "/tile/0/0/0.png?" + "&".join(f"a{i}=1" for i in range(50)),
        ]
        for target in bad:
            status, headers, body = get(viewer, target)
            assert 400 <= status < 500, (target, status, body[:200])
            assert b"root:" not in body and headers["X-Content-Type-Options"] == "nosniff"
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "FOO"):
            assert get(viewer, "/", method=method)[0] == 405, method
        assert get(viewer, "/", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
        assert raw(viewer, b"GARBAGE\r\n\r\n") == 400
        assert raw(viewer, b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n") in (400, 403)
        assert raw(viewer, b"GET /?q=%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 400
        assert raw(viewer, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n") == 414
        status, headers, _ = get(viewer, "/")  # still serving
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("host", ["127.1", "127.0.0.1", "localhost", "127.8.9.10", "::1", "0x7f.1"])
def test_every_loopback_spelling_keeps_the_host_check(merged, host):
    """`--host 127.1` binds 127.0.0.1 through inet_aton; it is loopback, so the Host check stays on."""
    try:
        viewer = Viewer(ViewConfig(str(merged["virtual"]), host=host, port=0))
    except UsageError as err:  # no IPv6 loopback on this machine
        pytest.skip(f"cannot listen on {host}: {err}")
    thread = threading.Thread(target=viewer.serve_forever, daemon=True)
    thread.start()
    try:
        assert viewer.httpd.allowed_hosts is not None
        address = viewer.httpd.server_address[0]
        for header, status in (("evil.example", 403), (f"evil.example:{viewer.port}", 403), ("127.0.0.1", 200)):
            conn = http.client.HTTPConnection(address, viewer.port, timeout=30)
            try:
                conn.request("GET", "/", headers={"Host": header})
                response = conn.getresponse()
                response.read()
                assert response.status == status, (host, header)
            finally:
                conn.close()
    finally:
        viewer.shutdown()
        thread.join(10)
        viewer.close()


def test_a_crafted_file_never_reads_outside_the_images_root(tmp_path, monkeypatch):
    path, root, outside = crafted_root(tmp_path)  # keys ../../outside.jpg, /abs/path.jpg, a/../../b.jpg, inside.jpg
    opened = []
    real = catalog_module.decode
    monkeypatch.setattr(
        catalog_module, "decode", lambda p, *a, **k: opened.append(Path(p).resolve()) or real(p, *a, **k)
    )
    with running(path) as viewer:
        for row in range(4):
            for target in (f"/source/{row}.jpg", f"/overlay/0/{row}/0.png", f"/image/{row}", "/", "/examples/0/0"):
                status, _, _ = get(viewer, target)
                assert status == (200 if row == 3 or not target.startswith(("/source", "/overlay")) else 404), target
    assert set(opened) == {(root / "inside.jpg").resolve()} and not set(opened) & {p.resolve() for p in outside}


# -- concurrency, memory, startup -------------------------------------------------------------------


def test_concurrent_requests_get_the_same_pictures_and_caches_stay_bounded(merged):
    path = merged["virtual"]
    with running(path) as viewer:
        viewer.catalog._chunks.max_bytes = 64 * 1024  # a few chunks: forces evictions
        want = {r: get(viewer, f"/tile/0/{r}/2.png")[2] for r in range(0, 41, 4) if r != 5}
        failures, answers = [], []

        def client() -> None:
            try:
                for _ in range(3):
                    for r, body in want.items():
                        answers.append(get(viewer, f"/tile/0/{r}/2.png")[2] == body)
            except Exception as err:
                failures.append(err)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures and len(answers) == 8 * 3 * len(want) and all(answers)
        assert viewer.catalog._chunks.bytes <= 64 * 1024


def test_lru_evicts_by_bytes_and_computes_once():
    cache: Lru[bytes] = Lru(300)
    calls = []
    for key in "abcd":
        cache.get(key, lambda k=key: calls.append(k) or k.encode() * 100)  # 164 bytes each
    assert len(cache) == 1 and cache.bytes <= 300 and calls == list("abcd")
    gate, made = threading.Event(), []

    def slow() -> bytes:
        gate.wait(5)
        made.append(1)
        return b"x"

    threads = [threading.Thread(target=cache.get, args=("z", slow)) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert made == [1]  # six concurrent requests, one computation
    with pytest.raises(ZeroDivisionError):
        cache.get("boom", lambda: 1 / 0)
    assert cache.get("boom", lambda: b"ok") == b"ok"  # a failure is not cached


@pytest.mark.slow
def test_view_starts_fast_without_torch_and_stops_on_sigterm(merged):
    code = (
        "import os, sys, threading\n"
        "import pipeline\n"
        "guard = threading.Timer(60, lambda: os._exit(3))  # never outlives a broken test\n"
        "guard.daemon = True\n"
        "guard.start()\n"
        f"pipeline.view({str(merged['virtual'])!r}, port=0)\n"
        "print('torch loaded:', 'torch' in sys.modules, flush=True)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        started_s = time.perf_counter() - t0
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[1])
        assert url, lines
        conn = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=20)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert "torch loaded: False" in out
    assert started_s < 10, started_s  # about a second here; generous for a loaded CI machine


# -- must show 2: a real browser, by keyboard --------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium driven by Playwright; skips without either, unless
    FMPIPE_REQUIRE_BROWSER=1 (CI) makes that a failure. Never downloads a browser."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [name for name, found in (("chromium", chromium), ("playwright", sync_playwright)) if not found]
    if missing:
        if os.environ.get("FMPIPE_REQUIRE_BROWSER") == "1":
            pytest.fail(
                f"FMPIPE_REQUIRE_BROWSER=1 but {' and '.join(missing)} missing: apt-get install chromium; "
                "pip install -e '.[test]'"
            )
        pytest.skip(f"{' and '.join(missing)} not installed; CI sets FMPIPE_REQUIRE_BROWSER=1")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], timeout=60_000)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The quick-start file: the 5 sample photos through the default pretrained model."""
    out = tmp_path_factory.mktemp("quick") / "out.h5"
    pipeline.extract(str(REPO / "data" / "images"), str(out), workers=0)
    return out


def settle(page) -> dict:
    """Wait until every picture on the page has loaded or broken; counts of each state."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function(
        "[...document.images].every(i => i.dataset.state || (i.loading === 'lazy' && !i.complete))", timeout=30_000
    )
    return page.evaluate(
        "({loaded: [...document.images].filter(i => i.dataset.state === 'loaded').length,"
        " broken: [...document.images].filter(i => i.dataset.state === 'broken').map(i => i.src)})"
    )


@pytest.mark.slow
def test_browser_walks_collection_image_channel_examples_and_back_by_keyboard(browser, quick, tmp_path):
    with running(quick) as viewer:
        base = viewer.url.rstrip("/")
        requests, errors = [], []
        context = browser.new_context(viewport={"width": 1280, "height": 1400})
        page = context.new_page()

        def guard(route) -> None:  # every request must stay on loopback
            requests.append(route.request.url)
            if route.request.url.startswith(base + "/") or route.request.url.startswith("data:"):
                route.continue_()
            else:
                route.abort()

        page.route("**/*", guard)
        page.on("response", lambda r: r.status >= 400 and errors.append((r.status, r.url)))
        page.on("pageerror", lambda e: errors.append(("script", str(e))))
        page.goto(base + "/")
        states = settle(page)
        assert states["broken"] == [] and states["loaded"] >= 5
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.keyboard.press("j")  # the third card: chelsea.jpg
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(re.escape(base + "/image/2") + "$"))
        states = settle(page)
        assert states["broken"] == [] and states["loaded"] >= 10
        page.keyboard.press("j")
        page.keyboard.press("Enter")  # the first tile: stage 0's top channel for this image
        page.wait_for_url(re.compile(re.escape(base) + r"/image/2/0/\d+"))
        channel = int(page.url.rsplit("/", 1)[1])
        with open_store(quick) as store:
            assert channel == int(np.argsort(-store.stage(0).mean[2], kind="stable")[0])
        assert settle(page)["broken"] == []
        other = channel + 1 if channel + 1 < 16 else channel - 1  # stage 0 has 16 channels
        page.keyboard.press("ArrowRight" if other > channel else "ArrowLeft")
        page.wait_for_url(re.compile(re.escape(f"{base}/image/2/0/{other}?cmap=viridis&normalize=channel")))
        page.keyboard.press("m")  # next colour map
        page.wait_for_url(re.compile(r".*cmap=gray.*"))
        page.keyboard.press("e")  # dataset examples of this channel
        page.wait_for_url(re.compile(re.escape(f"{base}/examples/0/{other}") + r"\?.*"))
        states = settle(page)
        overlays = page.eval_on_selector_all("a.example img.over", "all => all.map(i => i.dataset.state)")
        assert states["broken"] == [] and overlays == ["loaded"] * 5  # each beside its colour bar
        assert states["loaded"] == 15  # 5 overlays, each with its crop and its colour bar
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
        assert shot.std() > 30 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 300  # grey photos under grey maps
        page.keyboard.press("b")  # back to the channel page
        page.wait_for_url(re.compile(re.escape(f"{base}/image/2/0/{other}") + r"\?cmap=gray.*"))
        page.keyboard.press("u")
        page.wait_for_url(re.compile(re.escape(base + "/image/2") + "$"))
        page.keyboard.press("u")
        page.wait_for_url(re.compile(re.escape(base + "/?page=1") + "$"))
        assert settle(page)["broken"] == []
        context.close()
    assert not errors, errors
    assert requests and all(url.startswith(base + "/") for url in requests), [u for u in requests if base not in u]
