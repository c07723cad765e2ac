// livegate browser player: WebRTC (WHEP signalling) with HLS fallback,
// self-healing reconnects, and live latency read from the in-frame strip.
import { cellSize, decodeStrip, latencyFrom } from './strip.js';

const WEBRTC_FIRST_FRAME_MS = 4000; // auto mode falls back to HLS after this
const HLS_FIRST_FRAME_MS = 10000;   // HLS needs a playlist + segment first
const LIVE_JUMP_S = 0.25;          // HLS this far behind its target latency jumps to it
const STALL_MS = 2000;              // frames stopped advancing -> reconnect (make before break)
const STALL_GIVE_UP_MS = 10000;      // neither connection shows video: start over
const WEBRTC_FAILURES_BEFORE_HLS = 3; // auto mode: WebRTC failures in a row before HLS
const WEBRTC_HEALTHY_MS = 30000;      // a WebRTC session that played this long ends a run of failures
const WEBRTC_RETRY_MS = 30000;        // then WebRTC is tried again after this, doubling
const WEBRTC_RETRY_MAX_MS = 300000;
const DISCONNECT_GRACE_MS = 2000;   // ICE "disconnected" may recover by itself
// A connection that replaces a healthy one (to measure the round trip, or for lip sync) and shows
// no video by then is given up and made again: its DTLS handshake can stall on a lossy network.
const UPGRADE_TIMEOUT_MS = 5000;
const UPGRADE_RETRY_MS = 1000;
const LOSS_CHECK_MS = 2000;         // how often a WebRTC session looks for lost packets
// The network loses packets: within LOSS_WINDOW_MS, at least LOSS_NACKS NACKs and LOSS_RATIO
// of the packets received (not a stray one, nor a burst at start).
const LOSS_NACKS = 3;
const LOSS_RATIO = 0.005;
const LOSS_WINDOW_MS = 10000;
const BACKOFF_START_MS = 1000;
const BACKOFF_MAX_MS = 5000;
const LATENCY_STALE_MS = 2000;
// The readout needs ten strips a second, not every frame: each read costs ~6 ms of the main
// thread (the strip's rows converted and read back; 7.7 ms mean at 720p in headless Chromium).
const STRIP_READ_EVERY_MS = 100;
const LATENCY_MEDIAN_OF = 5;        // strips: half a second
const SAMPLE_RING = 300;

const $ = (id) => document.getElementById(id);
const video = $('video');
const ui = {
  name: $('stream-name'), mode: $('mode'), state: $('state'), sound: $('sound'),
  resolution: $('resolution'), fps: $('fps'), latency: $('latency'), select: $('stream-select'),
};

// Live stats for humans and automated tests.
const lg = (window.livegate = {
  stream: null,
  mode: null,            // 'WebRTC' | 'HLS' | null
  state: 'loading',
  framesShown: 0,        // frames presented since page load (all sessions)
  fps: 0,
  latencyMs: null,       // smoothed: median of the last 15 strip samples, null when stale
  latencyRawMs: null,    // latest single sample
  lastLatencySamples: [], // ring of the last 300 {now, latencyMs}
  resolution: null,      // e.g. '1280x720'
  width: 0,
  height: 0,
  measuresRtt: false,    // WebRTC connections ask for the round-trip time (after packet loss)
  transport: null,       // 'udp' | 'tcp': what the WebRTC connection's media goes over
  audio: false,          // the stream being played has sound
  muted: true,           // it plays muted (until the viewer unmutes it)
  lipSync: false,        // the WebRTC connection lets the picture wait for the sound
});

const params = new URLSearchParams(location.search);
const requestedMode = ['auto', 'webrtc', 'hls'].includes(params.get('mode')) ? params.get('mode') : 'auto';
// A protected gateway's link carries ?token=…; every request the player makes passes it on.
const accessToken = params.get('token');

// The gateway refused the credential (HTTP 401/403, or a signalling error saying so):
// retrying cannot help, so the player says so and stops.
class AccessDenied extends Error {}
const DENIED_PREFIX = 'access denied';

let session = null;  // the one active playback attempt
let sessionSeq = 0;
let runSeq = 0;      // newer run() calls supersede older ones still awaiting fetch
let retryTimer = 0;
let retryCount = 0;
let webrtcFailures = 0;  // WebRTC sessions that failed in a row
let webrtcRetries = 0;   // times WebRTC was tried again after falling back to HLS
let webrtcRetryTimer = 0;
let stopped = false; // set on pagehide
// Once this page has seen WebRTC packets lost, its connections ask to be told the round-trip
// time (RFC 3611 receiver reference times): Chromium then asks again for a lost retransmission
// after one round trip instead of 100 ms, and the picture keeps moving at 10 % loss. It also
// shows every frame ~15 ms later, so a clean network never asks for it.
let measureRtt = false;
// Browsers only autoplay muted; once the viewer unmutes, later sessions of this page play aloud.
let soundWanted = false;

// ---------------------------------------------------------------- UI helpers

function setState(text, kind = text) {
  lg.state = text;
  ui.state.textContent = text;
  document.body.dataset.state = kind;
}

// The sound button: shown when the stream has sound, says whether it is muted.
function showSound(hasAudio) {
  lg.audio = hasAudio;
  lg.lipSync = !!(session && session.conn && session.conn.lipSync);
  lg.muted = video.muted;
  ui.sound.hidden = !hasAudio;
  ui.sound.textContent = video.muted ? '🔇 unmute' : '🔊 mute';
  ui.sound.setAttribute('aria-pressed', String(!video.muted));
}

function toggleSound() {
  soundWanted = video.muted;
  video.muted = !soundWanted;
  if (!video.muted) video.play().catch(() => {});
  showSound(lg.audio);
  // Listening: a connection whose picture waits for the sound; watching only: the fastest one.
  const s = session;
  if (s && alive(s) && s.mode === 'WebRTC' && s.conn && s.conn.lipSync !== soundWanted) {
    console.info(`[livegate] sound ${soundWanted ? 'on: reconnecting in lip sync' : 'off: reconnecting for the lowest latency'}`);
    reconnectBehind(s, { upgrade: true });
  }
}

function setMode(mode) {
  lg.mode = mode;
  ui.mode.textContent = mode || '';
}

function streamName() {
  return new URLSearchParams(location.search).get('stream');
}

function populateSwitcher(streams, current) {
  const names = streams.map((s) => s.name);
  const existing = [...ui.select.options].map((o) => o.value);
  if (names.join('\n') !== existing.join('\n')) {
    ui.select.replaceChildren(...names.map((n) => new Option(n, n)));
  }
  if (current && !names.includes(current)) ui.select.add(new Option(`${current} (missing)`, current));
  ui.select.value = current || '';
}

ui.select.addEventListener('change', () => {
  const p = new URLSearchParams(location.search);
  p.set('stream', ui.select.value);
  history.pushState(null, '', `${location.pathname}?${p}`);
  restart('switch stream');
});
window.addEventListener('popstate', () => restart('navigation'));
ui.sound.addEventListener('click', toggleSound);

// ------------------------------------------------------- session management

function newSession(mode, info) {
  endSession();
  session = {
    id: ++sessionSeq, mode, info,
    startedAt: performance.now(), gotFrame: false, lastFrameAt: 0,
    cleanups: [], blocked: false,
  };
  setMode(mode);
  lg.transport = null;
  ui.mode.title = '';
  return session;
}

function alive(s) {
  return !stopped && s === session;
}

function endSession() {
  const s = session;
  session = null;
  if (!s) return;
  for (const fn of s.cleanups.reverse()) {
    try { fn(); } catch (e) { console.debug('[livegate] cleanup', e); }
  }
}

function resetVideo() {
  try { video.pause(); } catch (_) { /* ignore */ }
  showSound(false);
  video.srcObject = null;
  if (video.hasAttribute('src')) {
    video.removeAttribute('src');
    video.load(); // releases the old media resource
  }
}

// A session failed. Before its first frame in auto mode, WebRTC falls back to
// HLS straight away; otherwise tear down and retry (WebRTC first again).
function fail(s, reason) {
  if (!alive(s)) return;
  console.info(`[livegate] ${s.mode} session ${s.id} ended: ${reason}`);
  if (s.mode === 'WebRTC') {
    // A connection that plays a few seconds and drops again is still failing: only a long
    // healthy session starts the count (and the HLS retry back-off) afresh.
    if (s.gotFrame && performance.now() - s.firstFrameAt > WEBRTC_HEALTHY_MS) { webrtcFailures = 0; webrtcRetries = 0; }
    webrtcFailures++;
  }
  if (s.mode === 'WebRTC' && requestedMode === 'auto' && (!s.gotFrame || webrtcFailures >= WEBRTC_FAILURES_BEFORE_HLS)) {
    const info = s.info;
    endSession();
    startHls(info, `WebRTC unavailable (${reason})`);
    retryWebRtcLater();
    return;
  }
  scheduleRetry(reason);
}

/** In auto mode on HLS because WebRTC failed: try WebRTC again, less often each time. */
function retryWebRtcLater() {
  clearTimeout(webrtcRetryTimer);
  const delay = Math.min(WEBRTC_RETRY_MAX_MS, WEBRTC_RETRY_MS * 2 ** webrtcRetries);
  webrtcRetries++;
  webrtcRetryTimer = setTimeout(() => {
    if (session && session.mode === 'HLS') restart('trying WebRTC again');
  }, delay);
}

function denyAccess(reason) {
  endSession();
  clearTimeout(retryTimer);
  setMode(null);
  console.info(`[livegate] ${reason}`);
  setState(reason.startsWith(DENIED_PREFIX) ? reason : `${DENIED_PREFIX}: ${reason}`, 'denied');
}

function scheduleRetry(reason) {
  endSession();
  if (stopped) return;
  clearTimeout(retryTimer);
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** retryCount);
  retryCount++;
  setState(`reconnecting in ${Math.round(delay / 1000)} s (${reason})`, 'reconnecting');
  retryTimer = setTimeout(run, delay);
}

function restart(why) {
  console.info(`[livegate] restart: ${why}`);
  clearTimeout(retryTimer);
  endSession();
  retryCount = 0;
  run();
}

function authHeaders() {
  return accessToken ? { Authorization: `Bearer ${accessToken}` } : {};
}

async function fetchJson(path) {
  const res = await (window.livegateStart.fetched(path) || fetch(path, { cache: 'no-store', headers: authHeaders() }));
  if (res.status === 401 || res.status === 403) throw new AccessDenied((await res.text()).trim());
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

/** `path` with the page's token added, for URLs that cannot carry a header (HLS). */
function withToken(path) {
  if (!accessToken) return path;
  return `${path}${path.includes('?') ? '&' : '?'}token=${encodeURIComponent(accessToken)}`;
}

// One attempt: refresh the stream list, pick a stream, start a transport.
async function run() {
  clearTimeout(retryTimer);
  if (stopped) return;
  const token = ++runSeq;
  endSession();
  setState('connecting');

  // Only WebRTC needs the ICE servers, but asking alongside the stream list saves a round trip
  // (when the page did not come with them).
  const given = window.livegateStart.iceServers;
  const iceServers = given ? Promise.resolve(given) : fetchJson('/api/config').then((cfg) => (Array.isArray(cfg.iceServers) ? cfg.iceServers : []), (e) => {
    console.info('[livegate] /api/config unavailable, using no ICE servers', e.message);
    return [];
  });
  const listed = fetchJson('/api/streams');
  const wanted = streamName();
  const pick = (streams) => Array.isArray(streams) && (wanted ? streams.find((s) => s.name === wanted) : streams[0]);
  const hasWebRtc = typeof window.RTCPeerConnection === 'function';
  // WebRTC starts at once: its offer is made while the list is fetched, and goes as soon as the
  // stream is known (named by the URL, or the list's first). The list then fills the switcher,
  // or ends the attempt if the stream is not there.
  const early = hasWebRtc && requestedMode !== 'hls'
    ? startWebRtc({ name: wanted }, iceServers, wanted || listed.then((streams) => (pick(streams) || {}).name, () => null))
    : null;
  let streams;
  try {
    streams = await listed;
  } catch (e) {
    if (token !== runSeq) return;
    if (e instanceof AccessDenied) denyAccess(e.message);
    else scheduleRetry(`stream list: ${e.message}`);
    return;
  }
  // The early attempt may already have ended: denied, retrying, or on HLS.
  if (stopped || token !== runSeq || session !== early) return;

  const info = pick(streams);
  populateSwitcher(Array.isArray(streams) ? streams : [], wanted || (info && info.name));
  lg.stream = info ? info.name : wanted;
  ui.name.textContent = lg.stream || '';
  document.title = lg.stream ? `${lg.stream} · livegate` : 'livegate';

  if (!info) {
    setMode(null);
    scheduleRetry(wanted ? `no stream named "${wanted}"` : 'no streams');
    return;
  }
  if (info.state === 'error') {
    setMode(null);
    scheduleRetry(`stream error: ${info.error || 'unknown'}`);
    return;
  }
  if (early) {
    early.info = info;
    return;
  }

  if (requestedMode === 'hls') startHls(info);
  else if (requestedMode === 'webrtc') { setMode('WebRTC'); setState('WebRTC is not supported by this browser', 'error'); }
  else startHls(info, 'no RTCPeerConnection');
}

// ------------------------------------------------------------------ WebRTC

/** Ends a WHEP session. keepalive: the DELETE still goes out when the page is being closed, so
 * the slot is freed at once rather than when ICE consent runs out. */
function deleteSession(resource) {
  fetch(resource, { method: 'DELETE', headers: authHeaders(), keepalive: true }).catch(() => {});
}

/**
 * One WebRTC connection to a stream: a PeerConnection signalled with WHEP, a POST on the page's
 * own HTTP/2 connection (a WebSocket would need a TLS handshake of its own). Reports through
 * `on.track(stream)`, `on.connected()`, `on.denied(message)` and `on.fail(reason)`; `close()`
 * ends it. `stream` is a name, or a promise of one (nothing is sent without a name), and
 * `iceServers` a promise. Its offer asks for the round-trip time only with `rtt`. Knows nothing
 * of sessions or the page.
 */
function openWebRtc(stream, iceServers, rtt, on) {
  // Made before the ICE servers are known (a promise): the peer and its offer are made while
  // they are fetched, and they are set before gathering starts. The page's first one comes
  // from index.html already signalled, maybe connected.
  const { pc, offer: offered, signalled } = window.livegateStart.peer();
  const lipSync = soundWanted;
  const posting = new AbortController();
  let resource = null; // the WHEP session, deleted on close
  let closed = false;
  let disconnectTimer = 0;
  const fail = (reason) => { if (!closed) on.fail(reason); };
  const close = () => {
    if (closed) return;
    closed = true;
    clearTimeout(disconnectTimer);
    posting.abort();
    if (resource) deleteSession(resource);
    pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
    pc.close();
  };

  const remote = new MediaStream(); // for tracks that come without a stream
  let tracked = false;
  pc.ontrack = (e) => {
    if (closed) return;
    tracked = true;
    if (e.streams && e.streams[0]) return on.track(e.streams[0]);
    remote.addTrack(e.track);
    on.track(remote);
  };
  const onPcState = () => {
    if (closed) return;
    const st = pc.connectionState || pc.iceConnectionState;
    if (st === 'failed') fail('connection failed');
    else if (st === 'disconnected') {
      clearTimeout(disconnectTimer);
      disconnectTimer = setTimeout(() => {
        const now = pc.connectionState || pc.iceConnectionState;
        if (now === 'disconnected' || now === 'failed') fail('connection lost');
      }, DISCONNECT_GRACE_MS);
    } else if (st === 'connected') {
      clearTimeout(disconnectTimer);
      on.connected();
    }
  };
  pc.onconnectionstatechange = onPcState;
  pc.oniceconnectionstatechange = () => { if (!('connectionState' in pc)) onPcState(); };

  (async () => {
    let answered = await signalled;
    if (!answered) {
      const offer = await offered;
      const [name, servers] = await Promise.all([stream, iceServers]);
      if (closed || !name) return;
      answered = await window.livegateStart.signal(pc, offer, name, servers, { rtt, lipSync, abort: posting.signal });
    }
    const { res, body } = answered;
    if (res.ok && res.headers.has('Location')) resource = new URL(res.headers.get('Location'), location.href).href;
    if (closed) {
      // Closed while the page's first offer was answered: end the session it made.
      if (resource) deleteSession(resource);
      return;
    }
    if (res.status === 401 || res.status === 403) {
      close();
      on.denied(body.trim() || `${DENIED_PREFIX} (HTTP ${res.status})`);
      return;
    }
    if (!res.ok) throw new Error(`HTTP ${res.status}${body.trim() ? `: ${body.trim()}` : ''}`);
    // The page's first peer may have had its tracks and connected before it was taken over.
    if (!tracked) {
      for (const t of pc.getTransceivers()) if (t.currentDirection === 'recvonly') remote.addTrack(t.receiver.track);
      if (remote.getTracks().length) { tracked = true; on.track(remote); }
    }
    onPcState();
  })().catch((e) => fail(`signalling: ${e.message}`));

  return { pc, close, lipSync, rtt };
}

/** The protocol ('udp' or 'tcp') of the connection's selected candidate pair, or null. */
async function iceTransport(pc) {
  const stats = await pc.getStats();
  for (const r of stats.values()) {
    if (r.type !== 'transport' || !r.selectedCandidatePairId) continue;
    const pair = stats.get(r.selectedCandidatePairId);
    const local = pair && stats.get(pair.localCandidateId);
    return (local && local.protocol) || null;
  }
  return null;
}

/** Says what the session's connection goes over (ICE over TCP when the network blocks UDP). */
async function showTransport(s) {
  const transport = await iceTransport(s.conn.pc).catch(() => null);
  if (!alive(s)) return;
  lg.transport = transport;
  ui.mode.title = transport ? `media over ${transport.toUpperCase()}` : '';
}

/** Frames the connection's video receiver has decoded (0 before any). */
async function framesDecoded(pc) {
  for (const r of (await pc.getStats()).values()) {
    if (r.type === 'inbound-rtp' && r.kind === 'video') return r.framesDecoded || 0;
  }
  return 0;
}

/** A WebRTC session; `name` is `info.name`, or a promise of it while the list is fetched. */
function startWebRtc(info, iceServers, name = info.name) {
  const s = newSession('WebRTC', info);
  setState('connecting');
  resetVideo();
  startWatchdog(s, WEBRTC_FIRST_FRAME_MS);

  s.iceServers = iceServers;
  try {
    s.conn = openWebRtc(name, s.iceServers, measureRtt, {
      track: (stream) => {
        if (!alive(s)) return;
        // Video and sound arrive as two tracks of one stream. A stream without sound still
        // answers the page's audio section with a track of its own: never let it replace the picture.
        const replaces = !video.srcObject || stream.getVideoTracks().length > 0;
        if (video.srcObject !== stream && replaces) { video.srcObject = stream; playVideo(s); }
        showSound(stream.getAudioTracks().length > 0);
      },
      connected: () => {
        if (!alive(s)) return;
        if (!s.gotFrame) setState('connected, waiting for video', 'connecting');
        showTransport(s);
      },
      denied: denyAccess,
      // While a second connection is being made, the first may die: the second decides.
      fail: (reason) => { if (!s.standby) fail(s, reason); },
    });
  } catch (e) {
    fail(s, `setup: ${e.message}`);
    return s;
  }
  s.cleanups.push(() => { s.conn.close(); closeStandby(s); resetVideo(); });
  watchForLoss(s);
  return s;
}

/**
 * Packets lost on this connection (LOSS_NACKS NACKs within LOSS_WINDOW_MS, more than a stray
 * one): the first time, it is replaced by one that asks for the round-trip time.
 */
function watchForLoss(s) {
  const seen = []; // {t, nacks, packets} over the window
  const timer = setInterval(async () => {
    if (!alive(s) || measureRtt || !s.conn || s.standby) return;
    const now = { t: performance.now(), nacks: 0, packets: 0 };
    for (const r of (await s.conn.pc.getStats().catch(() => new Map())).values()) {
      if (r.type === 'inbound-rtp' && r.kind === 'video') { now.nacks = r.nackCount || 0; now.packets = r.packetsReceived || 0; }
    }
    seen.push(now);
    while (now.t - seen[0].t > LOSS_WINDOW_MS) seen.shift();
    const nacks = now.nacks - seen[0].nacks;
    const lossy = nacks >= LOSS_NACKS && nacks >= LOSS_RATIO * (now.packets - seen[0].packets);
    if (lossy && !measureRtt && alive(s)) {
      measureRtt = lg.measuresRtt = true;
      console.info(`[livegate] ${nacks} packets lost: reconnecting with round-trip measurement`);
      reconnectBehind(s, { upgrade: true });
    }
  }, LOSS_CHECK_MS);
  s.cleanups.push(() => clearInterval(timer));
}

/**
 * Make before break: a stalled WebRTC session opens a second connection while the first stays
 * up. Whichever shows video first wins: the old one when the network comes back (ICE survives a
 * few seconds of blackout), the new one when the old is gone for good. An `upgrade` (a healthy
 * connection replaced by one that measures the round trip) always switches to the new one.
 */
function reconnectBehind(s, { upgrade = false } = {}) {
  if (s.standby || !s.conn) return;
  if (!upgrade) setState('reconnecting (video stalled)', 'reconnecting');
  let stream = null;
  s.upgrading = upgrade;
  const startedAt = performance.now();
  // The healthy connection plays on meanwhile; the upgrade is tried again until one works.
  const giveUp = (reason) => {
    console.info(`[livegate] standby connection ended: ${reason}`);
    closeStandby(s);
    if (upgrade) {
      setTimeout(() => { if (alive(s) && !s.standby && wantsUpgrade(s.conn)) reconnectBehind(s, { upgrade: true }); }, UPGRADE_RETRY_MS);
    }
  };
  const standby = openWebRtc(s.info.name, s.iceServers, measureRtt, {
    track: (st) => { if (!stream || st.getVideoTracks().length) stream = st; },
    connected: () => {},
    denied: denyAccess,
    fail: giveUp,
  });
  const poll = setInterval(async () => {
    if (!alive(s) || s.standby !== standby) return;
    if (upgrade && performance.now() - startedAt > UPGRADE_TIMEOUT_MS) {
      giveUp(`no video within ${UPGRADE_TIMEOUT_MS} ms`);
      return;
    }
    if (stream && (await framesDecoded(standby.pc).catch(() => 0)) > 0 && s.standby === standby) {
      console.info('[livegate] switched to the new connection');
      clearInterval(poll);
      const old = s.conn;
      s.conn = standby;
      s.standby = null;
      s.upgrading = false;
      video.srcObject = stream;
      playVideo(s);
      s.lastFrameAt = performance.now();
      setState('playing');
      showTransport(s);
      old.close();
    }
  }, 100);
  s.standby = standby;
  s.standbyPoll = poll;
}

/** The connection is not the one this page now wants: round-trip measurement or lip sync differ. */
function wantsUpgrade(conn) {
  return !!conn && (conn.rtt !== measureRtt || conn.lipSync !== soundWanted);
}

function closeStandby(s) {
  clearInterval(s.standbyPoll);
  if (s.standby) s.standby.close();
  s.standby = null;
  s.upgrading = false;
}

// --------------------------------------------------------------------- HLS

async function startHls(info, why) {
  const s = newSession('HLS', info);
  if (why) console.info(`[livegate] using HLS: ${why}`);
  resetVideo();
  if (info.state === 'starting') {
    // No playlist yet; requesting it would only produce 404s in the console.
    scheduleRetry('stream starting');
    return;
  }
  setState('connecting');
  startWatchdog(s, HLS_FIRST_FRAME_MS);
  // The playlist hands the token on to its segments, for hls.js and native HLS alike.
  const url = withToken(info.ll_hls || info.hls || `/hls/${encodeURIComponent(info.name)}/ll.m3u8`);

  const Hls = await window.livegateStart.hlsJs().catch((e) => { console.info('[livegate]', e.message); return null; });
  if (!alive(s)) return;
  const hlsJsOk = !!(Hls && Hls.isSupported());
  // Safari: native HLS. Android Chrome also answers "maybe" here but plays HLS
  // poorly, and Chromium (navigator.userAgentData) does better with hls.js.
  const native = video.canPlayType('application/vnd.apple.mpegurl') &&
    (!hlsJsOk || (!/Android/i.test(navigator.userAgent) && !navigator.userAgentData));
  if (native) {
    const onError = () => fail(s, `media error ${video.error ? video.error.code : ''}`.trim());
    video.addEventListener('error', onError);
    s.cleanups.push(() => { video.removeEventListener('error', onError); resetVideo(); });
    video.src = url;
    // Native HLS does not say whether there is sound before it plays: offer the button.
    lg.audio = true;
    playVideo(s);
    return;
  }

  if (!hlsJsOk) {
    setState('HLS is not supported by this browser', 'error');
    return;
  }
  const hls = new Hls({
    // Parts are fMP4 already (no transmuxing to move off the main thread), and starting the
    // worker (hls.js evaluated a second time) delayed the first frame by ~100 ms.
    enableWorker: false,
    lowLatencyMode: true,          // parts, blocking reloads, and PART-HOLD-BACK from the live edge
    maxLiveSyncPlaybackRate: 1.5,  // catch up smoothly instead of seeking
    liveDurationInfinity: true,
    backBufferLength: 4,
    maxBufferLength: 4,
    maxMaxBufferLength: 8,
    manifestLoadingMaxRetry: 2,
    levelLoadingMaxRetry: 2,
    fragLoadingMaxRetry: 2,
    debug: false,
    autoStartLoad: false,          // started at a keyframe once the playlist is known, below
  });
  s.hls = hls;
  s.cleanups.push(() => { hls.destroy(); resetVideo(); });
  hls.on(Hls.Events.ERROR, (_evt, data) => {
    if (!alive(s)) return;
    const status = data.response && data.response.code;
    if (status === 401 || status === 403) denyAccess(`HLS answered ${status}`);
    else if (data.fatal) fail(s, `hls.js ${data.type}: ${data.details}`);
    else console.debug('[livegate] hls.js', data.details);
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => playVideo(s));
  // hls.js fetches from the keyframe before its hold-back point, then decodes on to that point
  // before it shows anything (and only once the whole segment is in). Starting at the keyframe
  // shows its picture as soon as its part is appended; the jump below then catches up.
  let starting = true;
  hls.once(Hls.Events.LEVEL_LOADED, (_evt, { details }) => {
    const start = keyframeBeforeHoldBack(details);
    starting = start !== null;
    hls.startLoad(starting ? start : -1);
  });
  // What hls.js appends first begins with a keyframe.
  hls.on(Hls.Events.BUFFER_APPENDED, () => {
    const b = video.buffered;
    if (!starting || !b.length) return;
    starting = false;
    if (video.currentTime < b.start(0)) video.currentTime = b.start(0);
  });
  // hls.js speeds up towards its target latency only with over a second buffered ahead, which
  // Low-Latency HLS never has: when it is well behind (after a stall), jump; after a start at
  // the keyframe, jump to the hold-back point however little behind it is.
  let caughtUp = false;
  hls.on(Hls.Events.FRAG_BUFFERED, () => {
    const sync = hls.liveSyncPosition;
    if (!alive(s) || !s.gotFrame || video.paused || sync === null) return;
    if (caughtUp && hls.latency - hls.targetLatency < LIVE_JUMP_S) return;
    const b = video.buffered;
    if (b.length && sync < b.end(b.length - 1)) {
      if (sync > video.currentTime) video.currentTime = sync;
      caughtUp = true;
    }
  });
  // Sound is a track of its own in MPEG-TS, and shares one with the picture in fMP4 parts.
  hls.on(Hls.Events.BUFFER_CODECS, (_evt, data) => {
    if (alive(s)) showSound(!!data.audio || /mp4a|opus/.test((data.audiovideo && data.audiovideo.codec) || ''));
  });
  hls.attachMedia(video);
  hls.loadSource(url);
}

/** The start of the newest independent part at least PART-HOLD-BACK behind the live edge of a
 * Low-Latency playlist (hls.js level details), or null. */
function keyframeBeforeHoldBack(details) {
  const holdBack = details.partHoldBack || 3 * details.partTarget;
  let start = null;
  for (const part of details.partList || []) {
    if (part.independent && part.start <= details.edge - holdBack) start = part.start;
  }
  return start;
}

// ------------------------------------------------------- playback + watchdog

function playVideo(s) {
  video.muted = !soundWanted; // muted autoplay is allowed without a user gesture
  showSound(lg.audio);
  const p = video.play();
  if (p && p.catch) {
    p.catch((e) => {
      if (!alive(s)) return;
      if (e.name === 'NotAllowedError' && !video.muted) {
        // Sound needs a gesture again (a new page visit): play muted instead.
        soundWanted = false;
        playVideo(s);
      } else if (e.name === 'NotAllowedError') {
        s.blocked = true; // don't treat "waiting for a click" as a stall
        setState('click to play', 'connecting');
        video.addEventListener('click', () => { s.blocked = false; s.startedAt = performance.now(); video.play().catch(() => {}); }, { once: true });
      } else {
        console.debug('[livegate] play()', e.name, e.message); // e.g. AbortError on source change
      }
    });
  }
}

function startWatchdog(s, firstFrameMs) {
  const timer = setInterval(() => {
    if (!alive(s) || s.blocked || document.hidden) return; // hidden tabs present no frames
    const now = performance.now();
    if (!s.gotFrame) {
      if (now - s.startedAt > firstFrameMs) fail(s, `no video within ${firstFrameMs / 1000} s`);
    } else if (now - s.lastFrameAt <= STALL_MS) {
      if (s.standby && !s.upgrading) { closeStandby(s); setState('playing'); } // the first connection came back
    } else if (s.mode !== 'WebRTC' || now - s.lastFrameAt > STALL_GIVE_UP_MS) {
      fail(s, 'video stalled');
    } else {
      reconnectBehind(s);
    }
  }, 250);
  s.cleanups.push(() => clearInterval(timer));
}

document.addEventListener('visibilitychange', () => {
  // A tab back from the background plays live, not from what HLS buffered meanwhile.
  if (!document.hidden && session && session.hls && Number.isFinite(session.hls.liveSyncPosition)) {
    video.currentTime = session.hls.liveSyncPosition;
  }
  // Frames don't advance while hidden: restart the clocks rather than reconnect.
  if (!document.hidden && session) {
    const now = performance.now();
    if (session.gotFrame) session.lastFrameAt = now; else session.startedAt = now;
  }
});

// --------------------------------------------------- per-frame measurements

const canvas = document.createElement('canvas');
const ctx = canvas.getContext('2d', { willReadFrequently: true });
const fpsWindow = []; // {t, frames} over the last second
let lastPresented = null;
let lastStripAt = 0;
let lastStripReadAt = -Infinity;
const recent = []; // last LATENCY_MEDIAN_OF samples for the median

function onFrame(nowPerf, meta) {
  // Frames: presentedFrames counts frames rVFC may have coalesced.
  let n = 1;
  if (meta && typeof meta.presentedFrames === 'number') {
    if (lastPresented !== null && meta.presentedFrames > lastPresented) n = meta.presentedFrames - lastPresented;
    lastPresented = meta.presentedFrames;
  }
  lg.framesShown += n;
  const total = lg.framesShown;
  fpsWindow.push({ t: nowPerf, frames: total });
  while (fpsWindow.length > 2 && nowPerf - fpsWindow[0].t > 1000) fpsWindow.shift();

  const s = session;
  if (s) {
    s.lastFrameAt = performance.now();
    if (!s.gotFrame) {
      s.gotFrame = true;
      s.firstFrameAt = performance.now();
      retryCount = 0; // healthy again: next failure starts the backoff afresh
      setState('playing');
      console.info(`[livegate] ${s.mode} playing ${s.info.name}`);
    }
  }

  const w = (meta && meta.width) || video.videoWidth;
  const h = (meta && meta.height) || video.videoHeight;
  if (w && h) {
    lg.width = w; lg.height = h; lg.resolution = `${w}x${h}`;
  }

  // Wall-clock time the frame is shown. The perf->epoch offset is sampled now
  // rather than fixed at timeOrigin, so it tracks wall-clock adjustments.
  const displayPerf = meta && meta.expectedDisplayTime ? meta.expectedDisplayTime : nowPerf;
  if (nowPerf - lastStripReadAt < STRIP_READ_EVERY_MS) return;
  const epochOffset = Date.now() - performance.now();
  readStrip(w, h, displayPerf + epochOffset, meta && meta.mediaTime);
}

/**
 * The video may already hold the next frame when the callback runs (WebRTC frames arrive on
 * another thread): as a VideoFrame, it says which one it is, and a strip read from another frame
 * than the one presented (`mediaTime`) is not counted.
 */
function presentedPicture(mediaTime) {
  if (mediaTime === undefined || typeof VideoFrame !== 'function') return { source: video, close() {} };
  const frame = new VideoFrame(video);
  if (frame.timestamp === Math.round(mediaTime * 1e6)) return { source: frame, close: () => frame.close() };
  frame.close();
  return null;
}

function readStrip(w, h, shownAtMs, mediaTime) {
  const c = cellSize(w);
  if (!ctx || c < 2 || !h) return;
  if (canvas.width !== w || canvas.height !== c) { canvas.width = w; canvas.height = c; }
  let value = null;
  try {
    const picture = presentedPicture(mediaTime);
    if (!picture) return; // tried again at the next frame
    lastStripReadAt = performance.now();
    try {
      ctx.drawImage(picture.source, 0, 0, w, c, 0, 0, w, c); // only the strip rows
    } finally {
      picture.close();
    }
    value = decodeStrip(ctx.getImageData(0, 0, w, c), w);
  } catch (e) {
    console.debug('[livegate] strip read', e.message);
    return;
  }
  const latency = latencyFrom(value, shownAtMs);
  if (latency === null) return;
  const ms = Math.round(latency);
  lastStripAt = performance.now();
  lg.latencyRawMs = ms;
  lg.lastLatencySamples.push({ now: Math.round(shownAtMs), latencyMs: ms });
  if (lg.lastLatencySamples.length > SAMPLE_RING) lg.lastLatencySamples.shift();
  recent.push(ms);
  if (recent.length > LATENCY_MEDIAN_OF) recent.shift();
  const sorted = [...recent].sort((a, b) => a - b);
  lg.latencyMs = sorted[sorted.length >> 1];
}

// rVFC fires once per frame actually presented. Without it (old browsers),
// poll with rAF and count currentTime changes.
const hasRvfc = 'requestVideoFrameCallback' in HTMLVideoElement.prototype;
let rvfcHandle = 0;
function armFrameCallback() {
  if (!hasRvfc) return;
  if (rvfcHandle) video.cancelVideoFrameCallback(rvfcHandle);
  rvfcHandle = video.requestVideoFrameCallback(function tick(now, meta) {
    rvfcHandle = video.requestVideoFrameCallback(tick);
    onFrame(now, meta);
  });
}
if (hasRvfc) {
  armFrameCallback();
  // A new source resets the frame counter; re-arm so callbacks keep coming.
  video.addEventListener('loadedmetadata', () => { lastPresented = null; armFrameCallback(); });
} else {
  let lastTime = -1;
  const poll = (now) => {
    if (!video.paused && video.readyState >= 2 && video.currentTime !== lastTime) {
      lastTime = video.currentTime;
      onFrame(now, null);
    }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
}

video.addEventListener('resize', () => {
  if (video.videoWidth) {
    lg.width = video.videoWidth; lg.height = video.videoHeight;
    lg.resolution = `${video.videoWidth}x${video.videoHeight}`;
  }
});

// Repaint the info bar a few times a second rather than on every frame.
setInterval(() => {
  const now = performance.now();
  const last = fpsWindow[fpsWindow.length - 1];
  if (!last || now - last.t > 1000) {
    lg.fps = 0;
  } else if (fpsWindow.length >= 2) {
    const first = fpsWindow[0];
    const span = last.t - first.t;
    if (span >= 100) lg.fps = Math.round(((last.frames - first.frames) * 10000) / span) / 10;
  }
  if (lastStripAt && now - lastStripAt > LATENCY_STALE_MS) {
    lg.latencyMs = null;
    lg.latencyRawMs = null;
    recent.length = 0;
  }
  ui.fps.textContent = session && session.gotFrame ? String(lg.fps) : '';
  ui.resolution.textContent = lg.resolution || '';
  ui.latency.textContent = lg.latencyMs === null ? '' : String(lg.latencyMs);
}, 250);

// -------------------------------------------------------------- lifecycle

window.addEventListener('pagehide', () => {
  // Close the PeerConnection and delete its WHEP session so the server frees the viewer slot.
  stopped = true;
  clearTimeout(retryTimer);
  clearTimeout(webrtcRetryTimer);
  endSession();
});
window.addEventListener('pageshow', (e) => {
  if (e.persisted) { stopped = false; retryCount = 0; run(); } // back/forward cache restore
});

run();
