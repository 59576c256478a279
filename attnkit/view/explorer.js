/* attnkit view: the explorer of one sample. Reads the JSON block #ak-data and builds
   the head view, the model view, the score strips and (for image datasets) the patch
   overlay inside #ak-root. Fetches nothing; tokens enter the DOM as text only. */
(function () {
  "use strict";

  var root = document.getElementById("ak-root");
  var D = JSON.parse(document.getElementById("ak-data").textContent);
  var N = D.n, L = D.layers.length, H = D.heads.length, A = D.attention, K = A.k;
  var ROW = 22;            /* px per token in the head view */
  var LINK_W = 300;        /* px between the two token columns */
  var HOVER_MIN = 0.002;   /* weights drawn for a hovered token */

  /* ------------------------------------------------------------------ data */
  function bytes(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function little(b64, size) {  /* little-endian unsigned ints of 2 or 4 bytes */
    var b = bytes(b64), view = new DataView(b.buffer), n = b.length / size;
    var out = size === 2 ? new Uint16Array(n) : new Uint32Array(n);
    for (var i = 0; i < n; i++) out[i] = size === 2 ? view.getUint16(2 * i, true) : view.getUint32(4 * i, true);
    return out;
  }
  var VALUES = little(A.values, 2);
  var INDEX = A.mode === "topk" ? little(A.index, A.index_bytes) : null;
  var SCALE = A.scale;

  /* [key, weight] pairs of row q of (layer li, head hi), weight > 0 */
  function row(li, hi, q) {
    var base = ((li * H + hi) * N + q) * K, out = [];
    for (var j = 0; j < K; j++) {
      var v = VALUES[base + j];
      if (v > 0) out.push([INDEX ? INDEX[base + j] : j, v / SCALE]);
    }
    return out;
  }
  /* [query, weight] pairs of column k */
  function column(li, hi, k) {
    var out = [];
    for (var q = 0; q < N; q++) {
      var r = row(li, hi, q);
      for (var j = 0; j < r.length; j++) if (r[j][0] === k) out.push([q, r[j][1]]);
    }
    return out;
  }
  /* mean over the active heads of row q (dense array of N) */
  function meanRow(li, q) {
    var out = new Float64Array(N), count = 0;
    for (var hi = 0; hi < H; hi++) {
      if (!state.active[hi]) continue;
      count++;
      var r = row(li, hi, q);
      for (var j = 0; j < r.length; j++) out[r[j][0]] += r[j][1];
    }
    if (count) for (var i = 0; i < N; i++) out[i] /= count;
    return out;
  }

  /* ------------------------------------------------------------------ colours */
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#3949ab", "#ad494a",
                 "#00897b", "#f9a825", "#6d4c41", "#5e35b1"];
  function headColor(hi) {  /* a stable hex colour per head number */
    var h = D.heads[hi];
    if (h < PALETTE.length) return PALETTE[h];
    var hue = (h * 137.508) % 360, s = 0.65, l = 0.45, c = (1 - Math.abs(2 * l - 1)) * s;
    var x = c * (1 - Math.abs((hue / 60) % 2 - 1)), m = l - c / 2, k = Math.floor(hue / 60);
    var rgb = [[c, x, 0], [x, c, 0], [0, c, x], [0, x, c], [x, 0, c], [c, 0, x]][k];
    return "#" + rgb.map(function (v) {
      var t = Math.round((v + m) * 255).toString(16);
      return t.length === 1 ? "0" + t : t;
    }).join("");
  }
  function hexRgb(hex) {
    return [parseInt(hex.substr(1, 2), 16), parseInt(hex.substr(3, 2), 16), parseInt(hex.substr(5, 2), 16)];
  }
  var SEQ = [[255, 255, 255], [254, 232, 200], [253, 187, 132], [239, 101, 72], [179, 0, 0], [110, 0, 0]];
  var DIV = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  var HEAT = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
              [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  function ramp(stops, t) {
    if (!(t >= 0)) t = 0;
    if (t > 1) t = 1;
    var x = t * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return [Math.round(a[0] + f * (b[0] - a[0])), Math.round(a[1] + f * (b[1] - a[1])),
            Math.round(a[2] + f * (b[2] - a[2]))];
  }
  function css(rgb) { return "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")"; }
  function dark(rgb) { return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140; }
  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "n/a";
    var a = Math.abs(v);
    return a === 0 || (a >= 0.001 && a < 1e4) ? v.toPrecision(3) : v.toExponential(2);
  }
  /* value -> [0, 1] for a colour scale: sequential from 0 (or min when negative absent) to max,
     or diverging around 0 */
  function scale(values, signed) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (signed) {
      var m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      return { lo: -m, hi: m, t: function (v) { return 0.5 + v / (2 * m); }, stops: DIV };
    }
    var base = Math.min(0, lo), span = (hi - base) || 1;
    return { lo: base, hi: hi, t: function (v) { return (v - base) / span; }, stops: SEQ };
  }

  /* ------------------------------------------------------------------ DOM helpers */
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function legend(sc, label) {
    var box = el("span", "ak-legend"), bar = el("span", "ak-legend-bar"), stops = [];
    for (var i = 0; i <= 8; i++) stops.push(css(ramp(sc.stops, i / 8)));
    bar.style.background = "linear-gradient(to right," + stops.join(",") + ")";
    box.appendChild(el("span", "ak-legend-num", fmt(sc.lo)));
    box.appendChild(bar);
    box.appendChild(el("span", "ak-legend-num", fmt(sc.hi)));
    if (label) box.title = label;
    return box;
  }

  /* ------------------------------------------------------------------ state */
  var state = { li: L - 1, active: [], threshold: 0.02, hover: null, pinned: false };
  for (var h0 = 0; h0 < H; h0++) state.active.push(true);

  /* ------------------------------------------------------------------ header */
  var header = el("header", "ak-header");
  header.appendChild(el("h1", "ak-title", "attnkit view"));
  var sub = (D.model || "attention") + " \u00b7 sample " + D.sample + " of " + D.n_samples +
    " \u00b7 " + N + " tokens \u00b7 " + L + (L === D.n_layers ? "" : "/" + D.n_layers) + " layers \u00d7 " +
    H + (H === D.n_heads ? "" : "/" + D.n_heads) + " heads" + (D.readout ? " \u00b7 read-out: " + D.readout : "");
  header.appendChild(el("div", "ak-sub", sub));
  if (D.text) header.appendChild(el("div", "ak-text", D.text));
  var notes = el("div", "ak-notes");
  notes.id = "ak-notes";
  D.notes.forEach(function (t) { notes.appendChild(el("div", "ak-note", t)); });
  header.appendChild(notes);
  root.textContent = "";
  root.appendChild(header);

  /* ------------------------------------------------------------------ controls */
  var controls = el("div", "ak-controls");
  var layerLabel = el("label", "ak-control", "Layer ");
  var layerSelect = el("select");
  layerSelect.id = "ak-layer";
  D.layers.forEach(function (layer, li) {
    var o = el("option", null, String(layer));
    o.value = String(li);
    layerSelect.appendChild(o);
  });
  layerSelect.value = String(state.li);
  layerLabel.appendChild(layerSelect);
  controls.appendChild(layerLabel);

  var chipBox = el("div", "ak-chips");
  chipBox.id = "ak-heads";
  chipBox.appendChild(el("span", "ak-control", "Heads"));
  var chips = [];
  D.heads.forEach(function (head, hi) {
    var chip = el("button", "ak-chip", String(head));
    chip.type = "button";
    chip.setAttribute("data-head", String(head));
    chip.setAttribute("aria-pressed", "true");
    chip.title = "head " + head + ": click to toggle, double-click to show only this head";
    chip.style.setProperty("--head", headColor(hi));
    chip.addEventListener("click", function () { state.active[hi] = !state.active[hi]; update(); });
    chip.addEventListener("dblclick", function () { solo(hi); });
    chips.push(chip);
    chipBox.appendChild(chip);
  });
  function allHeads(on) { for (var i = 0; i < H; i++) state.active[i] = on; update(); }
  var allBtn = el("button", "ak-small", "all"), noneBtn = el("button", "ak-small", "none");
  allBtn.type = noneBtn.type = "button";
  allBtn.id = "ak-heads-all";
  noneBtn.id = "ak-heads-none";
  allBtn.addEventListener("click", function () { allHeads(true); });
  noneBtn.addEventListener("click", function () { allHeads(false); });
  chipBox.appendChild(allBtn);
  chipBox.appendChild(noneBtn);
  controls.appendChild(chipBox);

  var thrLabel = el("label", "ak-control", "Hide weights below ");
  var thr = el("input");
  thr.type = "range"; thr.min = "0"; thr.max = "0.3"; thr.step = "0.005"; thr.value = String(state.threshold);
  thr.id = "ak-threshold";
  var thrValue = el("span", "ak-num", state.threshold.toFixed(3));
  thr.addEventListener("input", function () {
    state.threshold = parseFloat(thr.value);
    thrValue.textContent = state.threshold.toFixed(3);
    drawLinks();
  });
  thrLabel.appendChild(thr);
  thrLabel.appendChild(thrValue);
  controls.appendChild(thrLabel);
  root.appendChild(controls);

  function solo(hi) {
    for (var i = 0; i < H; i++) state.active[i] = i === hi;
    update();
  }

  /* ------------------------------------------------------------------ panels */
  var main = el("div", "ak-main"), side = el("div", "ak-side");
  root.appendChild(main);

  /* head view */
  var headCard = el("section", "ak-card ak-headview-card");
  headCard.appendChild(el("h2", null, "Head view"));
  var headHelp = el("p", "ak-help", "Lines join each token (left, query) to the tokens it attends " +
    "to (right, key); opacity is the weight, colour the head. Hover a token to see only its links; " +
    "click it to pin.");
  headCard.appendChild(headHelp);
  var headView = el("div", "ak-headview");
  headView.id = "ak-headview";
  var left = el("div", "ak-col ak-left"), right = el("div", "ak-col ak-right");
  left.id = "ak-queries";
  right.id = "ak-keys";
  var svgBox = el("div", "ak-links-box");
  svgBox.innerHTML = '<svg class="ak-links" id="ak-links" width="' + LINK_W + '" height="' + (N * ROW) + '"/>';
  var svg = svgBox.firstChild;
  var leftToks = [], rightToks = [];
  D.tokens.forEach(function (t, i) {
    [[left, leftToks, "left"], [right, rightToks, "right"]].forEach(function (spec) {
      var tok = el("div", "ak-tok", t);
      tok.setAttribute("data-i", String(i));
      tok.setAttribute("data-side", spec[2]);
      tok.title = i + ": " + t;
      tok.style.height = ROW + "px";
      tok.style.lineHeight = ROW + "px";
      spec[0].appendChild(tok);
      spec[1].push(tok);
    });
  });
  headView.appendChild(left);
  headView.appendChild(svgBox);
  headView.appendChild(right);
  headCard.appendChild(headView);
  var linkInfo = el("div", "ak-info");
  linkInfo.id = "ak-link-info";
  headCard.appendChild(linkInfo);
  main.appendChild(headCard);

  function setHover(side, i, pin) {
    if (state.pinned && !pin) return;
    var same = state.hover && state.hover.side === side && state.hover.i === i;
    if (pin) {
      state.pinned = !(state.pinned && same);
      state.hover = state.pinned ? { side: side, i: i } : null;
    } else {
      if (same) return;
      state.hover = side === null ? null : { side: side, i: i };
    }
    drawLinks();
  }
  function tokenEvent(e) {
    var t = e.target.closest ? e.target.closest(".ak-tok") : null;
    return t ? [t.getAttribute("data-side"), parseInt(t.getAttribute("data-i"), 10)] : null;
  }
  headView.addEventListener("mouseover", function (e) {
    var t = tokenEvent(e);
    if (t) setHover(t[0], t[1], false);
  });
  headView.addEventListener("click", function (e) {
    var t = tokenEvent(e);
    if (t) setHover(t[0], t[1], true);
  });
  headView.addEventListener("mouseleave", function () { setHover(null, -1, false); });

  function drawLinks() {
    var parts = [], li = state.li, hov = state.hover, mid = LINK_W / 2, count = 0;
    var linked = new Float64Array(N), nActive = 0;
    for (var hi = 0; hi < H; hi++) {
      if (!state.active[hi]) continue;
      nActive++;
      var color = headColor(hi), head = D.heads[hi], pairs = [];
      if (hov && hov.side === "left") {
        row(li, hi, hov.i).forEach(function (p) { if (p[1] >= HOVER_MIN) pairs.push([hov.i, p[0], p[1]]); });
      } else if (hov) {
        column(li, hi, hov.i).forEach(function (p) { if (p[1] >= HOVER_MIN) pairs.push([p[0], hov.i, p[1]]); });
      } else {
        for (var q = 0; q < N; q++) {
          row(li, hi, q).forEach(function (p) { if (p[1] >= state.threshold && p[1] > 0) pairs.push([q, p[0], p[1]]); });
        }
      }
      pairs.forEach(function (p) {
        var y1 = p[0] * ROW + ROW / 2, y2 = p[1] * ROW + ROW / 2, w = p[2];
        if (hov) linked[hov.side === "left" ? p[1] : p[0]] += w;
        parts.push('<path d="M0 ' + y1 + "C" + mid + " " + y1 + " " + mid + " " + y2 + " " + LINK_W + " " + y2 +
          '" stroke="' + color + '" stroke-opacity="' + Math.min(1, 0.08 + 0.92 * w).toFixed(3) +
          '" stroke-width="' + (hov ? 1.5 + 3 * w : 1 + 1.5 * w).toFixed(2) +
          '" data-h="' + head + '" data-q="' + p[0] + '" data-k="' + p[1] + '" data-w="' + w.toFixed(4) + '"/>');
        count++;
      });
    }
    svg.innerHTML = parts.join("");
    svg.setAttribute("data-links", String(count));
    headView.setAttribute("data-hover", hov ? hov.side + ":" + hov.i : "");
    headView.classList.toggle("ak-hovering", !!hov);
    for (var i = 0; i < N; i++) {
      var lt = leftToks[i], rt = rightToks[i];
      lt.classList.toggle("ak-active", !!(hov && hov.side === "left" && hov.i === i));
      rt.classList.toggle("ak-active", !!(hov && hov.side === "right" && hov.i === i));
      var other = hov ? (hov.side === "left" ? rt : lt) : null;
      lt.style.backgroundColor = rt.style.backgroundColor = "";
      lt.classList.remove("ak-linked");
      rt.classList.remove("ak-linked");
      if (other && nActive && linked[i] / nActive >= HOVER_MIN) {
        other.classList.add("ak-linked");
        other.style.backgroundColor = "rgba(255,140,0," + Math.min(0.85, 0.1 + linked[i] / nActive).toFixed(3) + ")";
      }
    }
    if (hov) {
      var tok = D.tokens[hov.i];
      linkInfo.textContent = (hov.side === "left" ? "\u201c" + tok + "\u201d (" + hov.i + ") attends to the highlighted tokens"
        : "tokens attending to \u201c" + tok + "\u201d (" + hov.i + ")") + " \u2014 layer " + D.layers[li] +
        ", " + nActive + " head" + (nActive === 1 ? "" : "s") + (state.pinned ? " (pinned; click again to release)" : "");
    } else {
      linkInfo.textContent = count + " links \u2265 " + state.threshold.toFixed(3) + " \u2014 layer " + D.layers[li] +
        ", " + nActive + " head" + (nActive === 1 ? "" : "s");
    }
  }

  /* model view */
  var modelCard = el("section", "ak-card ak-modelview-card");
  modelCard.appendChild(el("h2", null, "Model view"));
  modelCard.appendChild(el("p", "ak-help", "Every layer \u00d7 head: query rows top to bottom, keys left " +
    "to right, darker = more weight. Click a cell to open it in the head view."));
  var grid = el("div", "ak-modelview");
  grid.id = "ak-modelview";
  grid.style.gridTemplateColumns = "auto repeat(" + H + ", auto)";
  grid.appendChild(el("span", "ak-axis", "L\\H"));
  D.heads.forEach(function (head, hi) {
    var lab = el("span", "ak-axis", String(head));
    lab.style.color = headColor(hi);
    grid.appendChild(lab);
  });
  var cells = [];
  var S = Math.min(N, 96);   /* thumbnail resolution: max-pooled when longer */
  D.layers.forEach(function (layer, li) {
    grid.appendChild(el("span", "ak-axis", String(layer)));
    cells.push([]);
    D.heads.forEach(function (head, hi) {
      var cell = el("button", "ak-cell");
      cell.type = "button";
      cell.setAttribute("data-layer", String(layer));
      cell.setAttribute("data-head", String(head));
      cell.title = "layer " + layer + ", head " + head;
      var cv = el("canvas");
      cv.width = S; cv.height = S;
      drawThumb(cv, li, hi);
      cell.appendChild(cv);
      cell.addEventListener("click", function () { openCell(li, hi); });
      grid.appendChild(cell);
      cells[li].push(cell);
    });
  });
  modelCard.appendChild(grid);
  side.appendChild(modelCard);
  main.appendChild(side);

  function drawThumb(cv, li, hi) {
    var ctx = cv.getContext("2d"), img = ctx.createImageData(S, S), pool = new Float64Array(S * S);
    for (var q = 0; q < N; q++) {
      var r = row(li, hi, q), py = Math.floor(q * S / N);
      for (var j = 0; j < r.length; j++) {
        var at = py * S + Math.floor(r[j][0] * S / N);
        if (r[j][1] > pool[at]) pool[at] = r[j][1];
      }
    }
    var c = hexRgb(headColor(hi));
    for (var p = 0; p < S * S; p++) {
      var t = Math.sqrt(pool[p]);
      img.data[4 * p] = Math.round(255 + t * (c[0] - 255));
      img.data[4 * p + 1] = Math.round(255 + t * (c[1] - 255));
      img.data[4 * p + 2] = Math.round(255 + t * (c[2] - 255));
      img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  function openCell(li, hi) {
    state.li = li;
    layerSelect.value = String(li);
    state.hover = null;
    state.pinned = false;
    solo(hi);
    if (headCard.scrollIntoView) headCard.scrollIntoView({ block: "nearest" });
  }

  /* image panel */
  var G = D.grid, imageCard = null, overlaySelect = null, overlay = null, overlayCaption = null,
    overlayLegend = null, hoverPatch = null;
  var PATCH = 24;  /* canvas px per patch when there is no image */
  if (G) {
    imageCard = el("section", "ak-card ak-image-card");
    imageCard.appendChild(el("h2", null, "Image"));
    imageCard.appendChild(el("p", "ak-help", "The patch overlay of the chosen map; hover a patch " +
      "to see where it attends (current layer, mean of the active heads)."));
    var ctl = el("label", "ak-control", "Overlay ");
    overlaySelect = el("select");
    overlaySelect.id = "ak-overlay";
    var modes = [["attn", "[CLS] attention (layer, active heads)"]];
    D.scores.forEach(function (s) { modes.push(["score:" + s.name, s.label]); });
    if (D.saliency) modes.push(["saliency", "saliency map"]);
    modes.push(["none", "none (image only)"]);
    modes.forEach(function (m) {
      var o = el("option", null, m[1]);
      o.value = m[0];
      overlaySelect.appendChild(o);
    });
    ctl.appendChild(overlaySelect);
    imageCard.appendChild(ctl);
    var W = D.image ? D.image.width : G[1] * PATCH, Hh = D.image ? D.image.height : G[0] * PATCH;
    var stack = el("div", "ak-stack");
    var base = el("canvas", "ak-base");
    base.width = W; base.height = Hh;
    overlay = el("canvas", "ak-overlay-canvas");
    overlay.id = "ak-overlay-canvas";
    overlay.width = W; overlay.height = Hh;
    var shown = Math.min(360, Math.max(240, W));
    [base, overlay].forEach(function (cv) { cv.style.width = shown + "px"; cv.style.height = (shown * Hh / W) + "px"; });
    stack.style.width = shown + "px";
    stack.style.height = (shown * Hh / W) + "px";
    stack.appendChild(base);
    stack.appendChild(overlay);
    imageCard.appendChild(stack);
    overlayCaption = el("div", "ak-info");
    overlayCaption.id = "ak-overlay-caption";
    imageCard.appendChild(overlayCaption);
    overlayLegend = el("div", "ak-overlay-legend");
    imageCard.appendChild(overlayLegend);
    side.appendChild(imageCard);

    var bctx = base.getContext("2d");
    if (D.image) {
      var px = bytes(D.image.pixels), id = bctx.createImageData(W, Hh);
      for (var p = 0; p < W * Hh; p++) {
        id.data[4 * p] = px[3 * p]; id.data[4 * p + 1] = px[3 * p + 1]; id.data[4 * p + 2] = px[3 * p + 2];
        id.data[4 * p + 3] = 255;
      }
      bctx.putImageData(id, 0, 0);
    } else {
      bctx.fillStyle = "#f3f3f3";
      bctx.fillRect(0, 0, W, Hh);
    }
    overlaySelect.addEventListener("change", function () { hoverPatch = null; drawOverlay(); });
    overlay.addEventListener("mousemove", function (e) {
      var r = overlay.getBoundingClientRect();
      var c = Math.floor((e.clientX - r.left) / r.width * G[1]), rr = Math.floor((e.clientY - r.top) / r.height * G[0]);
      c = Math.max(0, Math.min(G[1] - 1, c)); rr = Math.max(0, Math.min(G[0] - 1, rr));
      if (!hoverPatch || hoverPatch[0] !== rr || hoverPatch[1] !== c) { hoverPatch = [rr, c]; drawOverlay(); }
    });
    overlay.addEventListener("mouseleave", function () { hoverPatch = null; drawOverlay(); });
  }

  function patchValues(values) {  /* per-position values -> the grid's patch values */
    var out = [];
    for (var i = 0; i < G[0] * G[1]; i++) out.push(values[1 + i]);
    return out;
  }
  function drawOverlay() {
    var ctx = overlay.getContext("2d"), W = overlay.width, Hh = overlay.height, mode = overlaySelect.value;
    var pw = W / G[1], ph = Hh / G[0], alpha = D.image ? 0.62 : 1, caption, sc = null, vals = null, signed = false;
    ctx.clearRect(0, 0, W, Hh);
    if (hoverPatch) {
      var pos = 1 + hoverPatch[0] * G[1] + hoverPatch[1];
      vals = patchValues(Array.prototype.slice.call(meanRow(state.li, pos)));
      caption = "patch (" + hoverPatch[0] + ", " + hoverPatch[1] + ") attends to \u2014 layer " +
        D.layers[state.li] + ", mean of the active heads";
    } else if (mode === "attn") {
      vals = patchValues(Array.prototype.slice.call(meanRow(state.li, 0)));
      caption = "[CLS] attention to each patch \u2014 layer " + D.layers[state.li] + ", mean of the active heads";
    } else if (mode.indexOf("score:") === 0) {
      var s = scoreByName(mode.substr(6));
      var v = s.by_layer ? s.values[state.li] : s.values;
      vals = patchValues(v);
      signed = s.signed;
      caption = s.label + (s.by_layer ? " \u2014 layer " + D.layers[state.li] : "") + ": " + s.about;
    } else if (mode === "saliency") {
      var S2 = D.saliency, sp = bytes(S2.pixels), tmp = el("canvas");
      tmp.width = S2.width; tmp.height = S2.height;
      var tctx = tmp.getContext("2d"), sid = tctx.createImageData(S2.width, S2.height);
      for (var p = 0; p < S2.width * S2.height; p++) {
        var col = ramp(HEAT, sp[p] / 255);
        sid.data[4 * p] = col[0]; sid.data[4 * p + 1] = col[1]; sid.data[4 * p + 2] = col[2];
        sid.data[4 * p + 3] = Math.round(255 * alpha);
      }
      tctx.putImageData(sid, 0, 0);
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(tmp, 0, 0, W, Hh);
      caption = "saliency map (" + fmt(S2.min) + " to " + fmt(S2.max) + ")";
      sc = { lo: S2.min, hi: S2.max, stops: HEAT };
    } else {
      caption = "no overlay";
    }
    if (vals) {
      if (signed) {
        sc = scale(vals, true);
      } else {
        sc = scale(vals, false);
        sc.stops = HEAT;
      }
      for (var i = 0; i < vals.length; i++) {
        var r = Math.floor(i / G[1]), c = i % G[1], v2 = vals[i];
        if (v2 === null || !isFinite(v2)) continue;
        ctx.fillStyle = "rgba(" + ramp(sc.stops, sc.t(v2)).join(",") + "," + alpha + ")";
        ctx.fillRect(Math.round(c * pw), Math.round(r * ph), Math.ceil(pw), Math.ceil(ph));
      }
    }
    ctx.strokeStyle = "rgba(255,255,255,0.35)";
    ctx.lineWidth = 1;
    for (var gc = 1; gc < G[1]; gc++) { ctx.beginPath(); ctx.moveTo(gc * pw, 0); ctx.lineTo(gc * pw, Hh); ctx.stroke(); }
    for (var gr = 1; gr < G[0]; gr++) { ctx.beginPath(); ctx.moveTo(0, gr * ph); ctx.lineTo(W, gr * ph); ctx.stroke(); }
    if (hoverPatch) {
      ctx.strokeStyle = "#00e5ff";
      ctx.lineWidth = Math.max(2, W / 150);
      ctx.strokeRect(hoverPatch[1] * pw + 1, hoverPatch[0] * ph + 1, pw - 2, ph - 2);
    }
    overlay.setAttribute("data-mode", hoverPatch ? "patch" : mode);
    overlay.setAttribute("data-patch", hoverPatch ? hoverPatch.join(",") : "");
    overlayCaption.textContent = caption;
    overlayLegend.textContent = "";
    if (sc) overlayLegend.appendChild(legend(sc, caption));
  }

  /* score strips */
  var scoreCard = null, strips = [];
  function scoreByName(name) {
    for (var i = 0; i < D.scores.length; i++) if (D.scores[i].name === name) return D.scores[i];
    return null;
  }
  if (D.scores.length) {
    scoreCard = el("section", "ak-card ak-scores-card");
    scoreCard.appendChild(el("h2", null, "Token scores"));
    scoreCard.appendChild(el("p", "ak-help", "Each row colours the tokens by one score; scores " +
      "computed from attention follow the chosen layer" + (D.score_target ? " and explain " +
      D.score_target : "") + ". Hover a token for its value; signed scores use a blue\u2013red " +
      "scale centred on 0."));
    var box = el("div", "ak-scores");
    box.id = "ak-scores";
    D.scores.forEach(function (s) {
      var strip = el("div", "ak-strip");
      strip.setAttribute("data-score", s.name);
      var lab = el("div", "ak-strip-label", s.label);
      lab.title = s.about;
      var layerTag = el("span", "ak-strip-layer");
      lab.appendChild(layerTag);
      var toks = el("div", "ak-strip-tokens"), chipsOf = [];
      D.tokens.forEach(function (t, i) {
        var c = el("span", "ak-score-tok", t);
        c.setAttribute("data-i", String(i));
        toks.appendChild(c);
        chipsOf.push(c);
      });
      var leg = el("div", "ak-strip-legend");
      strip.appendChild(lab);
      strip.appendChild(toks);
      strip.appendChild(leg);
      box.appendChild(strip);
      strips.push({ s: s, chips: chipsOf, legend: leg, layerTag: layerTag, strip: strip });
    });
    box.addEventListener("mouseover", function (e) {
      var t = e.target.closest ? e.target.closest(".ak-score-tok") : null;
      if (t) setHover("left", parseInt(t.getAttribute("data-i"), 10), false);
    });
    box.addEventListener("mouseleave", function () { setHover(null, -1, false); });
    scoreCard.appendChild(box);
    root.appendChild(scoreCard);
  }
  function drawStrips() {
    strips.forEach(function (st) {
      var s = st.s, v = s.by_layer ? s.values[state.li] : s.values, sc = scale(v, s.signed);
      st.layerTag.textContent = s.by_layer ? " \u00b7 layer " + D.layers[state.li] : "";
      st.strip.setAttribute("data-layer", s.by_layer ? String(D.layers[state.li]) : "");
      st.chips.forEach(function (c, i) {
        var val = v[i], rgb = val === null ? [238, 238, 238] : ramp(sc.stops, sc.t(val));
        c.style.backgroundColor = css(rgb);
        c.style.color = dark(rgb) ? "#fff" : "#111";
        c.title = i + ": " + D.tokens[i] + " \u2014 " + s.label + " " + fmt(val);
        c.setAttribute("data-value", val === null ? "" : String(val));
      });
      st.legend.textContent = "";
      st.legend.appendChild(legend(sc, s.label));
    });
  }

  var footer = el("footer", "ak-footer", "Weights embedded " + (A.mode === "dense" ? "in full" :
    "as the top " + K + " of each row") + " (uint16, step 1/" + SCALE + "). Made by attnkit; " +
    "this file is self-contained and works offline.");
  root.appendChild(footer);

  /* ------------------------------------------------------------------ update */
  function update() {
    chips.forEach(function (c, hi) {
      c.classList.toggle("ak-off", !state.active[hi]);
      c.setAttribute("aria-pressed", state.active[hi] ? "true" : "false");
    });
    cells.forEach(function (r, li) {
      r.forEach(function (cell, hi) {
        cell.classList.toggle("ak-current", li === state.li && state.active[hi]);
      });
    });
    root.setAttribute("data-layer", String(D.layers[state.li]));
    root.setAttribute("data-heads", D.heads.filter(function (h, hi) { return state.active[hi]; }).join(","));
    drawLinks();
    drawStrips();
    if (G) drawOverlay();
  }
  layerSelect.addEventListener("change", function () {
    state.li = parseInt(layerSelect.value, 10);
    update();
  });
  update();
  root.setAttribute("data-ready", "1");
})();
