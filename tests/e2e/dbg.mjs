import { Gateway } from './lib/gateway.mjs';
import { launchBrowser, newContext } from './lib/browser.mjs';
import fs from 'node:fs';
const gw = await new Gateway({ name: 'dbg', stateDir: fs.mkdtempSync('/tmp/lgd-') }).start();
const b = await launchBrowser();
const pages = [];
const stat = (p) => p.evaluate(() => ({ f: __e2e.frames, n: __e2e.samples.length, st: livegate.state, mode: livegate.mode, fps: livegate.fps }));
for (let i = 0; i < 5; i++) {
  const { context } = await newContext(b, gw.origin); const p = await context.newPage(); pages.push(p);
  p.on('console', (m) => console.log(`page${i}`, m.type(), m.text()));
  await p.goto(gw.origin + '/');
  for (let k = 0; k < 6; k++) {
    await new Promise((r) => setTimeout(r, 1000));
    console.log(i, k, JSON.stringify(await Promise.all(pages.map(stat))));
  }
}
console.log(JSON.stringify(await gw.viewers()));
await b.close(); await gw.stop();
