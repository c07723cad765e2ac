import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// A/V sync as a viewer meets it, measured in the page: the test tone clicks at every full
// wall-clock second, and the strip of the frame captured at that moment reads that second. The
// sound's glass-to-glass latency (when a click is heard) minus the picture's (when a frame is
// shown) is the offset: positive when the sound is late.
//
// The sound is taken from what the page plays: the WebRTC stream's audio track, or (HLS) the
// <video> element itself, through a Web Audio graph; a click is where the signal first goes
// loud after a quiet stretch. The picture's latency is the test probe's (lib/probe.js).

/**
 * Listens for `ms` and returns {clicks, audioMs, videoMs, offsetMs} (medians), or throws if
 * fewer than `minClicks` clicks were heard.
 */
// A worklet sees each 128-sample block at the context time it is rendered for, with no
// buffering of its own: a click's time is exact to the sample.
const WORKLET_PATH = '/e2e-clicks.js';
const WORKLET = `registerProcessor('clicks', class extends AudioWorkletProcessor {
  constructor() { super(); this.quietSince = 0; }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      for (let i = 0; i < input.length; i++) {
        if (Math.abs(input[i]) > 0.5) {
          const at = currentTime + i / sampleRate;
          if (at - this.quietSince > 0.3) this.port.postMessage(at);
          this.quietSince = at;
        }
      }
    }
    return true;
  }
});`;

/**
 * The page's policy runs its own scripts only, so the worklet must come from the gateway: a
 * copy of web/ with it, for `--web-dir`. Returns the folder.
 */
export function webDirWithWorklet(root) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'livegate-web-'));
  fs.cpSync(path.join(root, 'web'), dir, { recursive: true });
  fs.writeFileSync(path.join(dir, WORKLET_PATH.slice(1)), WORKLET);
  return dir;
}

export async function measureAvSync(page, { ms = 8000, minClicks = 5 } = {}) {
  const result = await page.evaluate(async ({ listenMs, workletPath }) => {
    const video = document.getElementById('video');
    const ctx = new AudioContext();
    await ctx.resume();
    // WebRTC's sound is its stream's audio track; HLS's is what the element plays.
    const source = video.srcObject ? ctx.createMediaStreamSource(video.srcObject) : ctx.createMediaElementSource(video);
    await ctx.audioWorklet.addModule(workletPath);
    const detector = new AudioWorkletNode(ctx, 'clicks');
    const clicks = []; // wall-clock ms at which each click is heard
    detector.port.onmessage = (e) => {
      // The context time a sample is rendered for is when it leaves the speakers.
      const stamp = ctx.getOutputTimestamp();
      clicks.push(performance.timeOrigin + stamp.performanceTime + (e.data - stamp.contextTime) * 1000);
    };
    source.connect(detector);
    // A node only runs when connected onwards; a muted gain keeps the speakers out of it.
    const sink = ctx.createGain();
    sink.gain.value = 0;
    detector.connect(sink).connect(ctx.destination);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, listenMs));
    detector.disconnect();
    source.disconnect();
    await ctx.close();
    const latencies = window.__e2e.samples.filter((s) => s.t >= t0 && s.latency !== null).map((s) => s.latency);
    return { clicks, latencies };
  }, { listenMs: ms, workletPath: WORKLET_PATH });
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  if (result.clicks.length < minClicks) {
    throw new Error(`heard ${result.clicks.length} clicks in ${ms} ms (want ${minClicks}): no sound, or no test tone`);
  }
  if (!result.latencies.length) throw new Error('no frame with a readable strip while listening');
  const videoMs = median(result.latencies);
  // Each click belongs to the full second nearest to when its frame would be shown.
  const audio = result.clicks.map((heard) => heard - Math.round((heard - videoMs) / 1000) * 1000);
  const audioMs = median(audio);
  return {
    clicks: result.clicks.length,
    audioMs: Math.round(audioMs),
    videoMs: Math.round(videoMs),
    offsetMs: Math.round(audioMs - videoMs),
    spreadMs: Math.round(Math.max(...audio) - Math.min(...audio)),
  };
}
