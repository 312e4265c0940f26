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
.example img { width: 224px; height: 224px; object-fit: contain; background: #eee; display: block; }
.example img.map { image-rendering: pixelated; }
.example.cropped { width: 462px; }
.example .pair { display: flex; gap: 6px; }
.value { font-variant-numeric: tabular-nums; color: #0b57a4; }
"""
)

VIEW_JS = (
    HEAD_JS
    + """
(function () {
  // Every picture reports loaded/broken (no inline onload: the Content-Security-Policy forbids it).
  document.querySelectorAll('img').forEach(function (img) {
    if (img.complete) { img.naturalWidth > 0 ? fmOk(img) : fmBad(img); return; }
    img.addEventListener('load', function () { fmOk(img); });
    img.addEventListener('error', function () { fmBad(img); });
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
