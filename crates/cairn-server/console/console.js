// The cairn console: a read-only view of one node, built from the HTTP API the CLI uses.
// Plain script, no build step and no library. Every value that comes from the workspace is
// put on the page as text (text nodes, textContent, attribute values), never parsed as
// markup; the server's Content-Security-Policy (Trusted Types, no inline code) backs that up.
'use strict';

(() => {
  // ---- named limits and intervals ----
  const TOKEN_KEY = 'cairn.console.token';
  const API = '../v1/'; // relative to /ui/, so that a proxy may serve it under a prefix
  const METRICS = '../metrics';
  const POLL_MS = 2000; // status, metrics, and the lists
  const PLOT_WINDOW_MS = 5 * 60 * 1000; // what the plots show
  const LOG_ROWS_MAX = 500; // entries the log panel keeps
  const LOG_BACKLOG = 50; // entries shown from before the page loaded
  const TAIL_RECONNECT_MS = 2000;
  const CHANGES_SHOWN_MAX = 30;
  const PACKAGES_WITH_VARS_MAX = 50; // packages whose vars are read on each poll
  const HOOK_SCAN_LIMIT = 1000; // hook entries read per poll
  const HOOK_RUNS_KEPT_MAX = 2000;
  const CUT_CHARS = 120; // a value longer than this is cut, with a button to see it whole
  const CUT_OUTPUT_CHARS = 400; // the same for hook output

  const $ = (sel) => document.querySelector(sel);
  const SVG = 'http://www.w3.org/2000/svg';

  // ---- building the page from elements and text only ----

  /** An element with `props` (class, attributes, listeners) and children (nodes or text). */
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null) continue;
      e.append(kid instanceof Node ? kid : String(kid)); // a string becomes a text node
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Values expanded with "show all" stay expanded across refreshes.
  const expanded = new Set();

  /** `value` as text, cut after `max` characters with a button that shows it whole. */
  function cut(value, key, max = CUT_CHARS, tag = 'span') {
    const s = String(value);
    if (s.length <= max) return el(tag, { class: 'value' }, s);
    const text = el('span', {}, '');
    const more = el('button', { type: 'button', class: 'more' });
    const show = () => {
      const open = expanded.has(key);
      text.textContent = open ? s : s.slice(0, max) + '…';
      more.textContent = open ? 'show less' : `show all (${s.length} characters)`;
      more.setAttribute('aria-expanded', String(open));
    };
    more.addEventListener('click', () => {
      if (expanded.has(key)) expanded.delete(key);
      else expanded.add(key);
      show();
    });
    show();
    return el(tag, { class: 'value cut' }, text, ' ', more);
  }

  /** Bytes as the API sends them: a string when UTF-8, else `{hex}`. */
  function bytesText(v) {
    if (typeof v === 'string') return v;
    if (v && typeof v.hex === 'string') return `hex ${v.hex}`;
    return JSON.stringify(v);
  }

  function table(headers, rows, empty) {
    if (rows.length === 0) return el('p', { class: 'muted' }, empty);
    return el('table', { class: 'rows' },
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
      el('tbody', {}, rows));
  }

  function badge(text, kind) {
    return el('span', { class: `badge ${kind || ''}` }, text);
  }

  function clock(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return d.toISOString().replace('T', ' ').replace('Z', '');
  }

  function ago(ms) {
    if (!ms) return 'never';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  }

  // ---- the API ----

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(code ? `${code}: ${message}` : message);
      this.status = status;
      this.code = code;
      this.detail = message;
    }
  }

  async function refusal(r) {
    try {
      const body = await r.json();
      if (body && body.error) return new ApiError(r.status, body.error.code, body.error.message);
    } catch (_) { /* not JSON */ }
    return new ApiError(r.status, null, `HTTP ${r.status}`);
  }

  /** GET `url` with the bearer token; JSON (or text) or an ApiError. */
  async function get(url, opts = {}) {
    const r = await fetch(url, {
      headers: { Authorization: `Bearer ${opts.token || token()}` },
      cache: 'no-store',
      signal: opts.signal,
    });
    if (!r.ok) throw await refusal(r);
    return opts.text ? r.text() : r.json();
  }

  // ---- sign-in and sign-out ----

  let session = null; // {abort: AbortController, timer} while signed in

  function refusedWords(e) {
    if (e.status === 401) return `The server refused this token (${e.detail}).`;
    if (e.status === 403) {
      return `This token may not read the workspace (${e.detail}). ` +
        'The console needs a token of role read, write or admin.';
    }
    return `Could not check the token: ${e.message}`;
  }

  async function signIn(ev) {
    ev.preventDefault();
    const form = ev.target;
    const candidate = form.elements.token.value.trim();
    const msg = $('#signin-error');
    if (!candidate) {
      msg.textContent = 'Paste a token first.';
      return;
    }
    msg.textContent = 'Checking the token…';
    try {
      await get(`${API}status`, { token: candidate });
    } catch (e) {
      msg.textContent = refusedWords(e);
      return;
    }
    msg.textContent = '';
    form.reset();
    sessionStorage.setItem(TOKEN_KEY, candidate);
    start();
  }

  /** Back to the sign-in form: the token leaves storage, polling and the stream stop. */
  function signOut(why) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (session) {
      session.abort.abort();
      clearTimeout(session.timer);
      session = null;
    }
    for (const body of document.querySelectorAll('#console .body, #status .facts, #audit-result')) {
      body.replaceChildren();
    }
    $('#log-rows').replaceChildren();
    for (const id of ['#error', '#node', '#refresh', '#audit-state', '#log-state']) $(id).textContent = '';
    logEntries.length = 0;
    paused = false;
    waiting = 0;
    $('#log-pause').textContent = 'Pause';
    samples.length = 0;
    lastCommitted = null;
    hookRuns.clear();
    hookRunCount = 0;
    hookFrom = 1;
    lastRendered.clear();
    $('#console').hidden = true;
    $('#signout').hidden = true;
    $('#signin').hidden = false;
    $('#signin-error').textContent = why || '';
    $('#signin-form').elements.token.focus();
  }

  function start() {
    $('#signin').hidden = true;
    $('#console').hidden = false;
    $('#signout').hidden = false;
    session = { abort: new AbortController(), timer: null };
    const mine = session;
    poll(mine);
    tail(mine);
  }

  // ---- polling ----

  const lastRendered = new Map(); // panel → JSON of the data it shows

  /** Renders `panel` from `data` unless it already shows exactly that. */
  function show(panel, data, render) {
    const json = JSON.stringify(data);
    if (lastRendered.get(panel) === json) return;
    lastRendered.set(panel, json);
    $(`#${panel} ${panel === 'status' ? '.facts' : '.body'}`).replaceChildren(...[render(data)].flat());
  }

  async function poll(mine) {
    if (session !== mine) return;
    try {
      await refresh(mine);
      $('#error').textContent = '';
      $('#refresh').textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (session !== mine || e.name === 'AbortError') return;
      if (e.status === 401 || e.status === 403) {
        signOut(`Signed out: ${refusedWords(e)}`);
        return;
      }
      $('#error').textContent = `Could not refresh: ${e.message}`;
    }
    if (session === mine) mine.timer = setTimeout(() => poll(mine), POLL_MS);
  }

  async function refresh(mine) {
    const signal = mine.abort.signal;
    const [status, metrics] = await Promise.all([
      get(`${API}status`, { signal }),
      get(METRICS, { signal, text: true }),
    ]);
    if (session !== mine) return;
    $('#node').textContent = `${status.role} · workspace ${status.workspace_id} · ${location.host}`;
    show('status', status, renderStatus);
    show('mirrors', status, renderMirrors);
    sample(status, metrics);
    drawPlots();

    const [packages, features, daemons, changes] = await Promise.all([
      get(`${API}packages`, { signal }),
      get(`${API}features`, { signal }),
      get(`${API}daemons`, { signal }),
      get(`${API}changes`, { signal }),
    ]);
    const vars = await Promise.all(packages.slice(0, PACKAGES_WITH_VARS_MAX).map((p) =>
      get(`${API}vars/${encodeURIComponent(p.name)}`, { signal }).catch((e) => {
        if (e.status === 404) return [];
        throw e;
      })));
    await scanHooks(status.applied_offset, signal);
    if (session !== mine) return;
    show('packages', { packages, vars }, renderPackages);
    show('features', features, renderFeatures);
    show('daemons', daemons, renderDaemons);
    show('changes', { changes, hooks: hookRunsOf(changes) }, renderChanges);
  }

  // ---- status and mirrors ----

  function facts(pairs) {
    return pairs.map(([k, v, cls]) => [el('dt', {}, k), el('dd', { class: cls }, v)]).flat();
  }

  function renderStatus(s) {
    const pairs = [
      ['role', s.role],
      ['workspace id', s.workspace_id],
      ['epoch', s.epoch],
      ['applied offset', s.applied_offset],
      ['leader', s.leader === null ? 'this node leads' : s.leader],
      ['writer', s.writer_reason ? `${s.writer}: ${s.writer_reason}` : s.writer,
        s.writer === 'ok' ? '' : 'bad'],
    ];
    if (s.role !== 'leader') pairs.push(['lag (entries)', s.lag]);
    if (s.handoff) pairs.push(['handoff', s.handoff, 'bad']);
    return facts(pairs);
  }

  const FOLLOW_BAD = new Set(['refused', 'diverged', 'stopped']);

  function renderMirrors(s) {
    if (s.role === 'mirror' && s.follow) {
      const f = s.follow;
      const bad = FOLLOW_BAD.has(f.state);
      const pairs = [
        ['this node follows', f.leader],
        ['state', f.state.replace('_', ' '), bad ? 'bad' : 'good'],
      ];
      if (f.state === 'diverged') pairs.push(['diverged at offset', f.offset, 'bad']);
      if (f.code) pairs.push(['refusal', f.code, 'bad']);
      if (f.message) pairs.push(['message', cut(f.message, 'follow-message'), bad ? 'bad' : '']);
      pairs.push(
        ['leader head', f.leader_head],
        ['applied offset', s.applied_offset],
        ['lag (entries)', s.lag],
        ['last contact', `${ago(f.last_contact_ms)} (${clock(f.last_contact_ms)})`],
        ['streams opened', f.connects],
        ['refused frames', f.refused_frames, f.refused_frames > 0 ? 'bad' : ''],
      );
      if (f.last_error) pairs.push(['last error', cut(f.last_error, 'follow-error')]);
      return el('dl', { class: 'facts' }, facts(pairs));
    }
    if (s.role !== 'leader') return el('p', { class: 'muted' }, `This node is ${s.role}; it serves no mirrors.`);
    const rows = (s.mirrors || []).map((m) => el('tr', { 'data-mirror': m.name },
      el('td', {}, m.name),
      el('td', { class: 'num' }, m.applied_offset),
      el('td', { class: `num ${m.lag_entries > 0 ? 'warn' : ''}` }, m.lag_entries),
      el('td', { class: 'num' }, m.lag_ms),
      el('td', {}, m.connected ? badge('connected', 'good') : badge('not connected', 'bad')),
      el('td', {}, `${ago(m.last_contact_ms)} (${clock(m.last_contact_ms)})`)));
    return table(
      ['mirror', 'applied offset', 'lag (entries)', 'lag (ms)', 'stream', 'last contact'],
      rows, 'No mirror has connected to this leader since it started.');
  }

  // ---- plots: lag per mirror and commits per second ----

  const samples = []; // {t, commits, lag: {name: entries}, lagMs: {name: ms}}
  let lastCommitted = null; // {t, entries}

  function parseMetrics(text) {
    const out = [];
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const m = /^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  function sample(status, metricsText) {
    const t = Date.now();
    const metrics = parseMetrics(metricsText);
    const s = { t, commits: null, lag: {}, lagMs: {} };
    for (const m of metrics) {
      if (m.name === 'cairn_mirror_lag_entries') s.lag[m.labels.mirror] = m.value;
      if (m.name === 'cairn_follower_lag_entries') s.lag['this mirror'] = m.value;
      if (m.name === 'cairn_committed_entries_total') {
        if (lastCommitted && t > lastCommitted.t && m.value >= lastCommitted.entries) {
          s.commits = (m.value - lastCommitted.entries) / ((t - lastCommitted.t) / 1000);
        }
        lastCommitted = { t, entries: m.value };
      }
    }
    for (const m of status.mirrors || []) s.lagMs[m.name] = m.lag_ms;
    samples.push(s);
    while (samples.length && samples[0].t < t - PLOT_WINDOW_MS) samples.shift();
  }

  /** Series `{name: [[t, v]...]}` from the samples' field `key`. */
  function seriesOf(key) {
    const out = {};
    for (const s of samples) {
      for (const [name, v] of Object.entries(s[key])) (out[name] = out[name] || []).push([s.t, v]);
    }
    return out;
  }

  function drawPlots() {
    const commits = { 'commits/s': samples.filter((s) => s.commits !== null).map((s) => [s.t, s.commits]) };
    plot($('#plot-lag'), seriesOf('lag'), 'no mirror');
    plot($('#plot-lag-ms'), seriesOf('lagMs'), 'no mirror (lag in ms is known on a leader)');
    plot($('#plot-commits'), commits, 'waiting for a second sample');
  }

  function plot(box, series, empty) {
    const W = 400; const H = 140; const L = 40; const R = 96; const T = 8; const B = 18;
    const now = Date.now(); const t0 = now - PLOT_WINDOW_MS;
    const names = Object.keys(series).filter((n) => series[n].length > 0).sort();
    const max = Math.max(1, ...names.flatMap((n) => series[n].map((p) => p[1])));
    const x = (t) => L + ((t - t0) / PLOT_WINDOW_MS) * (W - L - R);
    const y = (v) => T + (1 - v / max) * (H - T - B);
    const kids = [
      svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
      svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
      svg('text', { class: 'tick', x: L - 4, y: T + 8, 'text-anchor': 'end' }, fmt(max)),
      svg('text', { class: 'tick', x: L - 4, y: H - B, 'text-anchor': 'end' }, '0'),
      svg('text', { class: 'tick', x: L, y: H - 4 }, '−5 min'),
      svg('text', { class: 'tick', x: W - R, y: H - 4, 'text-anchor': 'end' }, 'now'),
    ];
    if (names.length === 0) kids.push(svg('text', { class: 'tick', x: L + 10, y: H / 2 }, empty));
    names.forEach((name, i) => {
      const pts = series[name].map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      const last = series[name][series[name].length - 1][1];
      kids.push(svg('polyline', { class: `series s${i % 6}`, points: pts, 'data-series': name }));
      kids.push(svg('text', { class: `legend s${i % 6}`, x: W - R + 6, y: T + 10 + 14 * i },
        `${name}: ${fmt(last)}`));
    });
    box.replaceChildren(...kids);
  }

  function fmt(v) {
    return v >= 100 ? String(Math.round(v)) : String(Math.round(v * 10) / 10);
  }

  // ---- packages, features, daemons ----

  function renderPackages({ packages, vars }) {
    const rows = packages.map((p, i) => {
      const vs = vars[i];
      const list = vs === undefined ? el('span', { class: 'muted' }, 'not read (too many packages)')
        : vs.length === 0 ? el('span', { class: 'muted' }, 'none')
          : el('ul', { class: 'vars' }, vs.map((v) => el('li', { 'data-var': v.key },
            el('code', {}, v.key), ' = ', cut(bytesText(v.value), `var:${p.name}:${v.key}`),
            v.kept_from ? el('span', { class: 'muted' }, ` (kept from ${v.kept_from})`) : null)));
      return el('tr', { 'data-package': p.name },
        el('td', {}, p.name), el('td', {}, p.version),
        el('td', {}, badge(p.status, p.status === 'installed' ? 'good' : 'warn')),
        el('td', {}, list));
    });
    return table(['package', 'version', 'status', 'vars'], rows, 'No package is installed.');
  }

  const ON = new Set(['enabled', 'always_enabled']);

  function renderFeatures(features) {
    const rows = features.map((f) => {
      const observed = f.observed === null || f.observed === undefined ? null : String(f.observed);
      const drift = observed !== null && ON.has(f.state) !== ON.has(observed);
      return el('tr', { 'data-feature': f.name, class: drift ? 'drift' : '' },
        el('td', {}, f.name), el('td', {}, f.owner ?? '—'), el('td', {}, f.state),
        el('td', {}, observed ?? el('span', { class: 'muted' }, 'not reported')),
        el('td', {}, drift ? badge(`drift: wants ${ON.has(f.state) ? 'on' : 'off'}, observed ${observed}`, 'bad')
          : observed === null ? '' : badge('in step', 'good')),
        el('td', { class: 'num' }, f.revision));
    });
    return table(['feature', 'owner', 'desired', 'observed', 'drift', 'revision'], rows, 'No feature is declared.');
  }

  function renderDaemons(d) {
    const rows = d.daemons.map((x) => el('tr', { 'data-daemon': `${x.package}:${x.name}` },
      el('td', {}, x.package), el('td', {}, x.name), el('td', {}, x.desired),
      el('td', {}, x.observed ?? '—'),
      el('td', {}, badge(x.state, x.state === 'running' ? 'good' : x.state === 'failed' ? 'bad' : '')),
      el('td', { class: 'num' }, x.restarts), el('td', { class: 'num' }, x.pid ?? '—'),
      el('td', {}, x.since_ms ? clock(x.since_ms) : '—'),
      el('td', {}, cut(Array.isArray(x.command) ? x.command.join(' ') : bytesText(x.command),
        `daemon:${x.package}:${x.name}`))));
    return [
      el('p', { class: 'muted' }, d.supervised ? 'Supervised by this node.'
        : 'Not supervised here: the leader runs daemons; pid and start time are known there.'),
      table(['package', 'daemon', 'desired', 'observed', 'state', 'restarts', 'pid', 'since', 'command'],
        rows, 'No daemon is declared.'),
    ];
  }

  // ---- changes, with their tasks and hook runs ----

  // Hook runs found in the log (`hook.finished.v1`, `hook.cancelled.v1`), by "change/task"
  // (task index, or "onload"); read incrementally from `hookFrom`.
  const hookRuns = new Map();
  let hookFrom = 1;
  let hookRunCount = 0;

  async function scanHooks(applied, signal) {
    for (let round = 0; round < 10; round++) {
      const from = hookFrom;
      if (from > applied) return;
      const entries = await get(`${API}log?from=${from}&limit=${HOOK_SCAN_LIMIT}&kind=hook.`, { signal });
      for (const e of entries) addHookRun(e);
      const last = entries.length ? entries[entries.length - 1].offset : 0;
      // Fewer than the limit: the scan reached the end of the log, which was at `applied` or later.
      hookFrom = entries.length < HOOK_SCAN_LIMIT ? Math.max(applied, last) + 1 : last + 1;
      if (entries.length < HOOK_SCAN_LIMIT) return;
    }
  }

  function addHookRun(e) {
    if (e.kind !== 'hook.finished.v1' && e.kind !== 'hook.cancelled.v1') return;
    const ev = e.event;
    // hook.finished: [HookRef, HookResult]; hook.cancelled: HookRef.
    const ref = Array.isArray(ev) ? ev[0] : ev;
    const result = Array.isArray(ev) ? ev[1] : null;
    if (!ref || !ref.change) return;
    const key = `${ref.change}/${ref.task === null || ref.task === undefined ? 'onload' : ref.task}`;
    const run = {
      offset: e.offset, hook: ref.hook, attempt: ref.attempt, cancelled: result === null,
      outcome: result ? result.outcome : 'cancelled', exit: result ? result.exit : null,
      signal: result ? result.signal : null, duration_ms: result ? result.duration_ms : null,
      stdout: result ? result.stdout_tail : '', stderr: result ? result.stderr_tail : '',
      message: result ? result.message : '',
    };
    if (!hookRuns.has(key)) hookRuns.set(key, []);
    hookRuns.get(key).push(run);
    if (++hookRunCount > HOOK_RUNS_KEPT_MAX) {
      const oldest = hookRuns.keys().next().value;
      hookRunCount -= hookRuns.get(oldest).length;
      hookRuns.delete(oldest);
    }
  }

  function hookRunsOf(changes) {
    const out = {};
    for (const c of changes.slice(-CHANGES_SHOWN_MAX)) {
      for (const [key, runs] of hookRuns) if (key.startsWith(`${c.id}/`)) out[key] = runs;
    }
    return out;
  }

  const UNDO = new Set(['undo', 'undoing', 'undone']);

  function statusBadge(status) {
    const kind = status === 'done' ? 'good' : status === 'error' ? 'bad'
      : UNDO.has(status) ? 'undo' : status === 'doing' ? 'warn' : '';
    return badge(UNDO.has(status) ? `↩ ${status}` : status, kind);
  }

  function hookRun(run, task, key) {
    const undo = task && run.hook !== task.name;
    const how = run.cancelled ? 'cancelled'
      : run.outcome === 'succeeded' ? `exit ${run.exit ?? 0}`
        : run.exit !== null && run.exit !== undefined ? `exit ${run.exit}`
          : run.signal ? `killed by signal ${run.signal}` : run.outcome;
    const head = el('div', { class: 'hookhead' },
      undo ? badge('↩ undo', 'undo') : null,
      el('code', {}, run.hook), ` attempt ${run.attempt}: `,
      badge(how, run.outcome === 'succeeded' ? 'good' : 'bad'),
      run.duration_ms !== null ? ` after ${run.duration_ms} ms` : '',
      run.message ? el('span', { class: 'muted' }, ' — ', cut(run.message, `${key}/${run.offset}/m`)) : null);
    const out = [];
    if (run.stdout) out.push(el('div', { class: 'tail' }, el('span', { class: 'muted' }, 'stdout '), cut(run.stdout, `${key}/${run.offset}/o`, CUT_OUTPUT_CHARS, 'pre')));
    if (run.stderr) out.push(el('div', { class: 'tail' }, el('span', { class: 'muted' }, 'stderr '), cut(run.stderr, `${key}/${run.offset}/e`, CUT_OUTPUT_CHARS, 'pre')));
    return el('li', { class: `hookrun ${undo ? 'undo' : ''}`, 'data-hook': run.hook }, head, out);
  }

  function renderChanges({ changes, hooks }) {
    if (changes.length === 0) return el('p', { class: 'muted' }, 'No change yet.');
    const shown = changes.slice(-CHANGES_SHOWN_MAX).reverse();
    const out = shown.map((c) => {
      const tasks = c.tasks.map((t, i) => {
        const key = `${c.id}/${i}`;
        const runs = hooks[key] || [];
        // A note that says how a hook run ended is left out when that run is shown with its output.
        const notes = t.log.filter((n) => {
          const m = /^hook (\S+) attempt (\d+): /.exec(n);
          return !m || !runs.some((r) => r.hook === m[1] && String(r.attempt) === m[2]);
        });
        return el('li', { class: `task ${UNDO.has(t.status) ? 'undo' : ''}`, 'data-task': t.name },
          el('span', { class: 'taskname' }, t.name), ' ', statusBadge(t.status),
          t.attempts ? el('span', { class: 'muted' }, ` ${t.attempts} attempt${t.attempts === 1 ? '' : 's'}`) : null,
          notes.length ? el('ul', { class: 'notes' }, notes.map((n, j) => el('li', {}, cut(n, `${key}/n${j}`)))) : null,
          runs.length ? el('ul', { class: 'hookruns' }, runs.map((r) => hookRun(r, t, key))) : null);
      });
      const onload = hooks[`${c.id}/onload`] || [];
      return el('article', { class: 'change', 'data-change': c.id, 'data-status': c.status },
        el('header', {},
          el('strong', {}, c.kind), ' ', statusBadge(c.status), c.aborted ? badge('aborted', 'bad') : null, ' ',
          cut(c.summary, `${c.id}/summary`),
          el('div', { class: 'muted' }, `${c.id} · by ${c.actor} · started ${clock(c.spawn_ms)} · `,
            c.ready_ms ? `ready ${clock(c.ready_ms)}` : 'in progress')),
        el('ol', { class: 'tasks' }, tasks),
        onload.length ? el('div', { class: 'onload' }, el('span', { class: 'muted' }, 'onload (after the change)'),
          el('ul', { class: 'hookruns' }, onload.map((r) => hookRun(r, null, `${c.id}/onload`)))) : null);
    });
    if (changes.length > shown.length) {
      out.push(el('p', { class: 'muted' }, `${changes.length - shown.length} older changes not shown (cairn change list).`));
    }
    return out;
  }

  // ---- the live log ----

  const logEntries = []; // newest last, at most LOG_ROWS_MAX
  let paused = false;
  let waiting = 0; // entries received while paused

  function logFilter() {
    return $('#log-controls').elements.kind.value.trim();
  }

  function logRow(e) {
    return el('tr', { 'data-offset': e.offset, 'data-kind': e.kind },
      el('td', { class: 'num' }, e.offset), el('td', {}, clock(e.time_ms)),
      el('td', {}, el('code', {}, e.kind)), el('td', {}, e.meta ? e.meta.actor : ''),
      el('td', {}, cut(JSON.stringify(e.event), `log/${e.offset}`)));
  }

  function renderLog() {
    const prefix = logFilter();
    const rows = [];
    for (let i = logEntries.length - 1; i >= 0; i--) {
      if (logEntries[i].kind.startsWith(prefix)) rows.push(logRow(logEntries[i]));
    }
    $('#log-rows').replaceChildren(...rows);
  }

  function addLogEntry(e) {
    $('#log').dataset.lastOffset = String(e.offset); // what the stream has delivered
    logEntries.push(e);
    if (logEntries.length > LOG_ROWS_MAX) logEntries.shift();
    if (paused) {
      waiting += 1;
      logState();
      return;
    }
    if (!e.kind.startsWith(logFilter())) return;
    const rows = $('#log-rows');
    rows.prepend(logRow(e));
    while (rows.children.length > LOG_ROWS_MAX) rows.lastElementChild.remove();
  }

  let streamWords = '';
  function logState(words) {
    if (words !== undefined) streamWords = words;
    $('#log-state').textContent = paused
      ? `paused: ${waiting} new ${waiting === 1 ? 'entry' : 'entries'} waiting · ${streamWords}`
      : streamWords;
  }

  function togglePause() {
    paused = !paused;
    $('#log-pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused) {
      waiting = 0;
      renderLog();
    }
    logState();
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /** Follows `/v1/log/tail` with fetch and a stream reader (EventSource cannot send the
   *  bearer header), from a little before the head; reconnects after the last offset seen. */
  async function tail(mine) {
    const signal = mine.abort.signal;
    let from = null;
    while (session === mine) {
      try {
        if (from === null) {
          const s = await get(`${API}status`, { signal });
          from = Math.max(1, s.applied_offset - LOG_BACKLOG + 1);
        }
        const r = await fetch(`${API}log/tail?from=${from}`, {
          headers: { Authorization: `Bearer ${token()}` }, cache: 'no-store', signal,
        });
        if (!r.ok) throw await refusal(r);
        logState(`live from offset ${from}`);
        $('#log').dataset.stream = 'live';
        const reader = r.body.getReader();
        const text = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += text.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line) continue;
            const e = JSON.parse(line);
            from = e.offset + 1;
            addLogEntry(e);
          }
        }
        logState('the stream ended; reconnecting');
      } catch (e) {
        if (session !== mine || e.name === 'AbortError') return;
        if (e.status === 401 || e.status === 403) {
          signOut(`Signed out: ${refusedWords(e)}`);
          return;
        }
        logState(`the stream failed (${e.message}); reconnecting`);
      }
      $('#log').dataset.stream = 'down';
      await sleep(TAIL_RECONNECT_MS, signal);
    }
  }

  // ---- audit ----

  async function runAudit(ev) {
    ev.preventDefault();
    const form = ev.target;
    const field = form.elements['audit-token'];
    const tok = field.value.trim() || token();
    field.value = ''; // the admin token is used once and kept nowhere
    const state = $('#audit-state');
    const result = $('#audit-result');
    const button = $('#audit-run');
    result.replaceChildren();
    state.className = 'running';
    const started = Date.now();
    const tick = () => { state.textContent = `Running audit verify… ${Math.round((Date.now() - started) / 1000)} s`; };
    tick();
    const timer = setInterval(tick, 500);
    button.disabled = true;
    $('#audit').dataset.audit = 'running';
    try {
      const r = await get(`${API}audit/verify`, { token: tok });
      state.className = 'good';
      state.textContent = `Verified in ${((Date.now() - started) / 1000).toFixed(1)} s: every entry's hash and link ` +
        'checked, the whole log replayed, and the replay\'s state digest matches the projection.';
      result.replaceChildren(...facts([
        ['entries', r.entries], ['head offset', r.head_offset], ['head hash', r.head_hash], ['digest', r.digest],
      ]));
      $('#audit').dataset.audit = 'verified';
    } catch (e) {
      state.className = 'bad';
      state.textContent = e.status === 401 || e.status === 403
        ? `Audit refused: ${refusedWords(e)}` : `Audit FAILED: ${e.message}`;
      $('#audit').dataset.audit = 'failed';
    } finally {
      clearInterval(timer);
      button.disabled = false;
    }
  }

  // ---- wiring ----

  document.addEventListener('DOMContentLoaded', () => {
    $('#signin-form').addEventListener('submit', signIn);
    $('#signout').addEventListener('click', () => signOut('Signed out.'));
    $('#log-pause').addEventListener('click', togglePause);
    $('#log-controls').addEventListener('submit', (ev) => ev.preventDefault());
    $('#log-controls').elements.kind.addEventListener('input', renderLog);
    $('#audit-form').addEventListener('submit', runAudit);
    if (token()) start();
    else $('#signin-form').elements.token.focus();
  });
})();
