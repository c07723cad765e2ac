// Assertions on what a person would see, shared by the scenarios.
import assert from 'node:assert/strict';
import { pageConsole, readPage } from './browser.mjs';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until the page says it plays in `mode` and the test's own frame counter moves,
 * by `deadline` (epoch ms). Returns the time it took from `since`.
 */
export async function waitPlaying(page, mode, deadline, since) {
  const timeout = Math.max(1, deadline - Date.now());
  try {
    await page.waitForFunction((m) => {
      const el = (id) => document.getElementById(id).textContent;
      const p = window.__e2e;
      if (el('mode') !== m || el('state') !== 'playing' || !p) return false;
      p.seen = p.seen || { frames: p.frames, at: performance.now() };
      return p.frames >= p.seen.frames + 3; // several new frames after it said "playing"
    }, mode, { timeout, polling: 100 });
  } catch (e) {
    const seen = await readPage(page).catch(() => null);
    assert.fail(`not playing ${mode} within ${Math.round((deadline - since) / 1000)} s; page: ${JSON.stringify(seen)}; `
      + `console:\n  ${pageConsole(page).slice(-15).join('\n  ')}`);
  }
  await page.evaluate(() => { delete window.__e2e.seen; });
  return Date.now() - since;
}

/**
 * Frames keep advancing for `ms`: the rVFC count grows at a plausible rate, the capture
 * times decoded from the strip move forward, every frame is WxH, and the page shows the
 * same resolution. Returns {fps, frames}.
 */
export async function assertAdvancing(page, { ms = 2000, width = 1280, height = 720, minFps = 10 } = {}) {
  const before = await page.evaluate(() => ({ frames: window.__e2e.frames, n: window.__e2e.samples.length, t: performance.now() }));
  await sleep(ms);
  const after = await page.evaluate((n0) => {
    const p = window.__e2e;
    return { frames: p.frames, t: performance.now(), samples: p.samples.slice(-Math.min(p.samples.length, 200)) };
  }, before.n);
  const fps = ((after.frames - before.frames) * 1000) / (after.t - before.t);
  if (fps < minFps) {
    assert.fail(`frames advance at ${fps.toFixed(1)} fps (want >= ${minFps}); page: ${JSON.stringify(await readPage(page))}; `
      + `console:\n  ${pageConsole(page).slice(-15).join('\n  ')}`);
  }
  const recent = after.samples.filter((s) => s.t >= before.t);
  assert.ok(recent.length >= 2, 'frame samples recorded');
  for (const s of recent) assert.equal(`${s.w}x${s.h}`, `${width}x${height}`, 'decoded frame size');
  const values = recent.map((s) => s.value).filter((v) => v !== null);
  assert.ok(values.length >= recent.length / 2, `strip decoded on ${values.length} of ${recent.length} frames`);
  assert.ok(values[values.length - 1] - values[0] >= ms / 3,
    `picture moves: capture times advanced ${values[values.length - 1] - values[0]} ms in ${ms} ms `
    + `(${recent.length} frame callbacks, ${values.length} decoded, visibility ${await page.evaluate(() => document.visibilityState)})`);
  const shown = await readPage(page);
  assert.equal(shown.resolution, `${width}x${height}`, 'page shows the resolution');
  return { fps: Math.round(fps * 10) / 10, frames: after.frames - before.frames };
}

/**
 * The latency the page displays is below `maxMs`, and agrees (within `tolerance` ms) with the
 * test's own decode of the same frames every time the readout changes over `ms`.
 */
export async function assertLatency(page, { maxMs, ms = 2000, tolerance = 100 }) {
  await page.waitForFunction(() => document.getElementById('latency').textContent.trim() !== '', null, { timeout: 5000 })
    .catch(() => assert.fail('page shows no latency'));
  const t0 = await page.evaluate(() => performance.now());
  await sleep(ms);
  const { comparisons, displayed } = await page.evaluate((t) => ({
    comparisons: window.__e2e.comparisons.filter((c) => c.t >= t),
    displayed: Number(document.getElementById('latency').textContent),
  }), t0);
  assert.ok(comparisons.length >= 3, `page latency readout updated ${comparisons.length} times in ${ms} ms`);
  const worst = comparisons.reduce((w, c) => (Math.abs(c.displayed - c.mine) > Math.abs(w.displayed - w.mine) ? c : w));
  assert.ok(Math.abs(worst.displayed - worst.mine) <= tolerance,
    `page says ${worst.displayed} ms, independent decode says ${worst.mine} ms (tolerance ${tolerance})`);
  for (const c of comparisons) assert.ok(c.displayed < maxMs, `displayed latency ${c.displayed} ms < ${maxMs} ms`);
  assert.ok(Number.isFinite(displayed) && displayed >= 0 && displayed < maxMs, `displayed latency ${displayed} ms < ${maxMs}`);
  const mine = comparisons.map((c) => c.mine);
  return { displayed, independent: mine[mine.length - 1], maxDiff: Math.abs(worst.displayed - worst.mine), samples: comparisons.length };
}

export async function pageSays(page) {
  return readPage(page);
}

export async function waitViewers(gw, expected, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await gw.viewers();
    if (Object.entries(expected).every(([k, v]) => last[k] === v)) return Date.now() - (deadline - timeoutMs);
    if (Date.now() > deadline) assert.fail(`viewers ${JSON.stringify(last)}, want ${JSON.stringify(expected)} within ${timeoutMs} ms`);
    await sleep(200);
  }
}
