// Where a frame's glass-to-glass time goes, hop by hop: the gateway's per-frame log
// (LIVEGATE_HOP_TRACE=1, src/hops.rs: ms after the capture time of the frame's strip at each hop)
// joined by capture time with what Chromium said of the same frame (tests/e2e/lib/probe.js, from
// requestVideoFrameCallback's metadata): received, decoded, taken by the compositor, shown.
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
  ['socket → received by Chromium (last packet; rVFC receiveTime)', 'received'],
  ['received → decoded (jitter buffer, decode; rVFC processingDuration)', 'decoded'],
  ['decoded → taken by the compositor (rVFC presentationTime)', 'presented'],
  ['compositor → shown (rVFC expectedDisplayTime: the display\'s vsync)', 'shown'],
];

/** The gateway's hop records (parsed log lines). */
export function hopRecords(logLines) {
  return logLines.filter((r) => r && r.target === 'livegate::hops');
}

/**
 * Per hop, the summary of its time over the frames both seen leaving the gateway and shown:
 * `records` from hopRecords(), `shown` the probe's samples ({value, latency, received, decoded, presented}).
 */
export function hopBreakdown(records, shown) {
  const shownAt = new Map(shown.filter((s) => s.latency !== null).map((s) => [s.value, s]));
  const frames = [];
  // The probe reads the strip from what the video element holds when its callback runs, which
  // may already be a newer frame than the one the metadata describes: such a frame seems to
  // arrive before it left the gateway. Counted, and left out.
  let mismatched = 0;
  for (const r of records) {
    const seen = shownAt.get(r.captured_ms % MOD);
    if (!seen) continue;
    if (seen.received !== null && seen.received < r.socket) mismatched++;
    else frames.push({ ...r, received: seen.received, decoded: seen.decoded, presented: seen.presented, shown: seen.latency });
  }
  let from = () => 0;
  const hops = HOPS.map(([name, field]) => {
    const start = from;
    from = (f) => f[field] ?? NaN;
    return { name, ms: summary(frames.map((f) => from(f) - start(f)).map((x) => Math.round(x * 100) / 100)) };
  });
  return { frames: frames.length, mismatched, hops, total: summary(frames.map((f) => f.shown)) };
}
