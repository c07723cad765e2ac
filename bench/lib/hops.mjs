// Where a frame's glass-to-glass time goes, hop by hop: the gateway's per-frame log
// (LIVEGATE_HOP_TRACE=1, src/hops.rs: ms after the capture time of the frame's strip at each hop)
// joined by capture time with the moment Chromium showed the same frame (tests/e2e/lib/probe.js).
import { summary } from './stats.mjs';

const MOD = 2 ** 40;

/** Each hop: its name in the report, and the log field of the point it ends at (in order). */
export const HOPS = [
  ['capture → encoder in (capture appsink, supervisor, appsrc)', 'encoder_in'],
  ['encoder (x264)', 'encoder_out'],
  ['encoder out → payloader in (parse, tee, queue)', 'payloader_in'],
  ['payloader → appsink, last packet', 'appsink'],
  ['appsink → viewer task (broadcast)', 'fan_out'],
  ['viewer task → written to webrtc-rs', 'written'],
  ['webrtc-rs driver → socket (SRTP, send)', 'socket'],
  ['socket → shown in Chromium (receive, jitter buffer, decode, render, vsync)', 'shown'],
];

/** The gateway's hop records (parsed log lines). */
export function hopRecords(logLines) {
  return logLines.filter((r) => r && r.target === 'livegate::hops');
}

/**
 * Per hop, the summary of its time over the frames both seen leaving the gateway and shown:
 * `records` from hopRecords(), `shown` the probe's samples ({value, latency}).
 */
export function hopBreakdown(records, shown) {
  const shownAfter = new Map(shown.filter((s) => s.latency !== null).map((s) => [s.value, s.latency]));
  const frames = [];
  for (const r of records) {
    const latency = shownAfter.get(r.captured_ms % MOD);
    if (latency !== undefined) frames.push({ ...r, shown: latency });
  }
  let from = () => 0;
  const hops = HOPS.map(([name, field]) => {
    const start = from;
    from = (f) => f[field];
    return { name, ms: summary(frames.map((f) => (f[field] ?? NaN) - start(f)).map((x) => Math.round(x * 100) / 100)) };
  });
  return { frames: frames.length, hops, total: summary(frames.map((f) => f.shown)) };
}
