"""The viewer's CSS and JavaScript, served as /assets/view.css and /assets/view.js.

They extend the static gallery's (`site.assets`: the same look, the same image-state helpers
that tests read as `data-state`). Pages carry no inline script or handler, so the server's
Content-Security-Policy can forbid both. Keyboard: every link with `data-key="K ..."` is
followed when K is pressed; j/k move through the page's pictures (`.pick`), Enter opens the
selected one; / focuses the search box; b goes back.
"""

from ..site.assets import CSS as GALLERY_CSS
from ..site.assets import HEAD_JS

VIEW_CSS = (
    GALLERY_CSS
    + """
nav.bar form { margin: 0; }
nav.bar input { font: inherit; width: 16em; }
.banner { background: #fff3c4; border: 1px solid #e0c060; padding: 6px 10px; margin: 8px 0; }
.pick { outline: none; }
.pick.sel, .pick:focus { box-shadow: 0 0 0 3px #e07b00; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.tile { display: inline-flex; flex-direction: column; align-items: center; font-size: 11px; color: #444;
  text-decoration: none; background: #fff; padding: 2px; }
.tile img { width: 96px; height: auto; image-rendering: pixelated; background: #eee; }
.stagepca img { width: 128px; height: auto; image-rendering: pixelated; }
.big img.map { width: 448px; height: auto; image-rendering: pixelated; background: #eee; }
.big img.over { width: 448px; height: auto; background: #eee; }
.big { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
.choices a, .choices b { margin-right: 8px; }
.examples { display: flex; flex-wrap: wrap; gap: 10px; }
.example { width: 232px; background: #fff; border: 1px solid #ddd; padding: 4px; text-decoration: none;
  color: #222; font-size: 12px; word-break: break-all; }
.example img { max-width: 224px; max-height: 224px; width: auto; height: auto; background: #eee; display: block; }
.example img.map { width: 224px; }
.example .cbar img.bar { width: 80px; height: 12px; display: inline; }
.example img.map { image-rendering: pixelated; }
.example.cropped { width: 462px; }
.example .pair { display: flex; gap: 6px; align-items: flex-start; }
.example img.crop { width: 160px; height: auto; }
.value { font-variant-numeric: tabular-nums; color: #0b57a4; }
.tile .on { max-width: 96px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; color: #666; }
.cbar { display: inline-flex; align-items: center; gap: 6px; font-size: 12px; font-variant-numeric: tabular-nums;
  white-space: nowrap; word-break: normal; }
.legend { font-size: 12px; display: inline-flex; align-items: center; gap: 6px; }
.legend img.bar { width: 160px; height: 12px; image-rendering: pixelated; border: 1px solid #999; }
.cbar img.bar { width: 160px; height: 12px; image-rendering: pixelated; border: 1px solid #999; }
.cell .cbar img.bar { width: 60px; }
.cbar .why { color: #666; }
.cells { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
figure.cell { margin: 0; background: #fff; padding: 3px; font-size: 11px; color: #444; }
figure.cell img { width: 160px; height: auto; image-rendering: pixelated; background: #eee; display: block; }
.columns { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure.column { margin: 0; background: #fff; padding: 4px; border: 1px solid #ddd; width: 236px; font-size: 12px;
  word-break: break-all; }
figure.column img { width: 232px; height: auto; display: block; margin-bottom: 4px; background: #eee; }
figure.column .cbar img.bar { width: 90px; height: 12px; margin: 0; display: inline; }
figure.column img.map { image-rendering: pixelated; }
img.hover { cursor: crosshair; }
.readout { position: fixed; right: 12px; bottom: 12px; z-index: 3; background: #222; color: #fff; padding: 6px 10px;
  font: 13px/1.3 ui-monospace, monospace; border-radius: 4px; pointer-events: none; }
.marked { position: relative; display: inline-block; line-height: 0; }
.mark { position: absolute; width: 10px; height: 10px; margin: -6px 0 0 -6px; border: 2px solid #f0f;
  border-radius: 50%; pointer-events: none; box-shadow: 0 0 0 1px #fff; }
.head .marked img.source { max-width: 480px; max-height: 480px; }
a.pca { display: inline-block; padding: 40px 10px; background: #eee; font-size: 12px; }
.error { font-size: 16px; color: #a00; }
"""
)

VIEW_JS = (
    HEAD_JS
    + r"""
(function () {
  // Every picture reports loaded/broken (no inline onload: the Content-Security-Policy forbids it).
  document.querySelectorAll('img').forEach(function (img) {
    if (img.complete) { img.naturalWidth > 0 ? fmOk(img) : fmBad(img); return; }
    img.addEventListener('load', function () { fmOk(img); });
    img.addEventListener('error', function () { fmBad(img); });
  });
  // The PCA is fitted over the file on a stage's first request: drawn only when asked for.
  document.querySelectorAll('a.pca').forEach(function (a) {
    a.addEventListener('click', function (e) {
      e.preventDefault();
      var img = new Image();
      img.addEventListener('load', function () { fmOk(img); });
      img.addEventListener('error', function () { fmBad(img); });
      img.alt = 'PCA picture';
      img.src = a.href;
      a.replaceWith(img);
    });
  });
  // Markers at a point given as fractions of the picture's height and width.
  document.querySelectorAll('.mark').forEach(function (m) {
    m.style.top = (100 * m.dataset.fy) + '%';
    m.style.left = (100 * m.dataset.fx) + '%';
  });
  // The value under the pointer: the map's values come from its /map/...npy (float32), fetched once.
  var readout = document.getElementById('readout'), maps = {};
  function npy(buffer) {
    var bytes = new Uint8Array(buffer), view = new DataView(buffer), major = bytes[6];
    var size = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true), start = major === 1 ? 10 : 12;
    var header = String.fromCharCode.apply(null, bytes.subarray(start, start + size));
    if (header.indexOf("'<f4'") < 0) throw new Error('not little-endian float32');
    var shape = header.match(/'shape': *\(([^)]*)\)/)[1].split(',');
    shape = shape.filter(function (v) { return v.trim(); }).map(Number);
    var n = shape.reduce(function (a, b) { return a * b; }, 1), values = new Float32Array(n), at = start + size;
    for (var i = 0; i < n; i++) values[i] = view.getFloat32(at + 4 * i, true);
    return {shape: shape, values: values};
  }
  function values(src) {
    if (!maps[src]) maps[src] = fetch(src).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.arrayBuffer();
    }).then(npy);
    return maps[src];
  }
  function cellAt(img, e) {  // (y, x) of the map cell under the pointer
    var box = img.getBoundingClientRect(), h = +img.dataset.h, w = +img.dataset.w;
    return [Math.min(h - 1, Math.max(0, Math.floor((e.clientY - box.top) / box.height * h))),
            Math.min(w - 1, Math.max(0, Math.floor((e.clientX - box.left) / box.width * w)))];
  }
  function show(img, cell, map) {
    var v = map.values[cell[0] * map.shape[map.shape.length - 1] + cell[1]];
    readout.dataset.value = String(v);
    readout.dataset.y = cell[0];
    readout.dataset.x = cell[1];
    readout.dataset.map = img.dataset.npy;
    var big = Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3);
    var text = isNaN(v) ? 'NaN' : big ? v.toExponential(4) : v.toFixed(4);
    readout.textContent = img.dataset.what + ' · y ' + cell[0] + ', x ' + cell[1] + ': ' + text;
  }
  document.querySelectorAll('img[data-npy]').forEach(function (img) {
    if (!readout) return;
    img.addEventListener('mousemove', function (e) {
      var cell = cellAt(img, e);
      values(img.dataset.npy).then(function (map) { show(img, cell, map); }, function (err) {
        readout.textContent = 'values not available (' + err.message + ')';
      });
    });
    if (img.dataset.locate) img.addEventListener('click', function (e) {  // this point in every stage
      var cell = cellAt(img, e), h = +img.dataset.h, w = +img.dataset.w, orig = img.dataset.orig.split('x');
      var y = Math.floor((cell[0] + 0.5) * orig[0] / h), x = Math.floor((cell[1] + 0.5) * orig[1] / w);
      location.href = img.dataset.locate + '?y=' + y + '&x=' + x;
    });
  });
  var picks = [].slice.call(document.querySelectorAll('.pick')), at = -1;
  function select(i) {
    if (!picks.length) return;
    at = Math.max(0, Math.min(picks.length - 1, i));
    picks.forEach(function (p, j) { p.classList.toggle('sel', j === at); });
    picks[at].focus();
    picks[at].scrollIntoView({block: 'nearest'});
  }
  function linkFor(key) {
    var links = document.querySelectorAll('a[data-key]');
    for (var i = 0; i < links.length; i++) {
      if (links[i].dataset.key.split(' ').indexOf(key) >= 0) return links[i];
    }
    return null;
  }
  document.addEventListener('keydown', function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.target.matches && e.target.matches('input, select, textarea')) {
      if (e.key === 'Escape') e.target.blur();
      return;
    }
    var link = linkFor(e.key);
    if (link) { location.href = link.href; e.preventDefault(); return; }
    switch (e.key) {
      case 'j': select(at + 1); break;
      case 'k': select(at - 1); break;
      case 'Enter': if (at >= 0) location.href = picks[at].href; break;
      case '/': var box = document.querySelector('input[name=q]'); if (box) box.focus(); break;
      case 'b': history.back(); break;
      default: return;
    }
    e.preventDefault();
  });
})();
"""
)

ASSETS = {  # the only files the server serves that are not computed from the fmpipe file
    "view.css": ("text/css; charset=utf-8", VIEW_CSS.encode()),
    "view.js": ("text/javascript; charset=utf-8", VIEW_JS.encode()),
}
