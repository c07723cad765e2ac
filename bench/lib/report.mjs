// Turns a bench run's results into the tables printed on stdout and docs/BENCHMARKS.md.
// Everything below NOTES_MARKER in an existing report is hand-written and kept.
import fs from 'node:fs';
import path from 'node:path';

export const NOTES_MARKER = '<!-- Hand-written below this line: bench/run.sh keeps it when it rewrites this file. -->';

const fmt = (x, unit = '') => (x === null || x === undefined ? '–' : `${typeof x === 'number' ? Math.round(x * 100) / 100 : x}${unit}`);
const ms = (x) => (x === null || x === undefined ? '–' : x >= 10000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`);
const pct = (a, b) => (b ? `${((100 * a) / b).toFixed(1)} %` : '–');
const ratio = (a, b) => (a === null || b === null || a === undefined || b === undefined || !b ? '–' : `${(a / b).toFixed(3)}×`);
const mark = (ok) => (ok === null ? '' : ok ? ' ✅' : ' ❌');
const le = (x, limit) => (x === null || x === undefined ? null : x <= limit);

function row(cells) {
  return `| ${cells.join(' | ')} |`;
}

function table(header, rows) {
  return [row(header), row(header.map(() => '---')), ...rows.map(row)].join('\n');
}

/** The main table: one row per figure, median / p95 / max, target beside it. */
export function summaryTable(r) {
  const s = r.scenarios;
  const rows = [];
  const lat = (name, x, target, ok) => rows.push([name, ms(x.p50), ms(x.p95), ms(x.max), `${x.n}`, target, mark(ok)]);
  if (s.webrtc) {
    const w = s.webrtc;
    lat('WebRTC glass-to-glass', w.latencyMs, 'p50 ≤ 8 ms, p95 ≤ 15 ms',
      w.latencyMs.p50 === null ? null : le(w.latencyMs.p50, 8) && le(w.latencyMs.p95, 15));
    rows.push(['WebRTC frames shown / sent', `${w.framesShown} / ${w.framesSent} (${pct(w.framesShown, w.framesSent)})`, '', '',
      `${w.framesDecoded} decoded`, '', '']);
  }
  if (s.webrtc && s.webrtc.cores) {
    const w = s.webrtc;
    rows.push(['busy cores during WebRTC latency: gateway / Chromium / else / machine', `${fmt(w.cores.gateway)} / ${fmt(w.cores.chromium)} / ${fmt(w.otherCores)} / ${fmt(w.machineBusyCores)}`, '', '', '', '', '']);
  }
  if (s.hls) {
    const h = s.hls;
    lat('HLS glass-to-glass (Low-Latency HLS, hls.js)', h.latencyMs, 'p50 ≤ 1.0 s', le(h.latencyMs.p50, 1000));
    rows.push(['HLS frames shown / sent', `${h.framesShown} / ${h.framesSent} (${pct(h.framesShown, h.framesSent)})`, '', '',
      `${h.framesDecoded} decoded`, '', '']);
  }
  if (s.baseline) {
    const b = s.baseline;
    lat('original design (gst-launch + hlssink2 defaults) glass-to-glass', b.latencyMs, '–', null);
    rows.push(['original design frames shown / sent', `${b.framesShown} / ${b.framesSent} (${pct(b.framesShown, b.framesSent)})`, '', '',
      `frozen ${ms(b.frozenMs)}`, '', '']);
    for (const [name, x] of [['livegate WebRTC', s.webrtc], ['livegate HLS', s.hls]]) {
      if (!x) continue;
      rows.push([`${name} ÷ original design`, ratio(x.latencyMs.p50, b.latencyMs.p50), ratio(x.latencyMs.p95, b.latencyMs.p95),
        ratio(x.latencyMs.max, b.latencyMs.max), '', '', '']);
    }
  }
  if (s.ttff) {
    const t = s.ttff;
    lat('time to first frame, WebRTC', t.webrtc.ms, 'p50 ≤ 250 ms, p95 ≤ 350 ms',
      t.webrtc.ms.p50 === null ? null : le(t.webrtc.ms.p50, 250) && le(t.webrtc.ms.p95, 350));
    lat('time to first frame, HLS', t.hls.ms, 'p50 ≤ 500 ms', le(t.hls.ms.p50, 500));
  }
  if (s.encoder) {
    const e = s.encoder;
    rows.push(['encoder cost: gateway CPU, 0 viewers (cores, 1-s samples)', fmt(e.coresPerSecond.p50), fmt(e.coresPerSecond.p95),
      fmt(e.coresPerSecond.max), `${e.coresPerSecond.n} s, mean ${fmt(e.gatewayCores)}`, '–', '']);
    rows.push(['gateway RSS, 0 viewers', fmt(e.rssMb.p50, ' MB'), fmt(e.rssMb.p95, ' MB'), fmt(e.rssMb.max, ' MB'), '', '–', '']);
  }
  const top = Array.isArray(s.fanout) ? s.fanout.filter((x) => !x.error).slice(-1)[0] : null;
  if (top) {
    const at = `at ${top.n} viewers`;
    const big = top.n >= 200;
    rows.push([`${at}: packets lost per light viewer (%)`, fmt(top.viewerLossPct.p50, ' %'), fmt(top.viewerLossPct.p95, ' %'),
      fmt(top.viewerLossPct.max, ' %'), `all: ${fmt(top.viewerLossTotalPct, ' %')}`, '< 0.5 %', big ? mark(top.viewerLossTotalPct < 0.5) : '']);
    rows.push([`${at}: gateway-side drops (% of packets)`, fmt(top.gatewayDroppedPct, ' %'), '', '', `${top.gatewayDroppedPerViewer}/viewer`, '–', '']);
    rows.push([`${at}: gateway CPU (cores, 1-s samples)`, fmt(top.gateway.coresPerSecond.p50), fmt(top.gateway.coresPerSecond.p95),
      fmt(top.gateway.coresPerSecond.max), `mean ${fmt(top.cores.gateway)}`, '≤ 1.2 cores', big ? mark(le(top.cores.gateway, 1.2)) : '']);
    rows.push([`${at}: gateway RSS`, fmt(top.gateway.rssMb.p50, ' MB'), fmt(top.gateway.rssMb.p95, ' MB'), fmt(top.gateway.rssMb.max, ' MB'),
      '', '≤ 150 MB', big ? mark(le(top.gateway.rssMb.max, 150)) : '']);
    lat(`${at}: Chromium glass-to-glass`, top.chromium.latencyMs, 'p95 ≤ 120 ms', big ? le(top.chromium.latencyMs.p95, 120) : null);
  }
  for (const x of Array.isArray(s.loss) ? s.loss : []) {
    const c = x.chromiumStats || {};
    const big = x.lossPct >= 10;
    lat(`${x.lossPct} % UDP loss both ways: Chromium glass-to-glass`, x.latencyMs, big ? '–' : 'p95 ≤ 150 ms', big ? null : le(x.latencyMs.p95, 150));
    const perMinute = c.freezes === undefined ? null : (60 * c.freezes) / x.seconds;
    rows.push([`${x.lossPct} % loss: frames shown / sent, longest stop`, `${x.framesShown} / ${x.framesSent} (${pct(x.framesShown, x.framesSent)})`, '',
      ms(x.longestFreezeMs), `${c.nacks} NACKs, ${c.plis} PLIs, ${c.freezes} freezes (${c.freezesMs} ms) in ${Math.round(x.seconds)} s`,
      big ? '≥ 95 %, no stop > 1 s' : '≤ 2 freezes a minute',
      mark(big ? x.framesShown >= 0.95 * x.framesSent && x.longestFreezeMs <= 1000 : perMinute === null ? null : perMinute <= 2)]);
  }
  if (s.overload && !s.overload.error) {
    const o = s.overload;
    const at = `${o.stalled + o.healthy} viewers, ${o.stalled} stopped`;
    rows.push([`${at}: gateway peak RSS (whole run)`, fmt(o.gatewayPeakRssMb, ' MB'), '', '', `stopped viewers released after ${ms(o.stalledGoneMs)}`,
      '≤ 150 MB', mark(le(o.gatewayPeakRssMb, 150))]);
    rows.push([`${at}: packets lost by the other ${o.healthy - 1} light viewers`, fmt(o.viewerLossTotalPct, ' %'), fmt(o.viewerLossPct.p95, ' %'),
      fmt(o.viewerLossPct.max, ' %'), `${o.connected}/${o.healthy - 1} connected`, '< 0.5 %', mark(o.viewerLossTotalPct < 0.5)]);
    const top = Array.isArray(s.fanout) ? s.fanout.filter((x) => !x.error).slice(-1)[0] : null;
    lat(`${at}: Chromium glass-to-glass`, o.chromium.latencyMs, top ? `unchanged (fan-out N=${top.n}: p95 ${ms(top.chromium.latencyMs.p95)})` : 'unchanged',
      top ? le(o.chromium.latencyMs.p95, top.chromium.latencyMs.p95 * 1.25 + 10) : null);
  }
  if (s.relay && !s.relay.error) {
    const r = s.relay;
    rows.push(['one relay hop: WebRTC glass-to-glass added (relayed − direct, medians of alternating rounds)', ms(r.addedMs), '', '',
      `rounds: ${r.addedPerRoundMs.map((x) => `${x}`).join(', ')} ms; direct ${ms(r.directP50)}, relayed ${ms(r.relayedP50)}`, '≤ 10 ms', mark(le(r.addedMs, 10))]);
    rows.push(['relay CPU: one incoming stream + its HLS, no viewer (cores, 1-s samples)', fmt(r.relayCpu.coresPerSecond.p50),
      fmt(r.relayCpu.coresPerSecond.p95), fmt(r.relayCpu.coresPerSecond.max), `mean ${fmt(r.relayCores)}`, '≤ 0.1 cores', mark(le(r.relayCores, 0.1))]);
  }
  return table(['figure', 'median', 'p95', 'max', 'n / note', 'target', 'met'], rows);
}

export function fanoutTable(steps) {
  const rows = steps.map((x) => {
    if (x.error) return [x.n, 'failed', x.error.split('\n')[0], '', '', '', '', '', ''];
    const c = x.gateway.coresPerSecond;
    const l = x.chromium.latencyMs;
    return [
      x.n,
      `${x.connected}/${x.n}${x.failures.length ? ` (${x.failures.length} failed)` : ''}`,
      `${fmt(x.cores.gateway)} (${fmt(c.p50)} / ${fmt(c.p95)} / ${fmt(c.max)})`,
      `${fmt(x.gateway.rssMb.p50)} / ${fmt(x.gateway.rssMb.max)}`,
      `${fmt(x.viewerLostPerViewer.p50)} / ${fmt(x.viewerLostPerViewer.p95)} / ${fmt(x.viewerLostPerViewer.max)} (${fmt(x.viewerLossTotalPct, ' %')})`,
      `${fmt(x.gatewayDroppedPerViewer)} (${fmt(x.gatewayDroppedPct, ' %')})`,
      `${ms(l.p50)} / ${ms(l.p95)} / ${ms(l.max)}`,
      `${x.chromium.framesShown}/${x.chromium.framesSent}`,
      `${fmt(x.cores.loadgen)} / ${fmt(x.cores.chromium)} / ${fmt(x.otherCores)} / ${fmt(x.machineBusyCores)}`,
    ];
  });
  return table(['N light viewers', 'connected', 'gateway cores: mean (1-s p50 / p95 / max)', 'gateway RSS MB p50 / max',
    'packets lost per light viewer p50 / p95 / max (all %)', 'gateway-side drops per viewer (%)',
    'Chromium latency p50 / p95 / max', 'Chromium frames shown/sent', 'busy cores: load_viewers / Chromium / everything else / whole machine'], rows);
}

/** Where the WebRTC latency scenario's glass-to-glass time goes (bench/lib/hops.mjs). */
export function hopTable(h) {
  const rows = h.hops.map((x) => [x.name, fmt(x.ms.p50, ' ms'), fmt(x.ms.p95, ' ms'), fmt(x.ms.mean, ' ms')]);
  rows.push(['**glass-to-glass** (capture → shown)', fmt(h.total.p50, ' ms'), fmt(h.total.p95, ' ms'), fmt(h.total.mean, ' ms')]);
  return `Where WebRTC glass-to-glass goes, per frame (${h.frames} frames of the WebRTC latency scenario; the gateway's `
    + '`LIVEGATE_HOP_TRACE` log joined with what Chromium said of the frame it showed; capture times are whole ms from the strip, '
    + 'so the first hop carries up to 1 ms of rounding; percentiles are per hop and do not add up; '
    + `${h.mismatched} more frames left out, whose strip was read from a newer frame than the one presented):\n\n`
    + table(['hop', 'p50', 'p95', 'mean'], rows);
}

function ttffTable(t) {
  const rows = ['webrtc', 'hls'].map((m) => {
    const x = t[m];
    return [m === 'webrtc' ? 'WebRTC' : 'HLS', `${x.ms.n}/${x.tries}`, ms(x.ms.min), ms(x.ms.p50), ms(x.ms.p95), ms(x.ms.max),
      ms(x.wallMs.p50), x.failures.length ? x.failures.slice(0, 2).join('; ') : '–'];
  });
  return table(['mode', 'tries ok', 'min', 'p50', 'p95', 'max', 'p50 from the harness clock (before goto)', 'failures'], rows);
}

function hlsJsSettings(root) {
  try {
    const src = fs.readFileSync(path.join(root, 'web/player.js'), 'utf8');
    const m = src.match(/new Hls\(\{([\s\S]*?)\}\);/);
    if (!m) return null;
    return m[1].split('\n').map((l) => l.replace(/\/\/.*$/, '').trim()).filter(Boolean).join(' ');
  } catch (_) {
    return null;
  }
}

export function writeReport(r, { docsPath, jsonPath }) {
  const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
  const s = r.scenarios;
  const parts = [];
  parts.push(summaryTable(r));
  if (s.webrtc && s.webrtc.hops) parts.push(hopTable(s.webrtc.hops));
  if (Array.isArray(s.fanout)) parts.push(`Fan-out (${r.settings.fanoutS} s per step, light viewers bound to ${r.settings.viewerBind}${r.settings.pinned ? '; the light viewers pinned to CPU 1 with taskset' : ''}):\n\n${fanoutTable(s.fanout)}`);
  const cs = (x) => (x ? `jitter buffer ${fmt(x.jitterBufferMs)} ms/frame (target ${fmt(x.jitterBufferTargetMs)}, minimum ${fmt(x.jitterBufferMinimumMs)}), `
    + `first→last packet of a frame ${fmt(x.firstToLastPacketMs)} ms, receive→decoded ${fmt(x.receiveToDecodedMs)} ms (decode ${fmt(x.decodeMs)} ms, ${x.decoder || '?'}), `
    + `${x.framesDecoded} decoded / ${x.framesDropped} dropped, ${x.keyFramesDecoded ?? '?'} keyframes, ${x.packetsLost} packets lost, ${x.nacks} NACKs, ${x.plis} PLIs, ${x.freezes} freezes (${x.freezesMs} ms)` : '–');
  const statLines = [];
  if (s.webrtc && s.webrtc.chromiumStats) statLines.push(`- WebRTC latency scenario: ${cs(s.webrtc.chromiumStats)}`);
  for (const x of Array.isArray(s.loss) ? s.loss : []) if (x.chromiumStats) statLines.push(`- ${x.lossPct} % loss: ${cs(x.chromiumStats)}`);
  for (const x of Array.isArray(s.fanout) ? s.fanout : []) if (x.chromiumStats) statLines.push(`- fan-out N=${x.n}: ${cs(x.chromiumStats)}`);
  if (s.overload && s.overload.chromiumStats) statLines.push(`- overload: ${cs(s.overload.chromiumStats)}`);
  if (statLines.length) parts.push(`Chromium's own inbound-rtp statistics (getStats, means per frame over each window):\n\n${statLines.join('\n')}`);
  if (s.ttff) {
    const steps = (m) => (s.ttff[m].breakdown || []).map((b) => `${b.step} ${b.p50}`).join(' → ');
    parts.push(`Time to first frame (navigation → first frame shown, rVFC), fresh browser context per try:\n\n${ttffTable(s.ttff)}\n\n`
      + `Where it goes (median ms after navigation start of each step, bench/lib/timeline.js):\n\n- WebRTC: ${steps('webrtc')}\n- HLS: ${steps('hls')}`);
  }
  const disturbed = [];
  for (const k of ['encoder', 'webrtc', 'hls', 'baseline']) if (s[k] && s[k].otherCores > 0.3) disturbed.push(`${k} (${s[k].otherCores} cores)`);
  for (const x of Array.isArray(s.fanout) ? s.fanout : []) if (x.otherCores > 0.3) disturbed.push(`fan-out N=${x.n} (${x.otherCores} cores)`);
  parts.push(disturbed.length
    ? `⚠ Other work on the machine (busy time outside the gateway, Chromium, load_viewers, the baseline and the harness) exceeded 0.3 cores during: ${disturbed.join(', ')}; those figures are skewed.`
    : 'No measurement window saw more than 0.3 cores of other work on the machine.');
  const errors = Object.entries(r.errors || {});
  if (errors.length) parts.push(`Failed scenarios:\n\n${errors.map(([k, v]) => `- ${k}: ${v.split('\n')[0]}`).join('\n')}`);
  const stdoutText = parts.join('\n\n');

  let notes = '';
  try {
    const old = fs.readFileSync(docsPath, 'utf8');
    const i = old.indexOf(NOTES_MARKER);
    if (i >= 0) notes = old.slice(i + NOTES_MARKER.length).replace(/^\n+/, '');
  } catch (_) { /* first run */ }

  const e = r.env;
  const st = r.settings;
  const b = s.baseline;
  const doc = `# Benchmarks

Generated by \`bench/run.sh${r.quick ? ' --quick' : ''}\` (\`make bench${r.quick ? ' QUICK=1' : ''}\`); do not edit above the
hand-written section at the end, the next run rewrites it. Raw results of this run:
\`${jsonPath}\` (not committed; \`target/\` is ignored).

| | |
|---|---|
| date | ${e.date} |
| commit | \`${e.commit}\` |
| CPU | ${e.cpuModel}, ${e.cores} cores, ${e.memoryGb} GB RAM, Linux ${e.kernel} |
| software | ${e.gstreamer || 'GStreamer ?'}, Chromium ${e.chromium || '?'} (headless, playwright-core), Node ${e.node} |
| run | ${r.quick ? 'QUICK' : 'full'}, ${r.totalSeconds} s |
| machine before the run | ${e.busyBeforeStart ? `${e.busyBeforeStart.machineBusyCores} of ${e.cores} cores busy, load average ${e.busyBeforeStart.loadavg1}` : '?'} |

## Settings

- Source: livegate's \`test\` stream (\`videotestsrc is-live=true pattern=smpte\`), ${st.width}x${st.height} at ${st.fps} fps, with the
  latency strip ([latency-strip.md](latency-strip.md)) stamped as each frame leaves the source.
- Gateway: \`target/release/livegate ${(st.gatewayArgs || []).filter((a) => !/^\/tmp\//.test(a)).join(' ')}\`: x264 (\`tune=zerolatency
  speed-preset=superfast\`, 2 Mbit/s, keyframe every 30 frames, no B-frames); HLS: the player reads Low-Latency HLS
  (\`ll.m3u8\`: fMP4 parts of ~200 ms, 1-s segments, blocking reloads, PART-HOLD-BACK 0.66 s); everything on 127.0.0.1
  inside \`scripts/netns-run\` (a private network namespace). \`LIVEGATE_HOP_TRACE=1\`: the gateway logs each video frame's
  hops (src/hops.rs), which the WebRTC latency scenario joins with Chromium's per-frame metadata (bench/lib/hops.mjs).
- Viewer: Chromium with the player page (\`/?mode=webrtc\`, \`/?mode=hls\`); latency decoded from every frame it shows by
  \`tests/e2e/lib/probe.js\` (\`requestVideoFrameCallback\`, the strip drawn to a canvas, \`expectedDisplayTime\` on the wall clock).
  Each latency scenario starts ${st.warmupS} s after the page says "playing".
- hls.js settings (web/player.js): \`${hlsJsSettings(root) || '?'}\`
- Durations: WebRTC ${st.webrtcS} s, HLS ${st.hlsS} s, original design ${st.baselineS} s, time to first frame ${st.ttffTries} tries per mode,
  fan-out N = ${st.fanout.join(', ')} with ${st.fanoutS} s per step, encoder cost ${st.encoderS} s.
- Loss (\`loss\`): ${st.lossS} s of WebRTC in Chromium at each loss rate, packets dropped at random by
  \`iptables -A INPUT -p udp -m statistic --mode random --probability P -j DROP\` in the namespace (both directions on loopback:
  media, retransmissions and NACKs alike). A stop is the longest time between two frames shown.
- Overload (\`overload\`): 20 light viewers connect, then 179 more and Chromium; the 20 are stopped with SIGSTOP (their
  sockets fill, they answer nothing) for ${st.overloadS} s while the others are measured. Peak RSS is \`VmHWM\` of the gateway
  at the end, over its whole life (every scenario before included).
- Original design: \`bench/baseline.py\` builds \`videotestsrc is-live=true ! <strip> ! x264enc tune=zerolatency ! hlssink2\`
  with every other property at its default (x264enc: 2048 kbit/s, speed-preset medium, automatic keyframe interval;
  hlssink2: target-duration 15, playlist-length 5, max-files 10); the strip is drawn by a pad probe exactly as
  src/media/strip.rs does. Its files are served over plain HTTP by a static server (\`bench/lib/static-server.mjs\`, playlists
  with \`Cache-Control: no-cache\`) that also serves the unchanged player page from \`web/\` and a one-entry \`/api/streams\`, so
  **the player page itself** (same hls.js, same settings, same watchdog) plays it in \`?mode=hls\`.
- Gateway CPU: utime+stime of the process from \`/proc/<pid>/stat\` over the window ("mean"), and over each second
  (median / p95 / max of those); RSS: \`VmRSS\` from \`/proc/<pid>/status\`, sampled each second.
- Contention: the machine has ${e.cores} cores, shared by the gateway, Chromium (software decoding and compositing) and, in the
  fan-out, \`load_viewers\` (one webrtc-rs peer per light viewer: ICE, DTLS, SRTP decryption, RTCP). Their CPU and the whole
  machine's busy cores are recorded beside each figure; gateway figures under load are therefore measured on a machine
  that is partly busy with the load generator.

## Results

${stdoutText}
${b ? `
Original design details: first playlist ${ms(b.firstPlaylistMs)} after start; segments in the last playlist:
${(b.segmentDurations || []).join(', ')} s (target duration ${b.targetDuration}); the page reconnected ${b.sessionEnds.length} times
during the ${b.seconds} s measured (the player's watchdog restarts after 3 s without a new frame); frozen (no new frame for
more than 200 ms) ${ms(b.frozenMs)} of it, longest freeze ${ms(b.longestFreezeMs)}; pipeline CPU ${fmt(b.cores && b.cores.baseline)} cores.
` : ''}
## How to reproduce

\`\`\`sh
make bench            # cargo build --release --bin livegate --example load_viewers, then bench/run.sh (≈ 10 min)
make bench QUICK=1    # shorter windows, N = 1, 10, 50 (< 3 min); writes target/bench/BENCHMARKS-quick.md instead
bench/run.sh [--quick] [--only=encoder,webrtc,hls,ttff,loss,fanout,overload,baseline]   # without building; --only skips this file
\`\`\`

Needs what \`make test\` needs (Debian's \`chromium\`, Node ≥ 20 with \`tests/e2e\`'s pinned playwright-core, GStreamer with
x264 and hlssink2, \`python3-gi\`), and root or unprivileged user namespaces for \`scripts/netns-run\`.

${NOTES_MARKER}

${notes || `## What limits each figure

(hand-written after a run: what was observed, what was tried)
`}`;
  fs.mkdirSync(path.dirname(docsPath), { recursive: true });
  fs.writeFileSync(docsPath, doc);
  return stdoutText;
}
