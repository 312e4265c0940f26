"""The README's pictures, made by the very commands the README shows, from the sample photos.

    python scripts/make_readme_pictures.py                  # regenerate docs/images/*.png
    python scripts/make_readme_pictures.py --check          # remake them in a scratch folder and compare
    python scripts/make_readme_pictures.py --check --from out.h5   # reuse a quick-start file

Steps, in a scratch folder: `fmpipe extract data/images out.h5` (the quick start), then each
command of COMMANDS; PICTURES names the file each README picture is. The screenshots come from
headless Chromium (`apt-get install chromium`) driven by Playwright: the gallery over
GALLERY_COMMANDS' folder (one with its channel view open), and the viewer's pages (VIEW_PAGES)
from `fmpipe view out.h5 --port 0`, on a free loopback port, stopped by its PID; a page with a
`point` has the pointer on that map cell, so the shot shows the hover readout.

--check compares every drawn picture pixel by pixel and exits 1 on a difference. Pixels may
differ by a level or two on another CPU (float rounding in the model); anything more means the
pictures no longer show what the commands draw: regenerate and commit. Screenshots are not
compared by pixels (fonts and anti-aliasing differ between machines): docs/images/screenshots.json
records, for each, its window size and what the page shows (every picture's URL and the page's
numbers: colour bar ends, the readout's value), and --check serves the pages again and compares
those, and the PNG's size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import html
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
COMMANDS = [
    "render out.h5 --stage 1 --images chelsea.jpg --top-k 9 --layout grid",
    "render out.h5 --stage 3 --images chelsea.jpg --top-k 16 --layout grid",
    "render out.h5 --stage 2 --images chelsea.jpg --channels 6 --overlay --layout channels",
    "render out.h5 --stage 2 --layout pca",
    *(f"reduce out.h5 --stage {s} --method srp --dim 256 --out s{s}.npz" for s in range(5)),
    "top out.h5 --stage 2 --channel 6 -k 4 --crop --out out-render/top-stage2-c6-crop.png",
]
# The README's RSA example, run as written after COMMANDS' reductions; its `rdms` and `similarity`
# are drawn as rsa-stages.png (README.md must hold these very lines: tests check it).
RSA_EXAMPLE = """\
import numpy as np
features = [np.load(f"s{s}.npz")["features"] for s in range(5)]    # (N, 256) per stage
rdms = [1 - np.corrcoef(f) for f in features]                       # (N, N): 1 - Pearson r
upper = np.triu_indices(len(rdms[0]), k=1)
similarity = np.corrcoef([rdm[upper] for rdm in rdms])              # (5, 5): stages compared
"""
PICTURES = {  # docs/images/<name>: the file COMMANDS wrote, below out-render/
    "chelsea-stage1-grid.png": "stage1/chelsea/grid.png",
    "chelsea-stage3-grid.png": "stage3/chelsea/grid.png",
    "chelsea-stage2-c0006-overlay.png": "stage2/chelsea/c0006-overlay.png",
    "pca-stage2-astronaut.png": "stage2/astronaut/pca.png",
    "pca-stage2-camera.png": "stage2/camera/pca.png",
    "pca-stage2-chelsea.png": "stage2/chelsea/pca.png",
    "pca-stage2-coffee.png": "stage2/coffee/pca.png",
    "pca-stage2-rocket.png": "stage2/more/rocket/pca.png",
    "rsa-stages.png": "rsa-stages.png",  # drawn by draw_rsa from RSA_EXAMPLE's arrays
    "top-stage2-c6-crop.png": "top-stage2-c6-crop.png",  # dataset examples with receptive-field crops
}
GALLERY_COMMANDS = [
    *(f"render out.h5 --stage {s} --layout grid --out tour" for s in range(5)),
    *(f"render out.h5 --stage {s} --layout pca --out tour" for s in range(1, 5)),
    "gallery out.h5 --out tour",
]
SCREENSHOTS = "screenshots.json"  # docs/images/: what each screenshot shows, for --check


@dataclasses.dataclass(frozen=True)
class Shot:
    """A screenshot: `page` a gallery file below the scratch folder, or a viewer path (`view` true)."""

    name: str
    page: str
    size: tuple[int, int]  # window W×H
    view: bool = True
    point: tuple[str, int, int] | None = None  # (picture selector, map cell y, x) under the pointer
    keys: tuple[str, ...] = ()  # pressed once the page has loaded


GALLERY_SHOTS = [
    Shot("gallery.png", "tour/gallery/000002.html", (1000, 1000), view=False),  # chelsea's page
    Shot("gallery-channels.png", "tour/gallery/000002.html#stage-4", (1000, 760), False, keys=("c", "ArrowRight")),
]
VIEW_SHOTS = [
    Shot("view-examples.png", "examples/2/6", (1000, 720)),  # stage 2, channel 6's dataset examples
    Shot("view-channel.png", "image/2/2/6", (1000, 780), point=("img.map", 11, 11)),  # its maximum: an eye
    Shot("view-channels.png", "image/2/1", (1000, 900), point=("figure.cell img.map", 20, 30)),  # all of stage 1
    Shot("view-compare.png", "compare/2/6?rows=2,0,1,3", (1120, 820), point=("figure.column img.over", 12, 18)),
    Shot("view-location.png", "location/2?y=125&x=174", (1000, 900)),  # the cat's right eye in every stage
]
VIEW_SERVER = ["view", "out.h5", "--port", "0"]  # `fmpipe view`, as the README says
TOLERANCE = 2  # colour levels a pixel may move on another CPU
MAX_MOVED = 0.005  # ... and the fraction of pixels that may move more
BAR_TOLERANCE = 0.01  # a screenshot's colour bar end may move this fraction of the bar's span
# Pictures full of photos, stored with 256 colours (each pixel the nearest of a median-cut palette) to
# stay small; --check maps the drawn picture onto the committed palette the same way, where a level
# moved on another CPU can flip a pixel to a neighbouring colour: more of them may move.
QUANTIZED = {"top-stage2-c6-crop.png"}
MAX_MOVED_QUANTIZED = 0.02


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with docs/images instead of writing")
    parser.add_argument("--from", dest="source", help="an extracted quick-start file to reuse (skips the extract)")
    parser.add_argument("--keep", help="scratch folder to use and keep (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="readme-pictures-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        make(scratch, args.source)
        if args.check:
            return check(scratch)
        shots = screenshots(scratch)
        return publish(scratch, shots)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def make(scratch: Path, source: str | None) -> None:
    """Run the README's commands in `scratch` (out.h5 there is the quick-start file)."""
    if source:
        (scratch / "out.h5").symlink_to(Path(source).resolve())
    else:
        fmpipe(scratch, f"extract {shlex.quote(str(REPO / 'data' / 'images'))} out.h5")
    for command in COMMANDS:
        fmpipe(scratch, command)
    draw_rsa(scratch, scratch / "out-render" / PICTURES["rsa-stages.png"])


def draw_rsa(scratch: Path, target: Path) -> None:
    """Run RSA_EXAMPLE in `scratch`; draw each stage's RDM and the stage-by-stage similarity (viridis,
    each on its own range, 24 pixels per cell) as one labelled grid with render's own tiling."""
    from pipeline.rendering.colormaps import finite_range, lut, to_indices
    from pipeline.rendering.png import encode_rgb
    from pipeline.rendering.tiling import Grid, upscale

    print("$ python  # the README's RSA example", flush=True)
    namespace: dict = {}
    cwd = Path.cwd()
    os.chdir(scratch)
    try:
        exec(RSA_EXAMPLE, namespace)  # the README's lines, as a reader would run them
    finally:
        os.chdir(cwd)
    matrices = [*namespace["rdms"], namespace["similarity"]]
    labels = [f"stage {s} RDM" for s in range(len(matrices) - 1)] + ["stages r"]
    cell = 24
    side = cell * max(len(m) for m in matrices)
    grid = Grid(len(matrices), side, side)
    for position, (matrix, label) in enumerate(zip(matrices, labels, strict=True)):
        values = np.asarray(matrix, np.float32)
        tile = lut("viridis")[to_indices(values, *finite_range(values))]
        grid.put(position, upscale(tile, side // len(matrix)), label)
    target.write_bytes(encode_rgb(grid.finish()))


def screenshots(scratch: Path) -> dict[str, dict]:
    """Take every screenshot into `scratch`; what each shows (see `shown`), by name."""
    for command in GALLERY_COMMANDS:
        fmpipe(scratch, command)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("the screenshots need playwright (pip install -e '.[test]') and chromium (apt-get install chromium)")
    binary = shutil.which("chromium")
    if binary is None:
        sys.exit("the screenshots need chromium: apt-get install chromium (or run with --check)")
    facts = {}
    with sync_playwright() as p, viewer(scratch) as base:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox", "--disable-gpu"])
        for shot in [*GALLERY_SHOTS, *VIEW_SHOTS]:
            url = base + shot.page if shot.view else (scratch / shot.page.split("#")[0]).resolve().as_uri()
            url += "" if shot.view or "#" not in shot.page else "#" + shot.page.split("#")[1]
            facts[shot.name] = capture(browser, url, scratch / shot.name, shot)
            facts[shot.name].update(shown(scratch, shot, base))
        browser.close()
    return facts


def fmpipe(cwd: Path, command: str) -> None:
    print(f"$ fmpipe {command}", flush=True)
    run = subprocess.run([sys.executable, "-m", "pipeline", "-q", *shlex.split(command)], cwd=cwd, timeout=600)
    if run.returncode:
        sys.exit(f"fmpipe {command} failed with exit code {run.returncode}")


@contextlib.contextmanager
def viewer(scratch: Path):
    """`fmpipe view out.h5` on a free loopback port in `scratch`; yields its URL, then stops it by PID."""
    print("$ fmpipe view out.h5 --port 0", flush=True)
    command = [sys.executable, "-m", "pipeline", *VIEW_SERVER]
    proc = subprocess.Popen(command, cwd=scratch, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        match = re.search(r"http://127\.0\.0\.1:\d+/", lines[1])
        if not match:
            sys.exit(f"the viewer did not start: {lines}")
        yield match.group(0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def capture(browser, url: str, target: Path, shot: Shot) -> dict:
    """A screenshot of `url` stored as a 128-colour PNG (small); the readout's value when pointed."""
    page = browser.new_context(viewport={"width": shot.size[0], "height": shot.size[1]}).new_page()
    page.goto(url)
    page.wait_for_load_state("networkidle")
    page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60_000)
    for key in shot.keys:
        page.keyboard.press(key)
    page.wait_for_load_state("networkidle")
    facts = {}
    if shot.point is not None:
        selector, y, x = shot.point
        picture = page.locator(selector).first
        picture.scroll_into_view_if_needed()
        box, (h, w) = (
            picture.bounding_box(),
            (int(picture.get_attribute("data-h")), int(picture.get_attribute("data-w"))),
        )
        page.mouse.move(box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h)
        page.wait_for_function("() => document.getElementById('readout').dataset.value !== undefined")
        facts["readout"] = page.evaluate("document.getElementById('readout').dataset.value")
    shot_path = target.with_suffix(".raw.png")
    page.screenshot(path=str(shot_path))
    page.context.close()
    with Image.open(shot_path) as image:
        image.convert("RGB").quantize(128, dither=Image.Dither.NONE).save(target, optimize=True)
    return facts


def shown(scratch: Path, shot: Shot, base: str) -> dict:
    """What a screenshot's page shows, independent of fonts: its window size, every picture's URL, and
    the numbers its colour bars state. A viewer page is fetched from the running viewer at `base`."""
    if shot.view:
        address = urlsplit(base)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)  # no proxy settings apply
        try:
            conn.request("GET", "/" + shot.page)
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
    else:
        text = (scratch / shot.page.split("#")[0]).read_text()
    pictures = [html.unescape(src) for src in re.findall(r'<img[^>]* src="([^"]+)"', text)]
    bars = re.findall(r'class="cbar" data-lo="([^"]+)" data-hi="([^"]+)"', text)
    return {"size": list(shot.size), "pictures": pictures, "bars": [list(b) for b in bars]}


def publish(scratch: Path, shots: dict[str, dict]) -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, produced in [*PICTURES.items(), *((shot, shot) for shot in shots)]:
        source = scratch / "out-render" / produced if name not in shots else scratch / produced
        if name in QUANTIZED:
            with Image.open(source) as image:
                rgb = image.convert("RGB")
                palette = rgb.quantize(256, dither=Image.Dither.NONE)
                rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(IMAGES / name, optimize=True)
        else:
            shutil.copyfile(source, IMAGES / name)
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size / 1024:.0f} KB")
    (IMAGES / SCREENSHOTS).write_text(json.dumps(shots, indent=1, sort_keys=True) + "\n")
    return 0


def check(scratch: Path) -> int:
    """0 when every committed picture shows what the commands draw now, and every screenshot's page
    shows what it showed when it was taken (`shown`)."""
    problems = []
    for name, produced in PICTURES.items():
        problem = difference(IMAGES / name, scratch / "out-render" / produced)
        if problem:
            problems.append(f"{name}: {problem}")
    problems += check_screenshots(scratch)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("rerun `python scripts/make_readme_pictures.py` and commit docs/images/", file=sys.stderr)
        return 1
    print(
        f"all {len(PICTURES)} pictures match the commands; "
        f"{len(GALLERY_SHOTS) + len(VIEW_SHOTS)} screenshots show their pages"
    )
    return 0


def check_screenshots(scratch: Path) -> list[str]:
    try:
        recorded = json.loads((IMAGES / SCREENSHOTS).read_text())
    except (OSError, ValueError) as err:
        return [f"{SCREENSHOTS}: {err}"]
    for command in GALLERY_COMMANDS:
        fmpipe(scratch, command)
    problems = []
    with viewer(scratch) as base:
        for shot in [*GALLERY_SHOTS, *VIEW_SHOTS]:
            path, facts = IMAGES / shot.name, recorded.get(shot.name)
            if facts is None or not path.is_file():
                problems.append(f"{shot.name}: missing")
                continue
            with Image.open(path) as image:
                if list(image.size) != facts["size"]:
                    problems.append(f"{shot.name}: {image.size}, recorded {facts['size']}")
            problems += [f"{shot.name}: {p}" for p in page_changes(facts, shown(scratch, shot, base))]
    return problems


def page_changes(was: dict, now: dict) -> list[str]:
    """How a screenshot's page differs from when it was taken. Its pictures are compared as a set (a
    ranking may swap near-equal neighbours on another CPU) and its colour bar ends within BAR_TOLERANCE
    of their span (the model's float rounding), like the pictures' pixels."""
    changes = []
    if now["size"] != was["size"]:
        changes.append(f"window {now['size']}, was {was['size']}")
    if sorted(now["pictures"]) != sorted(was["pictures"]):
        changes.append(f"shows other pictures: {sorted(set(now['pictures']) ^ set(was['pictures']))[:6]}")
    old, new = np.asarray(was["bars"], dtype=float).reshape(-1, 2), np.asarray(now["bars"], dtype=float).reshape(-1, 2)
    span = np.abs(old[:, 1:] - old[:, :1]) + 1e-12 if len(old) else old
    if old.shape != new.shape or (np.abs(new - old) > BAR_TOLERANCE * span).any():
        changes.append(f"colour bar ends {now['bars'][:4]}, were {was['bars'][:4]}")
    return changes


def difference(committed: Path, made: Path) -> str | None:
    """None when two PNGs show the same picture (up to TOLERANCE); else what differs."""
    if not committed.is_file():
        return "missing"
    if committed.read_bytes() == made.read_bytes():
        return None
    quantized = committed.name in QUANTIZED
    with Image.open(committed) as a, Image.open(made) as b:
        drawn = b.convert("RGB")
        if quantized and a.mode == "P" and a.size == drawn.size:
            drawn = drawn.quantize(palette=a, dither=Image.Dither.NONE)
        old, new = np.asarray(a.convert("RGB"), dtype=np.int16), np.asarray(drawn.convert("RGB"), dtype=np.int16)
    if old.shape != new.shape:
        return f"size {old.shape[1]}×{old.shape[0]}, the command draws {new.shape[1]}×{new.shape[0]}"
    moved = float((np.abs(old - new).max(axis=2) > TOLERANCE).mean())
    limit = MAX_MOVED_QUANTIZED if quantized else MAX_MOVED
    return None if moved <= limit else f"{moved:.1%} of the pixels differ by more than {TOLERANCE} levels"


if __name__ == "__main__":
    sys.exit(main())
