// LFM Stream live dashboard: polls /dashboard/data every second and draws SVG line charts (no library, no CDN).
// Each chart's element carries data-points = the number of points it draws (the browser test reads it).
"use strict";
(function () {
  const POLL_MS = 1000;
  const KEEP = 7200;       // points kept per series (two hours of one-second samples)
  const RECENT_S = 600;    // learners shown: those with a record within this many seconds of the newest one
  const MAX_MARKERS = 300; // a series with more points is drawn as a line without markers
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7e8c", "#6e7781"];
  const state = { lastId: null, sources: new Map(), polled: [], error: null, last: null };

  // A service run with RECALL_API_TOKEN answers /dashboard/data only with the token: open the page as
  // /dashboard#token=<token>. The fragment never reaches a server; the token is kept for this tab
  // (sessionStorage) and taken out of the address bar.
  const TOKEN_KEY = "lfm-dashboard-token";
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  window.addEventListener("hashchange", () => location.reload()); // a token pasted onto the open page
  const token = sessionStorage.getItem(TOKEN_KEY);
  const authHeaders = token ? { Authorization: "Bearer " + token } : {};

  // ------------------------------------------------------------------ data
  function push(arr, x) {
    arr.push(x);
    if (arr.length > KEEP) arr.splice(0, arr.length - KEEP);
  }

  function learner(name) {
    let s = state.sources.get(name);
    if (!s) {
      s = { name: name, last: 0, train: [], test: [], progress: [] };
      state.sources.set(name, s);
    }
    return s;
  }

  function take(records) {
    for (const r of records) {
      const s = learner(r.source || "learner");
      s.last = Math.max(s.last, r.time || 0);
      if (r.event === "train" || r.event === "test" || r.event === "progress") push(s[r.event], r);
    }
  }

  function shown() {
    let newest = 0;
    for (const s of state.sources.values()) newest = Math.max(newest, s.last);
    return [...state.sources.values()].filter((s) => s.last >= newest - RECENT_S);
  }

  const isNum = (v) => typeof v === "number" && isFinite(v);
  const pts = (recs, x, y) => recs.filter((r) => isNum(r[x]) && isNum(r[y])).map((r) => [r[x], r[y]]);
  const polled = (f) => state.polled.map((p) => [p.t, f(p)]).filter((p) => isNum(p[1]));

  function perLearner(build) {
    const srcs = shown();
    const out = [];
    for (const s of srcs) {
      const tag = srcs.length > 1 ? " (" + s.name + ")" : "";
      for (const series of build(s)) out.push(Object.assign(series, { name: series.name + tag }));
    }
    return out;
  }

  function hrKey(recs, prefix) {
    for (let i = recs.length - 1; i >= 0; i--) {
      const k = Object.keys(recs[i]).find((key) => key.startsWith(prefix));
      if (k) return k;
    }
    return null;
  }

  // ------------------------------------------------------------------ drawing
  function niceStep(span, n) {
    const raw = span / n;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / p;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  }

  function ticks(a, b, n) {
    const step = niceStep(b - a, n);
    const out = [];
    for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e3) return +(v / 1e3).toPrecision(3) + "k";
    return String(+v.toPrecision(3));
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((x) => String(x).padStart(2, "0")).join(":");
  }

  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  function draw(id, series, opts) {
    opts = opts || {};
    const el = document.getElementById(id);
    const W = 460, H = 200, L = 46, R = 12, T = 10, B = 24;
    const all = series.flatMap((s) => s.pts);
    let body = "";
    if (!all.length) {
      body = '<text class="empty" x="' + W / 2 + '" y="' + H / 2 + '" text-anchor="middle">no data yet</text>';
    } else {
      let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
      let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
      if (opts.zero) y0 = Math.min(0, y0);
      if (x1 === x0) { x0 -= 1; x1 += 1; }
      if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
      const step = niceStep(y1 - y0, 4);  // the y axis runs from a tick to a tick
      y0 = opts.zero && y0 > -0.01 * step ? 0 : Math.floor(y0 / step + 1e-9) * step;  // a -0.0001 stays on 0
      y1 = Math.ceil(y1 / step - 1e-9) * step;
      const yt = ticks(y0, y1, Math.round((y1 - y0) / step));
      const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
      const sy = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
      for (const v of yt) {
        body += '<line class="grid-line" x1="' + L + '" x2="' + (W - R) + '" y1="' + sy(v) + '" y2="' + sy(v) + '"/>';
        body += '<text x="' + (L - 6) + '" y="' + (sy(v) + 4) + '" text-anchor="end">' + fmt(v) + "</text>";
      }
      for (const v of ticks(x0, x1, opts.time ? 4 : 5)) {
        const x = sx(v), anchor = x > W - R - 30 ? "end" : x < L + 30 ? "start" : "middle";  // labels stay inside
        body += '<text x="' + x + '" y="' + (H - 8) + '" text-anchor="' + anchor + '">' + (opts.time ? clock(v) : fmt(v)) + "</text>";
      }
      body += '<line class="axis" x1="' + L + '" x2="' + L + '" y1="' + T + '" y2="' + (H - B) + '"/>';
      body += '<line class="axis" x1="' + L + '" x2="' + (W - R) + '" y1="' + (H - B) + '" y2="' + (H - B) + '"/>';
      series.forEach((s, i) => {
        const c = COLORS[i % COLORS.length];
        if (!s.pts.length) return;
        if (!s.dotsOnly && s.pts.length > 1) {
          body += '<polyline fill="none" stroke="' + c + '" stroke-width="1.6" points="' +
            s.pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ") + '"/>';
        }
        if (s.dotsOnly || s.pts.length <= MAX_MARKERS) {
          const r = s.dotsOnly ? 4 : 2.5;
          for (const p of s.pts) {
            body += '<circle class="pt" cx="' + sx(p[0]).toFixed(1) + '" cy="' + sy(p[1]).toFixed(1) + '" r="' + r + '" ' +
              (s.hollow ? 'fill="#fff" stroke="' + c + '" stroke-width="1.6"' : 'fill="' + c + '"') + "/>";
          }
        }
      });
    }
    const legend = series.map((s, i) => {
      const c = COLORS[i % COLORS.length];
      const last = s.pts.length ? " " + fmt(s.pts[s.pts.length - 1][1]) : "";
      return '<span><i style="' + (s.hollow ? "border:2px solid " + c + ";width:6px;height:6px" : "background:" + c) +
        '"></i>' + esc(s.name) + "<b>" + last + "</b></span>";
    }).join("");
    el.innerHTML = '<svg viewBox="0 0 ' + W + " " + H + '" role="img">' + body + '</svg><div class="legend">' + legend + "</div>";
    el.dataset.points = String(all.length);
  }

  // ------------------------------------------------------------------ the page
  function render() {
    draw("chart-auc", perLearner((s) => [
      { name: "prequential (train window)", pts: pts(s.train, "events", "auc") },
      { name: "test", pts: pts(s.test, "events", "test_auc"), dotsOnly: true },
      { name: "test, warm users", pts: pts(s.test, "events", "warm_auc"), dotsOnly: true, hollow: true },
    ]));
    draw("chart-hr", perLearner((s) => {
      const k = hrKey(s.train, "preq_hr_at_");
      const out = k ? [{ name: "prequential HR@" + k.slice(11), pts: pts(s.train, "events", k) }] : [];
      out.push({ name: "test HR@10", pts: pts(s.test, "events", "hr_at_10"), dotsOnly: true });
      out.push({ name: "test HR@50", pts: pts(s.test, "events", "hr_at_50"), dotsOnly: true, hollow: true });
      return out;
    }), { zero: true });
    draw("chart-rate", perLearner((s) => [{ name: "events/s", pts: pts(s.progress, "time", "rate") }]),
      { time: true, zero: true });
    draw("chart-lag", perLearner((s) => [{ name: "lag", pts: pts(s.progress, "time", "lag") }]), { time: true, zero: true });
    draw("chart-fresh", [
      { name: "freshness lag (s)", pts: polled((p) => p.recall && p.recall.lag_s) },
      // an age read on another thread than the refresh's clock can come out a hair below 0
      { name: "refresh age (s)", pts: polled((p) => p.recall && isNum(p.recall.refresh_age_s) ? Math.max(0, p.recall.refresh_age_s) : null) },
    ], { time: true, zero: true });
    draw("chart-rows", [
      { name: "user", pts: polled((p) => p.ps && p.ps.rows.user) },
      { name: "item", pts: polled((p) => p.ps && p.ps.rows.item) },
    ], { time: true, zero: true });
    draw("chart-mem", [{ name: "used_memory", pts: polled((p) => p.ps && p.ps.memory_bytes / 1e6) }],
      { time: true, zero: true });
    renderStatus();
  }

  function renderStatus() {
    const el = document.getElementById("status");
    const parts = [];
    if (state.last) parts.push("namespace <b>" + esc(state.last.namespace) + "</b>");
    for (const s of shown()) {
      const p = s.progress[s.progress.length - 1];
      if (!p) continue;
      parts.push(esc(s.name) + ": <b>" + esc(p.state) + "</b>, " + fmt(p.events) + " events" +
        (isNum(p.rate) ? ", " + fmt(p.rate) + " ev/s" : "") + (isNum(p.lag) ? ", lag " + fmt(p.lag) : ""));
    }
    const rc = state.last && state.last.recall;
    if (rc) parts.push("served: " + fmt(rc.vectors_loaded || 0) + " vectors" +
      (isNum(rc.lag_s) ? ", " + rc.lag_s.toFixed(2) + " s behind" : ""));
    if (state.error) parts.push('<span class="bad">' + esc(state.error) + "</span>");
    el.innerHTML = parts.join(" &middot; ") || "waiting for data…";
  }

  async function poll() {
    try {
      const url = "/dashboard/data" + (state.lastId ? "?after=" + encodeURIComponent(state.lastId) : "");
      const resp = await fetch(url, { cache: "no-store", headers: authHeaders });
      if (resp.status === 401)
        throw new Error((token ? "wrong token" : "this service needs its token") +
          ": open /dashboard#token=<RECALL_API_TOKEN>");
      const data = await resp.json();
      if (!resp.ok) throw new Error(data.detail || "HTTP " + resp.status);
      take(data.records || []);
      state.lastId = data.last_id || state.lastId;
      push(state.polled, { t: data.time, recall: data.recall, ps: data.ps });
      state.last = data;
      state.error = null;
    } catch (e) {
      state.error = String((e && e.message) || e);
    }
    render();
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
