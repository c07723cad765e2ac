// livegate benchmarks (issue 4): glass-to-glass latency decoded from the latency strip in
// Chromium (requestVideoFrameCallback + canvas, tests/e2e/lib/probe.js), time to first frame,
// fan-out with light WebRTC viewers, encoder cost, and the original design (gst-launch +
// hlssink2 defaults) as the baseline. Run through bench/run.sh, inside scripts/netns-run.
//
//   node bench/bench.mjs [--quick] [--only=encoder,webrtc,hls,ttff,loss,fanout,overload,relay,baseline] [--no-docs]
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Gateway, ROOT } from '../tests/e2e/lib/gateway.mjs';
import { launchBrowser, newContext, pageConsole } from '../tests/e2e/lib/browser.mjs';
import { sleep, waitPlaying } from '../tests/e2e/lib/checks.mjs';
import { withSegmentedLoopback } from '../tests/e2e/lib/network.mjs';
import { CLK_TCK, CORES, cpuTicks, cpuWindow, descendants, memory, round } from './lib/proc.mjs';
import { hopBreakdown, hopRecords } from './lib/hops.mjs';
import { summary } from './lib/stats.mjs';
import { startStaticServer } from './lib/static-server.mjs';
import { writeReport } from './lib/report.mjs';

const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const ONLY = (args.find((a) => a.startsWith('--only=')) || '').slice(7).split(',').filter(Boolean);
const WRITE_DOCS = !args.includes('--no-docs') && !ONLY.length;
const want = (name) => !ONLY.length || ONLY.includes(name);

const FPS = 30;
const WIDTH = 1280;
const HEIGHT = 720;
const SETTINGS = QUICK
  ? { encoderS: 5, webrtcS: 15, hlsS: 15, warmupS: 2, ttffTries: 5, fanout: [1, 10, 50], fanoutS: 7, overloadS: 10, lossS: 15, baselineS: 25, relayRounds: 2, relayS: 10 }
  : { encoderS: 20, webrtcS: 60, hlsS: 60, warmupS: 2, ttffTries: 20, fanout: [1, 10, 50, 100, 200], fanoutS: 20, overloadS: 20, lossS: 60, baselineS: 90, relayRounds: 4, relayS: 20 };
// The load generator on CPU 1 only, so that it cannot take the gateway's CPU time from it
// (LIVEGATE_BENCH_PIN=0 lets it use every CPU).
const PINNED = os.cpus().length >= 2 && process.env.LIVEGATE_BENCH_PIN !== '0';
const LOAD_VIEWERS = path.resolve(ROOT, process.env.LIVEGATE_LOAD_VIEWERS || 'target/release/examples/load_viewers');
const BASELINE_PY = path.join(ROOT, 'bench/baseline.py');
const OUT = path.join(ROOT, 'target/bench');
const VIEWER_BIND = '127.0.0.1';

const started = new Date();
const log = (...a) => console.log(`[bench ${((Date.now() - started.getTime()) / 1000).toFixed(0).padStart(4)} s]`, ...a);

// ------------------------------------------------------------------ helpers

const TIMELINE = fs.readFileSync(new URL('./lib/timeline.js', import.meta.url), 'utf8');

/** Chromium's own view of the received video (inbound-rtp stats of the page's last PeerConnection). */
async function inboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.__bench && window.__bench.pcs[window.__bench.pcs.length - 1];
    if (!pc) return null;
    for (const r of (await pc.getStats()).values()) {
      if (r.type === 'inbound-rtp' && r.kind === 'video') {
        const keys = ['jitterBufferDelay', 'jitterBufferEmittedCount', 'jitterBufferTargetDelay', 'jitterBufferMinimumDelay',
          'totalDecodeTime', 'framesDecoded', 'totalProcessingDelay', 'totalAssemblyTime', 'framesAssembledFromMultiplePackets',
          'framesReceived', 'framesDropped', 'packetsReceived', 'packetsLost', 'freezeCount', 'totalFreezesDuration', 'nackCount', 'pliCount',
          'keyFramesDecoded'];
        const out = { decoderImplementation: r.decoderImplementation };
        for (const k of keys) out[k] = r[k];
        return out;
      }
    }
    return null;
  });
}

/** Per-frame means over a window from two inboundStats() readings, in ms. */
function statsDelta(a, b) {
  if (!a || !b) return null;
  const d = (k) => (b[k] ?? 0) - (a[k] ?? 0);
  const per = (k, n) => (d(n) > 0 ? round((1000 * d(k)) / d(n), 1) : null);
  return {
    decoder: b.decoderImplementation,
    jitterBufferMs: per('jitterBufferDelay', 'jitterBufferEmittedCount'),
    jitterBufferTargetMs: per('jitterBufferTargetDelay', 'jitterBufferEmittedCount'),
    jitterBufferMinimumMs: per('jitterBufferMinimumDelay', 'jitterBufferEmittedCount'),
    decodeMs: per('totalDecodeTime', 'framesDecoded'),
    receiveToDecodedMs: per('totalProcessingDelay', 'framesDecoded'),
    firstToLastPacketMs: per('totalAssemblyTime', 'framesAssembledFromMultiplePackets'),
    framesReceived: d('framesReceived'), framesDecoded: d('framesDecoded'), framesDropped: d('framesDropped'),
    packetsReceived: d('packetsReceived'), packetsLost: d('packetsLost'), nacks: d('nackCount'), plis: d('pliCount'),
    keyFramesDecoded: d('keyFramesDecoded'),
    freezes: d('freezeCount'), freezesMs: round(1000 * d('totalFreezesDuration'), 0),
  };
}

/** Chromium's processes: descendants of this node process whose name says so. */
function chromiumPids() {
  return descendants(process.pid).filter((pid) => {
    try { return /chrom/i.test(fs.readFileSync(`/proc/${pid}/comm`, 'utf8')); } catch (_) { return false; }
  });
}

/**
 * Per-second samples of one process's CPU (cores) and RSS while running; stop() summarises.
 */
function sampler(pid) {
  const perSecond = [];
  const rss = [];
  let last = { t: process.hrtime.bigint(), ticks: cpuTicks(pid) };
  const timer = setInterval(() => {
    const now = { t: process.hrtime.bigint(), ticks: cpuTicks(pid) };
    if (now.ticks !== null && last.ticks !== null) {
      const s = Number(now.t - last.t) / 1e9;
      perSecond.push(round((now.ticks - last.ticks) / CLK_TCK / s, 3));
    }
    last = now;
    const m = memory(pid);
    if (m.rssMb !== null) rss.push(round(m.rssMb, 1));
  }, 1000);
  return {
    stop() {
      clearInterval(timer);
      const m = memory(pid);
      return { coresPerSecond: summary(perSecond), rssMb: summary(rss), rssEndMb: round(m.rssMb, 1), hwmMb: round(m.hwmMb, 1) };
    },
  };
}

/** The probe's new samples since `lastT`, and its counters. */
async function readProbe(page, lastT) {
  return page.evaluate((t) => {
    const p = window.__e2e;
    return {
      frames: p.frames,
      decoded: p.decoded,
      now: performance.now(),
      samples: p.samples.filter((s) => s.t > t).map(({ t, latency, value, received, decoded, presented }) => ({ t, latency, value, received, decoded, presented })),
    };
  }, lastT);
}

/**
 * Records what the page shows for `seconds`: every latency sample (polled every 2 s from the
 * probe's ring of 600 frames), frames presented (rVFC), distinct capture times, freezes.
 * `onSample` gets each sample ({t, value, latency}).
 */
async function measurePage(page, seconds, onSample) {
  const first = await readProbe(page, Infinity);
  const t0 = first.now;
  let lastT = t0;
  const samples = [];
  const end = Date.now() + seconds * 1000;
  let r = first;
  while (Date.now() < end) {
    await sleep(Math.min(2000, Math.max(0, end - Date.now())));
    r = await readProbe(page, lastT);
    for (const s of r.samples) samples.push(s);
    if (onSample) r.samples.forEach(onSample);
    if (r.samples.length) lastT = r.samples[r.samples.length - 1].t;
  }
  const dur = (r.now - t0) / 1000;
  const lat = samples.map((s) => s.latency).filter((x) => x !== null);
  const distinct = new Set(samples.map((s) => s.value).filter((v) => v !== null)).size;
  // Freezes: the picture did not change for more than 200 ms (6 frame times).
  let frozenMs = 0;
  let longestFreezeMs = 0;
  let prev = t0;
  for (const s of samples.concat([{ t: r.now }])) {
    const gap = s.t - prev;
    if (gap > 200) frozenMs += gap;
    longestFreezeMs = Math.max(longestFreezeMs, gap);
    prev = s.t;
  }
  return {
    seconds: round(dur, 2),
    latencyMs: summary(lat),
    framesShown: r.frames - first.frames,
    framesDecoded: lat.length,
    distinctFramesShown: distinct,
    framesSent: Math.round(dur * FPS),
    frozenMs: Math.round(frozenMs),
    longestFreezeMs: Math.round(longestFreezeMs),
    latencies: lat,
  };
}

async function streamTotals(gw) {
  const s = (await gw.streams()).find((x) => x.name === 'live');
  return { viewers: s.viewers, packetsSent: s.packets_sent, packetsDropped: s.packets_dropped };
}

async function waitViewerCount(gw, n, timeoutMs) {
  const t0 = Date.now();
  for (;;) {
    const { viewers } = await streamTotals(gw);
    if (viewers === n) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`gateway has ${viewers} viewers, want ${n} within ${timeoutMs} ms`);
    await sleep(250);
  }
}

/** Opens the player in `mode` in a fresh context and waits until it plays. */
async function openPlayer(browser, origin, mode, timeoutMs) {
  const { context } = await newContext(browser, origin, { initScripts: [TIMELINE] });
  const page = await context.newPage();
  const t0 = Date.now();
  await page.goto(`${origin}/?mode=${mode.toLowerCase()}`);
  await waitPlaying(page, mode === 'webrtc' ? 'WebRTC' : 'HLS', t0 + timeoutMs, t0);
  return { context, page };
}

function sessionEnds(page) {
  return pageConsole(page).filter((l) => /session \d+ ended/.test(l));
}

// ---------------------------------------------------------------- scenarios

async function encoderCost(gw) {
  await waitViewerCount(gw, 0, 30000);
  await sleep(2000);
  const win = cpuWindow(() => ({ gateway: [gw.proc.pid], harness: [process.pid] }));
  const smp = sampler(gw.proc.pid);
  await sleep(SETTINGS.encoderS * 1000);
  const cpu = win.stop();
  return { ...cpu, gatewayCores: cpu.cores.gateway, ...smp.stop() };
}

async function latencyScenario(browser, gw, mode, seconds) {
  const { context, page } = await openPlayer(browser, gw.origin, mode, mode === 'webrtc' ? 15000 : 30000);
  try {
    await sleep(SETTINGS.warmupS * 1000);
    const s0 = await streamTotals(gw);
    const win = cpuWindow(() => ({ gateway: [gw.proc.pid], chromium: chromiumPids(), harness: [process.pid] }));
    const smp = sampler(gw.proc.pid);
    const st0 = await inboundStats(page);
    const shown = [];
    const m = await measurePage(page, seconds, (s) => shown.push(s));
    const st1 = await inboundStats(page);
    const cpu = win.stop();
    const s1 = await streamTotals(gw);
    const hops = mode === 'webrtc' && hopRecords(gw.logLines).length ? hopBreakdown(hopRecords(gw.logLines), shown) : null;
    return {
      mode, ...m, ...cpu, gateway: smp.stop(), chromiumStats: statsDelta(st0, st1), hops,
      packetsSent: s1.packetsSent - s0.packetsSent, packetsDropped: s1.packetsDropped - s0.packetsDropped,
      sessionEnds: sessionEnds(page),
    };
  } finally {
    await context.close();
  }
}

/**
 * What one relay hop adds (issue 12): a second livegate takes the stream over WHEP and Chromium
 * watches it, in rounds alternating with watching the origin directly; and what the relay costs
 * for the one incoming stream and its HLS, with no viewer of its own.
 */
async function relayHop(browser, gw) {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'livegate-relay-'));
  const relay = new Gateway({
    name: 'relay', stateDir, logDir: path.join(OUT, 'logs'), webrtcBind: '127.0.0.1', webrtcPort: 20001,
    streams: [`live=whep+insecure:${gw.origin}/whep/live`],
  });
  try {
    await relay.start({ timeoutMs: 30000 });
    await waitViewerCount(gw, 1, 15000);
    await sleep(3000);
    const win = cpuWindow(() => ({ relay: [relay.proc.pid], origin: [gw.proc.pid] }));
    const smp = sampler(relay.proc.pid);
    await sleep(SETTINGS.encoderS * 1000);
    const cpu = win.stop();
    const relayCpu = smp.stop();
    const direct = [];
    const relayed = [];
    for (let i = 0; i < SETTINGS.relayRounds; i++) {
      direct.push((await latencyScenario(browser, gw, 'webrtc', SETTINGS.relayS)).latencyMs);
      relayed.push((await latencyScenario(browser, relay, 'webrtc', SETTINGS.relayS)).latencyMs);
    }
    const medianOf = (xs) => summary(xs.map((x) => x.p50)).p50;
    return {
      rounds: SETTINGS.relayRounds, seconds: SETTINGS.relayS, direct, relayed,
      directP50: medianOf(direct), relayedP50: medianOf(relayed),
      addedMs: round(medianOf(relayed) - medianOf(direct), 1),
      addedPerRoundMs: relayed.map((r, i) => round(r.p50 - direct[i].p50, 1)),
      relayCores: cpu.cores.relay, relayCpu, machineBusyCores: cpu.machineBusyCores,
    };
  } finally {
    await relay.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

async function timeToFirstFrame(browser, origin, mode, tries) {
  const out = [];
  const failures = [];
  for (let i = 0; i < tries; i++) {
    const { context } = await newContext(browser, origin, { initScripts: [TIMELINE] });
    try {
      const page = await context.newPage();
      const wall0 = Date.now();
      await page.goto(`${origin}/?mode=${mode}`, { waitUntil: 'commit' });
      await page.waitForFunction(() => window.__e2e && window.__e2e.samples.length > 0, null, { timeout: 20000, polling: 20 });
      // rVFC's `now` is on the page's clock, whose origin is the start of the navigation.
      const r = await page.evaluate(() => {
        const res = performance.getEntriesByType('resource');
        const at = (re) => res.find((e) => re.test(e.name));
        const ends = { api_streams_loaded: at(/\/api\/streams/), api_config_loaded: at(/\/api\/config/), whep_answer_loaded: at(/\/whep\//), playlist_loaded: at(/\.m3u8/), first_segment_loaded: at(/\.ts(\?|$)/) };
        const marks = { ...window.__bench.marks };
        for (const [k, e] of Object.entries(ends)) if (e) marks[k] = Math.round(e.responseEnd);
        // When the offer left, and when the server began its answer: the gateway's own share.
        const whep = at(/\/whep\//);
        if (whep) Object.assign(marks, { whep_posted: Math.round(whep.startTime), whep_answer_started: Math.round(whep.responseStart) });
        // hls.js: its script, the init segment and the first part, asked for and received.
        for (const [name, re] of [['hlsjs', /hls\.min\.js/], ['init', /ll-init-/], ['first_part', /ll-\d+\.\d+\.m4s/]]) {
          const e = at(re);
          if (e) Object.assign(marks, { [`${name}_requested`]: Math.round(e.startTime), [`${name}_loaded`]: Math.round(e.responseEnd) });
        }
        const nav = performance.getEntriesByType('navigation')[0];
        if (nav) marks.document_loaded = Math.round(nav.responseEnd);
        return { first: window.__e2e.samples[0].t, origin: performance.timeOrigin, marks };
      });
      out.push({ ms: Math.round(r.first), wallMs: Math.round(r.origin + r.first - wall0), marks: { ...r.marks, first_frame: Math.round(r.first) } });
    } catch (e) {
      failures.push(String(e.message || e).split('\n')[0]);
    } finally {
      await context.close();
    }
    await sleep(300);
  }
  // Median time of each step, in the order they happen.
  const steps = {};
  for (const x of out) for (const [k, v] of Object.entries(x.marks)) (steps[k] = steps[k] || []).push(v);
  const breakdown = Object.entries(steps).map(([k, v]) => [k, summary(v).p50, v.length])
    .sort((a, b) => a[1] - b[1]).map(([step, p50, n]) => ({ step, p50, n }));
  return { mode, tries, ms: summary(out.map((x) => x.ms)), wallMs: summary(out.map((x) => x.wallMs)), breakdown, samples: out, failures };
}

function runLoadViewers(origin, n, seconds) {
  const args = [LOAD_VIEWERS, origin, 'live', String(n), String(seconds), VIEWER_BIND];
  const proc = PINNED ? spawn('taskset', ['-c', '1', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(args[0], args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => { stdout += d; });
  proc.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise((resolve) => proc.once('exit', (code) => {
    let json = null;
    try { json = JSON.parse(stdout.trim().split('\n').pop()); } catch (_) { /* reported below */ }
    resolve({ code, json, stderr: stderr.slice(-2000) });
  }));
  return { proc, done };
}

/**
 * Measures `measureS` seconds of the gateway serving the Chromium `page` and the light viewers
 * of `lv` (runLoadViewers): CPU, memory, the light viewers' loss and Chromium's latency.
 */
async function measureLoad(gw, page, lv, measureS) {
  const s0 = await streamTotals(gw);
  const win = cpuWindow(() => ({ gateway: [gw.proc.pid], loadgen: [lv.proc.pid], chromium: chromiumPids(), harness: [process.pid] }));
  const smp = sampler(gw.proc.pid);
  const st0 = await inboundStats(page);
  const m = await measurePage(page, measureS);
  const st1 = await inboundStats(page);
  const cpu = win.stop();
  const gwStats = smp.stop();
  const s1 = await streamTotals(gw);
  const res = await lv.done;
  const viewers = (res.json && res.json.viewers) || [];
  const lost = viewers.map((v) => v.lost);
  const received = viewers.reduce((a, v) => a + v.packets, 0);
  const lostTotal = lost.reduce((a, b) => a + b, 0);
  const sent = s1.packetsSent - s0.packetsSent;
  const dropped = s1.packetsDropped - s0.packetsDropped;
  return {
    connected: viewers.filter((v) => v.connected).length,
    connectMs: summary(viewers.map((v) => v.connect_ms)),
    failures: (res.json && res.json.failures) || [`load_viewers exited ${res.code}: ${res.stderr}`],
    viewerFps: summary(viewers.map((v) => round(v.fps, 1))),
    viewerLostPerViewer: summary(lost),
    viewerLossPct: summary(viewers.map((v) => round(v.loss_ratio * 100, 3))),
    viewerLossTotalPct: round((100 * lostTotal) / Math.max(1, received + lostTotal), 3),
    loadViewersSeconds: res.json && round(res.json.seconds, 2),
    gatewayPacketsSent: sent,
    gatewayPacketsDropped: dropped,
    gatewayDroppedPct: round((100 * dropped) / Math.max(1, sent + dropped), 3),
    ...cpu,
    gateway: gwStats,
    chromium: m,
    chromiumStats: statsDelta(st0, st1),
  };
}

/** Stops a load generator that is still running, and returns what it said. */
async function stopLoadViewers(lv) {
  if (lv.proc.exitCode === null) {
    lv.proc.kill('SIGKILL');
  }
  return lv.done;
}

async function fanout(browser, gw) {
  const { context, page } = await openPlayer(browser, gw.origin, 'webrtc', 15000);
  const steps = [];
  try {
    for (const n of SETTINGS.fanout) {
      log(`fan-out: ${n} light viewers + 1 Chromium`);
      let lv = null;
      try {
        await waitViewerCount(gw, 1, 60000); // the previous step's viewers are gone
        lv = runLoadViewers(gw.origin, n, SETTINGS.fanoutS + 3);
        const connectMs = await waitViewerCount(gw, n + 1, 120000);
        await sleep(1000);
        const st = { n, connectAllMs: connectMs, ...(await measureLoad(gw, page, lv, SETTINGS.fanoutS)) };
        st.gatewayDroppedPerViewer = round(st.gatewayPacketsDropped / (n + 1), 1);
        steps.push(st);
        log(`  N=${n}: gateway ${st.cores.gateway} cores, RSS ${st.gateway.rssEndMb} MB, viewer loss ${st.viewerLossTotalPct} %, `
          + `gateway dropped ${st.gatewayDroppedPct} %, Chromium p50 ${st.chromium.latencyMs.p50} ms p95 ${st.chromium.latencyMs.p95} ms`);
      } catch (e) {
        // Don't let a stuck load generator run into the next step: stop it, keep what it said.
        steps.push({ n, error: String(e.stack || e), loadViewers: lv && await stopLoadViewers(lv) });
        log(`  N=${n} failed: ${e.message}`);
      }
    }
  } finally {
    await context.close();
  }
  return steps;
}

/**
 * Issue 8 § 4: 200 viewers of which 20 stop reading (their process is stopped with SIGSTOP, so
 * their sockets fill and they answer no ICE checks). The gateway's memory must stay bounded and
 * the other 180 (179 light viewers and Chromium) must not notice.
 */
async function overload(browser, gw) {
  const STALLED = 20;
  const HEALTHY = 179;
  const { context, page } = await openPlayer(browser, gw.origin, 'webrtc', 15000);
  let stalled = null;
  let healthy = null;
  try {
    await waitViewerCount(gw, 1, 60000);
    stalled = runLoadViewers(gw.origin, STALLED, SETTINGS.overloadS + 30);
    await waitViewerCount(gw, 1 + STALLED, 60000);
    healthy = runLoadViewers(gw.origin, HEALTHY, SETTINGS.overloadS + 3);
    await waitViewerCount(gw, 1 + STALLED + HEALTHY, 120000);
    await sleep(1000);
    stalled.proc.kill('SIGSTOP');
    const stoppedAt = Date.now();
    log(`overload: ${STALLED} of ${1 + STALLED + HEALTHY} viewers stopped`);
    // How long the gateway keeps serving the stalled viewers before ICE consent lets them go.
    let stalledGoneMs = null;
    const watch = (async () => {
      while (Date.now() - stoppedAt < (SETTINGS.overloadS + 5) * 1000) {
        if ((await streamTotals(gw)).viewers <= 1 + HEALTHY) { stalledGoneMs = Date.now() - stoppedAt; return; }
        await sleep(250);
      }
    })();
    const figures = await measureLoad(gw, page, healthy, SETTINGS.overloadS);
    await watch;
    // The peak over the gateway's whole life, every earlier scenario included.
    const out = { stalled: STALLED, healthy: HEALTHY + 1, stalledGoneMs, gatewayPeakRssMb: round(memory(gw.proc.pid).hwmMb, 1), ...figures };
    log(`  overload: peak RSS ${out.gatewayPeakRssMb} MB, stalled viewers released after ${stalledGoneMs} ms, `
      + `healthy loss ${out.viewerLossTotalPct} %, Chromium p50 ${out.chromium.latencyMs.p50} ms p95 ${out.chromium.latencyMs.p95} ms`);
    return out;
  } finally {
    if (stalled) await stopLoadViewers(stalled);
    if (healthy) await stopLoadViewers(healthy);
    await context.close();
  }
}

/**
 * Issue 8 § 3: one Chromium viewer while `probability` of the namespace's UDP packets are
 * dropped at random, both ways (iptables statistic match; this kernel has no netem).
 */
async function lossy(browser, gw) {
  return withSegmentedLoopback(() => lossyNow(browser, gw));
}

async function lossyNow(browser, gw) {
  const out = [];
  for (const probability of [0.02, 0.1]) {
    const rule = ['INPUT', '-p', 'udp', '-m', 'statistic', '--mode', 'random', '--probability', String(probability), '-j', 'DROP'];
    const { context, page } = await openPlayer(browser, gw.origin, 'webrtc', 15000);
    try {
      await sleep(SETTINGS.warmupS * 1000);
      execFileSync('iptables', ['-A', ...rule]);
      // Seeing loss, the player moves to a connection told the round-trip time (about 4 s):
      // measure the one it keeps, as tests/e2e does.
      const upgradeFrom = Date.now();
      await page.waitForFunction(() => window.livegate.measuresRtt && window.livegate.state === 'playing', null,
        { timeout: 20000, polling: 200 }).catch(() => {});
      const upgradedMs = Date.now() - upgradeFrom;
      await sleep(1000);
      const st0 = await inboundStats(page);
      const m = await measurePage(page, SETTINGS.lossS);
      const st1 = await inboundStats(page);
      delete m.latencies;
      const chromiumStats = statsDelta(st0, st1);
      out.push({ lossPct: probability * 100, upgradedMs, ...m, chromiumStats });
      log(`  ${probability * 100} % loss: ${m.framesShown}/${m.framesSent} frames, longest stop ${m.longestFreezeMs} ms, `
        + `p50 ${m.latencyMs.p50} ms p95 ${m.latencyMs.p95} ms, ${chromiumStats ? chromiumStats.freezes : '?'} freezes`);
    } finally {
      execFileSync('iptables', ['-D', ...rule]);
      await context.close();
    }
  }
  return out;
}

async function baseline(browser) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livegate-baseline-'));
  const logPath = path.join(OUT, 'logs', 'baseline.log');
  fs.mkdirSync(path.dirname(logPath), { recursive: true });
  const logFile = fs.openSync(logPath, 'w');
  const t0 = Date.now();
  const proc = spawn('/usr/bin/python3', [BASELINE_PY, dir, String(WIDTH), String(HEIGHT), String(FPS)], { stdio: ['ignore', logFile, logFile] });
  const exited = new Promise((r) => proc.once('exit', r));
  const server = await startStaticServer({ webDir: path.join(ROOT, 'web'), hlsDir: dir, width: WIDTH, height: HEIGHT, fps: FPS });
  let context;
  try {
    const playlist = path.join(dir, 'index.m3u8');
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`baseline pipeline exited ${proc.exitCode}; log: ${logPath}`);
      try { if (/#EXTINF/.test(fs.readFileSync(playlist, 'utf8'))) break; } catch (_) { /* not yet */ }
      if (Date.now() - t0 > 60000) throw new Error(`no baseline playlist within 60 s; log: ${logPath}`);
      await sleep(100);
    }
    const firstPlaylistMs = Date.now() - t0;
    log(`baseline: first playlist after ${firstPlaylistMs} ms; playing it`);
    ({ context } = await newContext(browser, server.origin));
    const page = await context.newPage();
    const n0 = Date.now();
    await page.goto(`${server.origin}/?mode=hls`);
    await waitPlaying(page, 'HLS', n0 + 40000, n0);
    const firstFrameMs = await page.evaluate(() => Math.round(window.__e2e.samples[0].t));
    const win = cpuWindow(() => ({ baseline: [proc.pid], chromium: chromiumPids(), harness: [process.pid] }));
    const smp = sampler(proc.pid);
    const m = await measurePage(page, SETTINGS.baselineS);
    const cpu = win.stop();
    const playlistText = fs.readFileSync(playlist, 'utf8');
    return {
      firstPlaylistMs, firstFrameMs, ...m, ...cpu, pipeline: smp.stop(), sessionEnds: sessionEnds(page),
      segmentDurations: [...playlistText.matchAll(/#EXTINF:([\d.]+)/g)].map((x) => round(Number(x[1]), 2)),
      targetDuration: Number((playlistText.match(/#EXT-X-TARGETDURATION:(\d+)/) || [])[1]),
    };
  } finally {
    if (context) await context.close();
    await server.close();
    proc.kill('SIGINT');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
    fs.closeSync(logFile);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------- main

function environment() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = (cpuinfo.match(/^model name\s*:\s*(.*)$/m) || [])[1] || 'unknown';
  const sh = (cmd, a) => { try { return execFileSync(cmd, a, { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch (_) { return null; } };
  const dirty = sh('git', ['status', '--porcelain', '--untracked-files=no']);
  return {
    date: started.toISOString(),
    commit: `${sh('git', ['rev-parse', '--short', 'HEAD'])}${dirty ? ' (with uncommitted changes)' : ''}`,
    cpuModel: model.trim(),
    cores: CORES,
    memoryGb: round(os.totalmem() / 2 ** 30, 1),
    kernel: os.release(),
    gstreamer: sh('gst-launch-1.0', ['--version'])?.split('\n').find((l) => /GStreamer/.test(l)) || null,
    node: process.version,
  };
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  for (const bin of [LOAD_VIEWERS, path.resolve(ROOT, process.env.LIVEGATE_BIN || 'target/release/livegate')]) {
    if (!fs.existsSync(bin)) throw new Error(`${bin} missing: cargo build --release --bin livegate --example load_viewers`);
  }
  const results = { quick: QUICK, settings: { ...SETTINGS, fps: FPS, width: WIDTH, height: HEIGHT, viewerBind: VIEWER_BIND, pinned: PINNED }, env: environment(), scenarios: {}, errors: {} };
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'livegate-bench-'));
  // Each frame's hops through the gateway, logged for the WebRTC latency scenario's breakdown.
  process.env.LIVEGATE_HOP_TRACE = '1';
  const gw = new Gateway({
    name: 'bench', stateDir, logDir: path.join(OUT, 'logs'), webrtcBind: '127.0.0.1', webrtcPort: 20000 /* below the kernel's ephemeral ports, which the light viewers use */,
    streams: ['live=test'],
    // The light viewers all come from one address: lift the per-client limits meant for abuse.
    extraArgs: ['--max-viewers', '300', '--width', String(WIDTH), '--height', String(HEIGHT), '--fps', String(FPS),
      '--max-pending-per-ip', '1000', '--signalling-rate', '1000'],
  });
  results.settings.gatewayArgs = gw.args();
  const scenario = async (name, fn) => {
    if (!want(name)) return;
    const t0 = Date.now();
    log(`${name}…`);
    try {
      results.scenarios[name] = await fn();
    } catch (e) {
      results.errors[name] = String(e.stack || e);
      log(`${name} FAILED: ${e.message}`);
    }
    log(`${name} done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  };
  // How busy the machine is before we start: other work skews every CPU and latency figure.
  const idle = cpuWindow({});
  await sleep(3000);
  results.env.busyBeforeStart = idle.stop();
  log(`machine before start: ${results.env.busyBeforeStart.machineBusyCores} of ${CORES} cores busy, load average ${results.env.busyBeforeStart.loadavg1}`);
  if (results.env.busyBeforeStart.machineBusyCores > 0.3) log('WARNING: the machine is busy with other work; figures will be skewed');
  let browser;
  try {
    await gw.start({ timeoutMs: 30000 });
    log(`gateway ${gw.origin} pid ${gw.proc.pid}`);
    await scenario('encoder', () => encoderCost(gw)); // before the browser exists: the gateway alone
    browser = await launchBrowser();
    results.env.chromium = browser.version();
    await scenario('webrtc', () => latencyScenario(browser, gw, 'webrtc', SETTINGS.webrtcS));
    await scenario('hls', () => latencyScenario(browser, gw, 'hls', SETTINGS.hlsS));
    await scenario('ttff', async () => ({
      webrtc: await timeToFirstFrame(browser, gw.origin, 'webrtc', SETTINGS.ttffTries),
      hls: await timeToFirstFrame(browser, gw.origin, 'hls', SETTINGS.ttffTries),
    }));
    await scenario('loss', () => lossy(browser, gw));
    await scenario('fanout', () => fanout(browser, gw));
    await scenario('overload', () => overload(browser, gw));
    await scenario('relay', () => relayHop(browser, gw));
    await gw.stop();
    await scenario('baseline', () => baseline(browser));
  } finally {
    if (browser) await browser.close();
    await gw.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
  results.totalSeconds = round((Date.now() - started.getTime()) / 1000, 0);
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const jsonPath = path.join(OUT, `${stamp}${QUICK ? '-quick' : ''}.json`);
  fs.writeFileSync(jsonPath, `${JSON.stringify(results, null, 1)}\n`);
  const docsPath = WRITE_DOCS && !QUICK ? path.join(ROOT, 'docs/BENCHMARKS.md') : path.join(OUT, `BENCHMARKS${QUICK ? '-quick' : ''}.md`);
  const table = writeReport(results, { docsPath, jsonPath: path.relative(ROOT, jsonPath) });
  console.log(`\n${table}\n`);
  log(`raw results: ${path.relative(ROOT, jsonPath)}; report: ${path.relative(ROOT, docsPath)}; ${results.totalSeconds} s in all`);
  if (Object.keys(results.errors).length) {
    console.error(`bench: ${Object.keys(results.errors).length} scenario(s) failed: ${Object.keys(results.errors).join(', ')}`);
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
