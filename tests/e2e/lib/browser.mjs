// Debian's Chromium, driven by playwright-core (never a downloaded browser).
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { OUT_DIR } from './gateway.mjs';

export const CHROMIUM = process.env.LIVEGATE_E2E_CHROMIUM || '/usr/bin/chromium';
const PROBE = fs.readFileSync(new URL('./probe.js', import.meta.url), 'utf8');

export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install chromium`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true, // Playwright makes a fresh --user-data-dir per launch
    args: [
      '--headless=new',
      '--no-sandbox', // we run as root
      '--disable-gpu',
      '--disable-quic',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--allow-loopback-in-peer-connection',
      '--ignore-certificate-errors', // the gateway's self-signed certificate, tests only
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
}

/**
 * A fresh context (own cookies, cache) whose pages carry the test probe, plus a record of
 * everything "unclean" a page does: console errors, uncaught exceptions, requests to any other
 * origin than the gateway's, insecure (http:/ws:) requests.
 */
const consoleOf = new WeakMap();
/** The page's console messages so far (for failure messages). */
export function pageConsole(page) {
  return consoleOf.get(page) || [];
}

export async function newContext(browser, origin, { initScripts = [] } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: true });
  for (const s of initScripts) await context.addInitScript(s);
  await context.addInitScript(PROBE);
  const report = { consoleErrors: [], pageErrors: [], foreignRequests: [], insecure: [], console: [] };
  const watch = (page) => {
    consoleOf.set(page, []);
    page.on('console', (msg) => {
      const text = `${msg.type()}: ${msg.text()}`;
      report.console.push(text);
      consoleOf.get(page).push(`${new Date().toISOString().slice(11, 23)} ${text}`);
      if (msg.type() === 'error') report.consoleErrors.push(text);
      if (/mixed content/i.test(msg.text())) report.insecure.push(text);
    });
    page.on('pageerror', (err) => report.pageErrors.push(String(err && err.stack || err)));
    page.on('websocket', (ws) => checkUrl(ws.url()));
  };
  const checkUrl = (url) => {
    if (url.startsWith('data:') || url.startsWith('blob:')) return;
    const u = new URL(url);
    if (u.protocol === 'http:' || u.protocol === 'ws:') report.insecure.push(url);
    const o = u.origin.replace(/^wss:/, 'https:');
    if (o !== origin) report.foreignRequests.push(url);
  };
  context.on('page', watch);
  context.on('request', (req) => checkUrl(req.url())); // pages and their workers
  return { context, report };
}

export function assertClean(report, assert, what) {
  assert.deepEqual(report.pageErrors, [], `${what}: uncaught exceptions`);
  assert.deepEqual(report.consoleErrors, [], `${what}: console errors`);
  assert.deepEqual(report.foreignRequests, [], `${what}: requests to another origin`);
  assert.deepEqual(report.insecure, [], `${what}: insecure (mixed) content`);
}

export async function screenshot(page, name) {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const file = path.join(OUT_DIR, `${name}.png`);
  await page.screenshot({ path: file });
  console.log(`screenshot: ${path.relative(process.cwd(), file)}`);
  return file;
}

/** What a person sees: the overlay and info bar texts, plus the page's own stats. */
export function readPage(page) {
  return page.evaluate(() => {
    const t = (id) => (document.getElementById(id) || {}).textContent || '';
    const v = document.getElementById('video');
    return {
      mode: t('mode'), state: t('state'), resolution: t('resolution'), fps: t('fps'),
      latency: t('latency'), streamName: t('stream-name'), select: (document.getElementById('stream-select') || {}).value,
      url: location.href,
      video: { w: v.videoWidth, h: v.videoHeight, paused: v.paused, src: v.currentSrc, srcObject: !!v.srcObject },
      lg: window.livegate && { mode: window.livegate.mode, framesShown: window.livegate.framesShown, latencyMs: window.livegate.latencyMs },
      probe: { frames: window.__e2e.frames, decoded: window.__e2e.decoded },
    };
  });
}
