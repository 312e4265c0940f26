"""The gallery's inline CSS and JavaScript, as text (every page carries its own copy: no
external file, so a page works alone from file://).

The image page's script reads the page's JSON (`<script id="fm-data">`): per stage its
`key`, `dir` (percent-encoded folder of its PNGs), `digits` (of c0007.png), `channels`,
`png`/`ovl` (channels with a c####.png / c####-overlay.png), `grids` (src, order of the
channels on the tiles, cols, rows, width, height, gutter), and `min`/`max`/`mean` (C,).
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f2; color: #222; }
main { padding: 8px 16px 40px; }
a { color: #0b57a4; }
nav.bar { position: sticky; top: 0; z-index: 2; background: #222; color: #eee; padding: 6px 16px;
  display: flex; gap: 14px; align-items: center; flex-wrap: wrap; }
nav.bar a { color: #9cf; }
nav.bar .off { color: #777; }
nav.bar .keys { margin-left: auto; color: #aaa; font-size: 12px; }
h1 { font-size: 20px; margin: 10px 0; word-break: break-all; }
h2 { font-size: 16px; margin: 0 0 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 180px; background: #fff; border: 1px solid #ddd; padding: 6px; text-decoration: none;
  color: #222; font-size: 12px; word-break: break-all; }
.card img, .card .ph { width: 168px; height: 168px; object-fit: contain; background: #eee; display: flex; }
.ph { display: inline-flex; align-items: center; justify-content: center; text-align: center;
  background: #eee; color: #666; font-size: 12px; padding: 6px; box-sizing: border-box; min-height: 60px; }
table { border-collapse: collapse; margin: 8px 0; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
.head { display: flex; gap: 16px; align-items: flex-start; }
.head img.source, .head .ph { max-width: 240px; max-height: 240px; }
section.stage { background: #fff; border: 1px solid #ddd; margin: 12px 0; padding: 8px 10px; scroll-margin-top: 44px; }
section.stage.current { border-color: #0b57a4; box-shadow: 0 0 0 2px #0b57a4; }
.meta { color: #555; margin: 0 0 6px; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: min(560px, 90vw); max-height: 320px; width: auto; height: auto;
  display: block; background: #eee; }
figcaption { font-size: 12px; color: #555; max-width: 560px; }
img.grid.clickable { cursor: crosshair; }
figure img.pca { width: 240px; image-rendering: pixelated; }  /* a small map, enlarged: keep its pixels */
button { font: inherit; cursor: pointer; }
#viewer { position: fixed; inset: 40px 5vw auto; z-index: 3; background: #fff; border: 2px solid #0b57a4;
  padding: 10px; max-height: 85vh; overflow: auto; box-shadow: 0 6px 30px #0006; }
#viewer[hidden] { display: none; }
#vbody { margin: 8px 0; min-height: 120px; }
#vbody img, #vbody .tile { image-rendering: pixelated; background-repeat: no-repeat; }
#vbody img { width: 320px; height: auto; }
#vlist { display: flex; flex-wrap: wrap; gap: 3px; align-items: flex-end; }
#vlist button { margin: 0; font-size: 11px; padding: 2px; background: #fff; border: 1px solid #ccc;
  display: inline-flex; flex-direction: column; align-items: center; }
#vlist button.on { border-color: #0b57a4; box-shadow: 0 0 0 2px #0b57a4; }
#vlist button img, #vlist button .tile { width: 48px; height: auto; pointer-events: none; }
#vlist button span { pointer-events: none; }
#vlist button.more { align-self: center; min-width: 3em; }
#vscale { display: flex; align-items: center; gap: 6px; font-size: 12px; font-variant-numeric: tabular-nums; }
#vscale .bar { width: 200px; height: 12px; border: 1px solid #999; }
figcaption a.full { margin-left: 6px; }
.stats { font-variant-numeric: tabular-nums; }
"""

# In <head>, so they exist before any <img> fires. The browser test reads data-state; a
# broken image is hidden behind a text placeholder instead of the browser's broken icon.
HEAD_JS = """
function fmOk(img) { img.dataset.state = 'loaded'; }
function fmBad(img) {
  img.dataset.state = 'broken';
  img.hidden = true;
  var note = document.createElement('span');
  note.className = 'ph';
  note.textContent = 'missing: ' + decodeURIComponent(img.getAttribute('src'));
  img.after(note);
}
"""

INDEX_JS = """
document.addEventListener('keydown', function (e) {
  if (e.altKey || e.ctrlKey || e.metaKey) return;
  var link = document.getElementById({ArrowLeft: 'prev', ArrowRight: 'next'}[e.key]);
  if (link) { location.href = link.href; e.preventDefault(); }
});
"""

IMAGE_JS = """
(function () {
  var data = JSON.parse(document.getElementById('fm-data').textContent).stages;
  var sections = [].slice.call(document.querySelectorAll('section.stage'));
  var viewer = document.getElementById('viewer');
  var current = 0, shown = null, channel = 0;  // current stage section; the viewer's stage and channel

  function mark(i, scroll) {  // make section i the current stage
    if (!sections.length) return;
    current = (i + sections.length) % sections.length;
    sections.forEach(function (s, j) { s.classList.toggle('current', j === current); });
    if (scroll) {
      sections[current].scrollIntoView({block: 'start'});
      history.replaceState(null, '', '#' + sections[current].id);
    }
  }
  var fromHash = sections.findIndex(function (s) { return '#' + s.id === location.hash; });
  mark(fromHash < 0 ? 0 : fromHash, false);

  function currentKey() { return sections.length ? sections[current].dataset.stage : null; }
  function num(v) {
    if (v === null) return 'n/a';
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toFixed(4);
  }
  function pngName(st, c, overlay) {
    return st.dir + 'c' + String(c).padStart(st.digits, '0') + (overlay ? '-overlay' : '') + '.png';
  }

  function tile(st, c, side) {  // channel c cut out of a grid PNG (a CSS sprite), when a grid shows it
    for (var g of st.grids) {
      var p = g.order.indexOf(c);
      if (p < 0) continue;
      var G = g.gutter, row = Math.floor(p / g.cols), col = p % g.cols;
      var tw = (g.width - G) / g.cols - G, th = (g.height - G) / g.rows - G;
      var z = side ? side / Math.max(tw, th) : Math.max(1, Math.floor(320 / Math.max(tw, th)));
      var div = document.createElement('div');
      div.className = 'tile';
      div.title = 'tile of ' + decodeURIComponent(g.src);
      div.style.cssText = 'width:' + tw * z + 'px;height:' + th * z + 'px;background-image:url("' + g.src + '");' +
        'background-size:' + g.width * z + 'px ' + g.height * z + 'px;' +
        'background-position:-' + (G + col * (tw + G)) * z + 'px -' + (G + row * (th + G)) * z + 'px';
      return div;
    }
    return null;
  }

  function picture(key, st, c, side) {  // the channel's own PNG, else its grid tile, else a note
    var own = st.png.indexOf(c) >= 0, overlay = st.ovl.indexOf(c) >= 0;
    if (side && !own && !overlay) return tile(st, c, side) || document.createElement('span');
    if (own || overlay) {
      var img = new Image();
      img.onload = function () { fmOk(img); };
      img.onerror = function () { fmBad(img); };
      img.src = pngName(st, c, !own);
      img.alt = 'channel ' + c;
      return img;
    }
    var cut = tile(st, c);
    if (cut) return cut;
    var note = document.createElement('p');
    note.className = 'ph';
    note.textContent = 'channel ' + c + ' was not drawn: fmpipe render FILE ' + st.option + ' --channels ' + c;
    return note;
  }

  var PREVIEWS = 32;  // channel previews under the open one: a window of the stage's channels
  function more(text, c) {
    var b = document.createElement('button');
    b.className = 'more';
    b.textContent = text;
    b.dataset.c = c;
    return b;
  }
  function scale(st, c) {  // the colour bar of the open channel: the scale its colours run over
    var box = document.getElementById('vscale'), g = st.grids.find(function (g) { return g.scale; });
    box.textContent = '';
    if (!g) { box.textContent = 'colour scale: not recorded by this render (rerun fmpipe render)'; return; }
    var s = g.scale, own = s.normalize === 'channel';
    var lo = own ? st.min[c] : s.lo, hi = own ? st.max[c] : s.hi;
    var bar = document.createElement('span'), left = document.createElement('span');
    var right = document.createElement('span');
    bar.className = 'bar';
    bar.style.background = s.gradient;
    left.className = 'lo';
    left.textContent = num(lo);
    right.className = 'hi';
    right.textContent = num(hi);
    var why = document.createElement('span');
    why.textContent = s.cmap + ', normalised per ' + s.normalize;
    box.dataset.lo = lo;
    box.dataset.hi = hi;
    box.append(left, bar, right, why);
  }

  function show(key, c) {  // open the channel view on stage `key`, channel c (wrapping around)
    var st = data[key];
    if (!st) return;
    shown = key;
    channel = (c + st.channels) % st.channels;
    var body = document.getElementById('vbody');
    body.textContent = '';
    body.appendChild(picture(key, st, channel));
    document.getElementById('vtitle').textContent = st.label + ' · channel ' + channel + ' of ' + st.channels;
    document.getElementById('vstats').textContent = 'min ' + num(st.min[channel]) + ' · max ' +
      num(st.max[channel]) + ' · mean ' + num(st.mean[channel]);
    scale(st, channel);
    var list = document.getElementById('vlist'), first = Math.floor(channel / PREVIEWS) * PREVIEWS;
    if (list.dataset.stage !== key || +list.dataset.first !== first) {  // previews of the channels near this one
      list.textContent = '';
      list.dataset.stage = key;
      list.dataset.first = first;
      if (first > 0) list.appendChild(more('‹ ' + (first - PREVIEWS) + '–' + (first - 1), first - PREVIEWS));
      for (var i = first; i < Math.min(st.channels, first + PREVIEWS); i++) {
        var b = document.createElement('button'), label = document.createElement('span');
        b.dataset.c = i;
        b.title = 'channel ' + i;
        b.appendChild(picture(key, st, i, 48));
        label.textContent = i;
        b.appendChild(label);
        list.appendChild(b);
      }
      var next = first + PREVIEWS;
      var last = Math.min(st.channels, next + PREVIEWS) - 1;
      if (next < st.channels) list.appendChild(more(next + '–' + last + ' ›', next));
    }
    [].forEach.call(list.children, function (b) { b.classList.toggle('on', +b.dataset.c === channel); });
    viewer.hidden = false;
  }

  document.getElementById('vlist').addEventListener('click', function (e) {
    var b = e.target.closest('button');
    if (b && b.dataset.c !== undefined) show(shown, +b.dataset.c);
  });
  viewer.addEventListener('click', function (e) {
    var act = e.target.dataset.act;
    if (act === 'close') viewer.hidden = true;
    if (act === 'prev') show(shown, channel - 1);
    if (act === 'next') show(shown, channel + 1);
  });
  document.querySelectorAll('button.chan').forEach(function (b) {
    b.addEventListener('click', function () {
      mark(sections.indexOf(b.closest('section')), false);
      show(b.dataset.stage, 0);
    });
  });
  document.querySelectorAll('img.grid.clickable').forEach(function (img) {
    img.addEventListener('click', function (e) {  // a click on a grid tile opens that channel
      var st = data[img.dataset.stage], g = st.grids[+img.dataset.grid], box = img.getBoundingClientRect();
      var x = (e.clientX - box.left) * img.naturalWidth / box.width;
      var y = (e.clientY - box.top) * img.naturalHeight / box.height;
      var col = Math.floor((x - g.gutter) / ((g.width - g.gutter) / g.cols));
      var row = Math.floor((y - g.gutter) / ((g.height - g.gutter) / g.rows));
      var p = row * g.cols + col;
      if (col < 0 || col >= g.cols || p < 0 || p >= g.order.length) return;
      e.preventDefault();
      mark(sections.indexOf(img.closest('section')), false);
      show(img.dataset.stage, g.order[p]);
    });
  });

  function follow(id) {  // previous/next image keeps the stage in view (#stage-S)
    var link = document.getElementById(id);
    if (link && link.href) location.href = link.href.split('#')[0] + (id === 'up' ? '' : location.hash);
  }
  document.addEventListener('keydown', function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    var open = !viewer.hidden;
    switch (e.key) {
      case 'ArrowLeft': case 'p': open ? show(shown, channel - 1) : follow('prev'); break;
      case 'ArrowRight': case 'n': open ? show(shown, channel + 1) : follow('next'); break;
      case 'ArrowUp': case 'k': mark(current - 1, true); if (open) show(currentKey(), 0); break;
      case 'ArrowDown': case 'j': mark(current + 1, true); if (open) show(currentKey(), 0); break;
      case 'c': case 'Enter': if (currentKey() !== null) show(currentKey(), open ? channel : 0); break;
      case 'Escape': viewer.hidden = true; break;
      case 'u': follow('up'); break;
      default: return;
    }
    e.preventDefault();
  });
})();
"""
