// kiq dashboard: confirmations, select-all, and two small SVG charts.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, value, anchor) {
    var t = el("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    t.textContent = value;
    return t;
  }

  function fmt(n) { return Number(n).toLocaleString("en-US"); }

  // Frame with a y axis scaled to `top`; returns the plotting area.
  function frame(box, top) {
    while (box.firstChild) box.removeChild(box.firstChild);
    var w = box.clientWidth || 600, h = box.clientHeight || 180, left = 48, bottom = 20;
    var svg = el("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none" }, box);
    [0, 0.5, 1].forEach(function (f) {
      var y = 4 + (h - bottom - 4) * (1 - f);
      el("line", { x1: left, x2: w, y1: y, y2: y, "class": "axis" }, svg);
      var v = top * f;
      text(svg, left - 6, y + 4, fmt(v >= 10 ? Math.round(v) : Math.round(v * 10) / 10), "end");
    });
    return { svg: svg, x: left, y: 4, w: w - left, h: h - bottom - 4, bottom: h };
  }

  function line(area, values, top, cls) {
    if (values.length < 2) return;
    var step = area.w / (values.length - 1);
    var points = values.map(function (v, i) {
      return (area.x + i * step).toFixed(1) + "," + (area.y + area.h - (v / top) * area.h).toFixed(1);
    });
    el("polyline", { points: points.join(" "), "class": cls }, area.svg);
  }

  // Live: polls the stats JSON, plots processed/failed per interval, refreshes the totals.
  function realtime(box) {
    var url = box.getAttribute("data-poll"), every = Number(box.getAttribute("data-interval")) || 5000;
    var last = null, processed = [], failed = [], keep = 60;
    function draw() {
      var top = Math.max(1, Math.max.apply(null, processed.concat(failed)));
      var area = frame(box, top);
      line(area, processed, top, "processed");
      line(area, failed, top, "failed");
    }
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (data) {
          var s = data.sidekiq;
          Object.keys(s).forEach(function (k) {
            var node = document.querySelector('[data-stat="' + k + '"]');
            if (node) node.textContent = fmt(s[k]);
          });
          var when = document.getElementById("server-time");
          if (when) when.textContent = "updated " + data.server_utc_time;
          if (last) {
            processed.push(Math.max(0, s.processed - last.processed));
            failed.push(Math.max(0, s.failed - last.failed));
            if (processed.length > keep) { processed.shift(); failed.shift(); }
          }
          last = s;
          draw();
        })
        .catch(function () { /* keep the last picture; try again next tick */ })
        .then(function () { window.setTimeout(tick, every); });
    }
    draw();
    tick();
  }

  // History: daily processed and failed, as bars.
  function history(box) {
    fetch(box.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var days = data.days, top = 1;
        days.forEach(function (d) { top = Math.max(top, d.processed, d.failed); });
        var area = frame(box, top), slot = area.w / Math.max(days.length, 1), bar = Math.max(1, slot / 2 - 1);
        days.forEach(function (d, i) {
          var x = area.x + i * slot;
          [["processed", d.processed, 0], ["failed", d.failed, bar]].forEach(function (b) {
            var hgt = (b[1] / top) * area.h;
            var r = el("rect", { x: (x + b[2]).toFixed(1), y: (area.y + area.h - hgt).toFixed(1), width: bar.toFixed(1),
                                 height: hgt.toFixed(1), "class": "bar-" + b[0] }, area.svg);
            el("title", {}, r).textContent = d.date + ": " + fmt(b[1]) + " " + b[0];
          });
          if (i === 0 || i === days.length - 1) text(area.svg, x, area.bottom - 4, d.date, i ? "end" : "start");
        });
      });
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-confirm]");
    if (b && !window.confirm(b.getAttribute("data-confirm"))) e.preventDefault();
  });
  document.addEventListener("change", function (e) {
    var name = e.target.getAttribute && e.target.getAttribute("data-select-all");
    if (!name) return;
    e.target.form.querySelectorAll('input[type="checkbox"][name="' + name + '"]').forEach(function (c) {
      c.checked = e.target.checked;
    });
  });
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("realtime");
    if (live) realtime(live);
    var hist = document.getElementById("history");
    if (hist) history(hist);
  });
})();
