// Run: node web/strip.test.mjs   (no dependencies)
import assert from 'node:assert/strict';
import {
  crc8, valueToBytes, stripBits, cellSize, decodeStrip, latencyFrom, encodeStrip, MOD,
} from './strip.js';

let passed = 0;
function test(name, fn) {
  fn();
  passed++;
  console.log(`ok - ${name}`);
}

test('CRC-8/SMBUS check value of "123456789" is 0xF4', () => {
  const bytes = [...'123456789'].map((ch) => ch.charCodeAt(0));
  assert.equal(crc8(bytes), 0xf4);
});

test('worked example t = 1795000000123', () => {
  const t = 1795000000123;
  const v = t % MOD;
  assert.equal(v, 695488372347);
  assert.deepEqual(valueToBytes(v), [0xa1, 0xee, 0x56, 0x5e, 0x7b]);
  assert.equal(crc8(valueToBytes(v)), 0xd4);
  const expectedBits = [0xa1, 0xee, 0x56, 0x5e, 0x7b, 0xd4]
    .flatMap((b) => [7, 6, 5, 4, 3, 2, 1, 0].map((i) => (b >> i) & 1));
  assert.deepEqual(stripBits(t), expectedBits);
  assert.equal(cellSize(1280), 26);
});

test('round trip through an RGBA buffer (1280x720 top rows)', () => {
  const t = 1795000000123;
  const img = encodeStrip(t, 1280, 26);
  const v = decodeStrip(img, 1280);
  assert.equal(v, 695488372347);
  assert.equal(latencyFrom(v, t + 85), 85);
});

test('round trip at several widths, with noise and limited-range luma', () => {
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (const width of [640, 854, 1280, 1920, 3840, 97]) {
    for (let i = 0; i < 20; i++) {
      const value = Math.floor(rnd() * MOD);
      const c = cellSize(width);
      const img = encodeStrip(value, width, c + 5, { white: 235, black: 16 });
      // Noise plus smeared cell edges, as after lossy compression.
      for (let p = 0; p < img.data.length; p += 4) {
        const x = (p / 4) % width;
        const edge = c >= 8 && (x % c === 0 || x % c === c - 1);
        for (let ch = 0; ch < 3; ch++) {
          img.data[p + ch] = edge ? 128 : img.data[p + ch] + Math.round((rnd() - 0.5) * 60);
        }
      }
      assert.equal(decodeStrip(img, width), value, `width ${width} value ${value}`);
    }
  }
});

test('a flipped bit fails the CRC and returns null', () => {
  const t = 1795000000123;
  const width = 1280;
  const c = cellSize(width);
  for (const k of [0, 17, 39, 40, 47]) {
    const img = encodeStrip(t, width, c);
    // Invert cell k entirely.
    for (let y = 0; y < c; y++) {
      for (let x = k * c; x < (k + 1) * c; x++) {
        const p = (y * width + x) * 4;
        for (let ch = 0; ch < 3; ch++) img.data[p + ch] = 255 - img.data[p + ch];
      }
    }
    assert.equal(decodeStrip(img, width), null, `bit ${k}`);
  }
});

test('too small or missing input returns null', () => {
  assert.equal(decodeStrip(null, 1280), null);
  assert.equal(decodeStrip(encodeStrip(1, 64, 1), 64), null); // c = 1
  const img = encodeStrip(1795000000123, 1280, 26);
  assert.equal(decodeStrip({ data: img.data.subarray(0, 1280 * 4 * 5), width: 1280, height: 5 }, 1280), null);
});

test('latencyFrom handles wrap-around and rejects implausible values', () => {
  assert.equal(latencyFrom(MOD - 10, 3 * MOD + 40), 50); // value just before the 2^40 wrap
  assert.equal(latencyFrom(1000, 1000), 0);
  assert.equal(latencyFrom(1000, 1000 + 600000), 600000);
  assert.equal(latencyFrom(1000, 1000 + 600001), null);
  assert.equal(latencyFrom(1000, 999), null); // capture clock ahead of ours
  assert.equal(latencyFrom(null, 1000), null);
  assert.equal(latencyFrom(695488372347, 1795000000123 + 12.5), 12.5);
});

console.log(`\n${passed} tests passed`);
