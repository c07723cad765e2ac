// Latency strip codec: 48 square cells along the top edge of each frame.
// Cells 0..39 = capture time (Unix ms) mod 2^40, cells 40..47 = CRC-8/SMBUS
// of those 5 bytes (big-endian), MSB first, white = 1, black = 0.
// Pure functions only, so this module also runs under Node for tests.

export const CELLS = 48;
export const VALUE_BITS = 40;
export const MOD = 2 ** 40; // exceeds 32 bits: plain Number arithmetic, no bitwise ops on it
export const MAX_LATENCY_MS = 600000;

/** CRC-8/SMBUS: poly 0x07, init 0x00, no reflection, no final XOR. */
export function crc8(bytes) {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b & 0xff;
    for (let i = 0; i < 8; i++) {
      crc = crc & 0x80 ? ((crc << 1) ^ 0x07) & 0xff : (crc << 1) & 0xff;
    }
  }
  return crc;
}

/** 40-bit value -> 5 big-endian bytes (division, since it does not fit in 32 bits). */
export function valueToBytes(value) {
  const out = new Array(5);
  let v = value;
  for (let i = 4; i >= 0; i--) {
    out[i] = v % 256;
    v = Math.floor(v / 256);
  }
  return out;
}

/** Cell side in pixels for a frame of the given width. */
export function cellSize(width) {
  return Math.floor(width / CELLS);
}

/** The 48 bits (MSB first) drawn for a value: 40 value bits then 8 CRC bits. */
export function stripBits(value) {
  const v = ((Math.floor(value) % MOD) + MOD) % MOD;
  const bytes = valueToBytes(v);
  bytes.push(crc8(bytes));
  const bits = [];
  for (const b of bytes) for (let i = 7; i >= 0; i--) bits.push((b >> i) & 1);
  return bits;
}

// Central half of a cell: [round(c/4), round(3c/4)) in both axes.
function centralSpan(c) {
  const a = Math.round(c / 4);
  const b = Math.max(a + 1, Math.round((3 * c) / 4));
  return [a, b];
}

/**
 * Decode the strip from RGBA pixels.
 * imageData: ImageData-like {data, width, height} (or a bare RGBA array whose
 * row stride is `width`) covering at least the top c rows of the frame.
 * width: the frame width W (sets the cell size c = floor(W / 48)).
 * Returns the 40-bit value, or null when the strip is unreadable or the CRC fails.
 */
export function decodeStrip(imageData, width) {
  const data = imageData && imageData.data ? imageData.data : imageData;
  if (!data) return null;
  const W = width || imageData.width;
  const stride = (imageData && imageData.width) || W;
  const rows = (imageData && imageData.height) || Math.floor(data.length / (4 * stride));
  const c = cellSize(W);
  if (c < 2 || stride < CELLS * c) return null;
  const [a, b] = centralSpan(c);
  if (rows < b) return null;

  const bytes = [0, 0, 0, 0, 0, 0];
  for (let k = 0; k < CELLS; k++) {
    const x0 = k * c + a;
    const x1 = k * c + b;
    let sum = 0;
    let n = 0;
    for (let y = a; y < b; y++) {
      let p = (y * stride + x0) * 4;
      for (let x = x0; x < x1; x++, p += 4) {
        sum += data[p] + data[p + 1] + data[p + 2];
        n++;
      }
    }
    if (sum / (3 * n) > 128) bytes[k >> 3] |= 0x80 >> (k & 7);
  }
  const value = bytes.slice(0, 5);
  if (crc8(value) !== bytes[5]) return null;
  let v = 0;
  for (const byte of value) v = v * 256 + byte;
  return v;
}

/**
 * Latency in ms from a decoded strip value and the wall-clock time (epoch ms,
 * may be fractional) at which the frame was shown: (now - value) mod 2^40.
 * Returns null for results above 600000 ms (a decoding error / clock mismatch).
 */
export function latencyFrom(value, nowMs) {
  if (value == null || !Number.isFinite(value) || !Number.isFinite(nowMs)) return null;
  const nowMod = nowMs - Math.floor(nowMs / MOD) * MOD;
  let d = nowMod - value;
  if (d < 0) d += MOD;
  if (d > MAX_LATENCY_MS) return null;
  return d;
}

/**
 * Draw a strip for `value` into a new RGBA buffer of width x height (rest grey).
 * Luma 235/16 become RGB 255/0 after the usual limited-range conversion; we use
 * those full-range values. Used by tests and for debugging.
 */
export function encodeStrip(value, width, height, { white = 255, black = 0, background = 128 } = {}) {
  const c = cellSize(width);
  const h = height || c;
  const data = new Uint8ClampedArray(width * h * 4).fill(background);
  for (let i = 3; i < data.length; i += 4) data[i] = 255;
  const bits = stripBits(value);
  for (let k = 0; k < CELLS; k++) {
    const lum = bits[k] ? white : black;
    for (let y = 0; y < Math.min(c, h); y++) {
      for (let x = k * c; x < (k + 1) * c; x++) {
        const p = (y * width + x) * 4;
        data[p] = data[p + 1] = data[p + 2] = lum;
      }
    }
  }
  return { data, width, height: h };
}
