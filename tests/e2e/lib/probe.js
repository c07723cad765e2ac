// Injected into every test page (as an init script) before the player runs. The test's own
// eyes: counts presented frames with requestVideoFrameCallback and decodes the latency strip
// from a canvas with its own decoder (deliberately not web/strip.js), so the page's readout
// can be checked against an independent measurement. Spec: docs/latency-strip.md.
(() => {
  const CELLS = 48;
  const MOD = 2 ** 40;
  const RING = 600;

  // CRC-8/SMBUS (poly 0x07, init 0, no reflection, no xor-out), table driven.
  const CRC_TABLE = new Uint8Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let i = 0; i < 8; i++) c = (c & 0x80) ? ((c << 1) ^ 0x07) & 0xff : (c << 1) & 0xff;
    CRC_TABLE[n] = c;
  }
  const crc8 = (bytes) => bytes.reduce((crc, b) => CRC_TABLE[crc ^ b], 0);

  // Returns the 40-bit capture time (ms mod 2^40) or null. Reads BT.601 luma over the
  // central half of each cell.
  function decode(pixels, width, stride) {
    const c = Math.floor(width / CELLS);
    if (c < 2) return null;
    const lo = Math.round(c / 4);
    const hi = Math.max(lo + 1, Math.round((3 * c) / 4));
    const bits = [];
    for (let k = 0; k < CELLS; k++) {
      let sum = 0;
      let n = 0;
      for (let y = lo; y < hi; y++) {
        for (let x = k * c + lo; x < k * c + hi; x++) {
          const p = (y * stride + x) * 4;
          sum += 0.299 * pixels[p] + 0.587 * pixels[p + 1] + 0.114 * pixels[p + 2];
          n++;
        }
      }
      bits.push(sum / n > 128 ? 1 : 0);
    }
    const bytes = [];
    for (let i = 0; i < 6; i++) bytes.push(bits.slice(i * 8, i * 8 + 8).reduce((a, b) => a * 2 + b, 0));
    if (crc8(bytes.slice(0, 5)) !== bytes[5]) return null;
    return bytes.slice(0, 5).reduce((a, b) => a * 256 + b, 0);
  }

  const probe = (window.__e2e = {
    frames: 0,          // frames presented (rVFC callbacks, counting coalesced ones)
    longestGap: 0,      // longest time between two presented frames, ms (a test may reset it)
    decoded: 0,         // frames whose strip decoded
    newerDrawn: 0,      // callbacks whose video already held a newer frame than the one presented
    samples: [],        // ring: {t, w, h, mediaTime, value, latency, received, decoded, presented}
    comparisons: [],    // each time the page's #latency text changed: {t, displayed, mine, n}
    recentLatencies: [],
    decode,
  });

  function median(xs) {
    const s = [...xs].sort((a, b) => a - b);
    return s[s.length >> 1];
  }

  function attach(video) {
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    let handle = 0;
    let lastPresented = null;
    let lastFrameAt = 0;
    // Strips read from a frame before its own callback came: media time (µs) → capture time.
    const early = new Map();
    // The picture the video holds when the callback runs can already be the next frame (WebRTC
    // frames arrive on another thread): take it as a VideoFrame, whose timestamp says which
    // frame it is, and pair each strip with the metadata of the frame it was read from.
    const grab = () => {
      try { return new VideoFrame(video); } catch (_) { return null; }
    };
    const onFrame = (now, meta) => {
      handle = video.requestVideoFrameCallback(onFrame);
      let n = 1;
      if (lastPresented !== null && meta.presentedFrames > lastPresented) n = meta.presentedFrames - lastPresented;
      lastPresented = meta.presentedFrames;
      if (probe.frames > 0) probe.longestGap = Math.max(probe.longestGap, now - lastFrameAt);
      lastFrameAt = now;
      probe.frames += n;
      const w = meta.width;
      const h = meta.height;
      const shownAt = meta.expectedDisplayTime + (Date.now() - performance.now());
      let value = null;
      const c = Math.floor(w / CELLS);
      if (c >= 2) {
        if (canvas.width !== w || canvas.height !== c) { canvas.width = w; canvas.height = c; }
        const frame = grab();
        const presented = Math.round(meta.mediaTime * 1e6);
        const drawn = frame ? frame.timestamp : presented;
        ctx.drawImage(frame || video, 0, 0, w, c, 0, 0, w, c);
        if (frame) frame.close();
        const read = decode(ctx.getImageData(0, 0, w, c).data, w, w);
        if (drawn === presented) value = read;
        else {
          probe.newerDrawn++;
          if (read !== null) early.set(drawn, read);
          value = early.has(presented) ? early.get(presented) : null;
        }
        for (const t of early.keys()) if (t <= presented) early.delete(t);
      }
      let latency = null;
      if (value !== null) {
        let d = (shownAt % MOD) - value;
        if (d < 0) d += MOD;
        if (d <= 600000) latency = d;
      }
      if (latency !== null) {
        probe.decoded++;
        probe.recentLatencies.push(latency);
        if (probe.recentLatencies.length > 15) probe.recentLatencies.shift();
      }
      // WebRTC frames also say when their last packet came, how long decoding took and when the
      // compositor took them: ms after capture, like the latency.
      const after = (at) => (latency === null || at === undefined ? null : latency - (meta.expectedDisplayTime - at));
      const received = after(meta.receiveTime);
      const decoded = received === null || meta.processingDuration === undefined ? null : received + 1000 * meta.processingDuration;
      probe.samples.push({ t: now, w, h, mediaTime: meta.mediaTime, value, latency, received, decoded, presented: after(meta.presentationTime) });
      if (probe.samples.length > RING) probe.samples.shift();
    };
    const arm = () => {
      if (handle) video.cancelVideoFrameCallback(handle);
      lastPresented = null;
      early.clear();
      handle = video.requestVideoFrameCallback(onFrame);
    };
    arm();
    video.addEventListener('loadedmetadata', arm);
    video.addEventListener('emptied', () => { probe.recentLatencies.length = 0; });

    const latencyEl = document.getElementById('latency');
    if (latencyEl) {
      new MutationObserver(() => {
        const text = latencyEl.textContent.trim();
        if (!text || !probe.recentLatencies.length) return;
        probe.comparisons.push({
          t: performance.now(), displayed: Number(text),
          mine: Math.round(median(probe.recentLatencies)), n: probe.recentLatencies.length,
        });
        if (probe.comparisons.length > RING) probe.comparisons.shift();
      }).observe(latencyEl, { childList: true, characterData: true, subtree: true });
    }
  }

  const start = () => {
    const video = document.getElementById('video') || document.querySelector('video');
    if (video) attach(video);
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start, { once: true });
  else start();
})();
