"""The README's pictures, made by the very commands the README shows, from the sample photos.

    python scripts/make_readme_pictures.py                  # regenerate docs/images/*.png
    python scripts/make_readme_pictures.py --check          # remake them in a scratch folder and compare
    python scripts/make_readme_pictures.py --check --from out.h5   # reuse a quick-start file

Steps, in a scratch folder: `fmpipe extract data/images out.h5` (the quick start), then each
command of COMMANDS; PICTURES names the file each README picture is. The screenshots come from
headless Chromium (`apt-get install chromium`): the gallery over GALLERY_COMMANDS' folder, and the
viewer's dataset-examples page (VIEW_PAGE) from `fmpipe view out.h5 --port 0`, on a free
loopback port, stopped by its PID. --check compares every picture but the screenshots (fonts
differ between machines) and exits 1 on a difference. Pixels may differ by a level or two on
another CPU (float rounding in the model); anything more means the pictures no longer show what
the commands draw: regenerate and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

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
SCREENSHOT = ("gallery.png", "tour/gallery/000002.html", (1000, 1000))  # chelsea's page, window W×H
VIEW_PAGE = ("view-examples.png", "examples/2/6", (1000, 720))  # stage 2, channel 6's dataset examples
VIEW_SERVER = ["view", "out.h5", "--port", "0"]  # `fmpipe view`, as the README says
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
TOLERANCE = 2  # colour levels a pixel may move on another CPU
MAX_MOVED = 0.005  # ... and the fraction of pixels that may move more
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
        make(scratch, args.source, screenshot=not args.check)
        return check(scratch) if args.check else publish(scratch)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def make(scratch: Path, source: str | None, screenshot: bool) -> None:
    """Run the README's commands in `scratch` (out.h5 there is the quick-start file)."""
    if source:
        (scratch / "out.h5").symlink_to(Path(source).resolve())
    else:
        fmpipe(scratch, f"extract {shlex.quote(str(REPO / 'data' / 'images'))} out.h5")
    for command in COMMANDS:
        fmpipe(scratch, command)
    draw_rsa(scratch, scratch / "out-render" / PICTURES["rsa-stages.png"])
    if screenshot:
        for command in GALLERY_COMMANDS:
            fmpipe(scratch, command)
        name, page, size = SCREENSHOT
        capture((scratch / page).resolve().as_uri(), scratch / name, size)
        name, page, size = VIEW_PAGE
        with viewer(scratch) as url:
            capture(url + page, scratch / name, size)


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


def capture(page: str, target: Path, size: tuple[int, int]) -> None:
    """A headless Chromium screenshot of the URL `page`, stored as a 128-colour PNG (small)."""
    binary = shutil.which("chromium")
    if binary is None:
        sys.exit("the gallery screenshot needs chromium: apt-get install chromium (or run with --check)")
    shot = target.with_suffix(".raw.png")
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={target.parent / 'chromium-profile'}",
        f"--window-size={size[0]},{size[1]}",
        "--virtual-time-budget=10000",
        "--run-all-compositor-stages-before-draw",  # draw what has loaded, not a frame from before
        f"--screenshot={shot}",
        page,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        sys.exit("chromium took over 120 s for one screenshot; gave up")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started: chromium's helpers too
    with Image.open(shot) as image:
        image.convert("RGB").quantize(128, dither=Image.Dither.NONE).save(target, optimize=True)


def publish(scratch: Path) -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    shots = {SCREENSHOT[0], VIEW_PAGE[0]}
    for name, produced in [*PICTURES.items(), *((shot, shot) for shot in sorted(shots))]:
        source = scratch / "out-render" / produced if name not in shots else scratch / produced
        if name in QUANTIZED:
            with Image.open(source) as image:
                rgb = image.convert("RGB")
                palette = rgb.quantize(256, dither=Image.Dither.NONE)
                rgb.quantize(palette=palette, dither=Image.Dither.NONE).save(IMAGES / name, optimize=True)
        else:
            shutil.copyfile(source, IMAGES / name)
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size / 1024:.0f} KB")
    return 0


def check(scratch: Path) -> int:
    """0 when every committed picture (but the screenshot) shows what the commands draw now."""
    problems = []
    for name, produced in PICTURES.items():
        problem = difference(IMAGES / name, scratch / "out-render" / produced)
        if problem:
            problems.append(f"{name}: {problem}")
    for shot in (SCREENSHOT[0], VIEW_PAGE[0]):
        if not (IMAGES / shot).is_file():
            problems.append(f"{shot}: missing")
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("rerun `python scripts/make_readme_pictures.py` and commit docs/images/", file=sys.stderr)
        return 1
    print(f"all {len(PICTURES)} pictures match the commands")
    return 0


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
