// Starts and stops the real livegate binary for the browser tests.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../..');
export const OUT_DIR = path.join(ROOT, 'target/e2e');

export function gatewayBinary() {
  const bin = process.env.LIVEGATE_BIN || path.join(ROOT, 'target/debug/livegate');
  return path.resolve(ROOT, bin);
}

/** A TCP port nobody listens on right now (for a gateway that restarts on the same port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let webrtcPortBase = 52000;

/**
 * One gateway process. `opts`:
 *   name        label for its log file (target/e2e/logs/<name>.log)
 *   stateDir    folder for the self-signed certificate (shared, so restarts keep the cert)
 *   port        HTTPS port (0 = any)
 *   streams     ['live=test', ...] (default: the gateway's own default)
 *   webrtcBind  address WebRTC media binds to (default 127.0.0.1)
 *   webrtcPort  the one UDP port of its media (default: a fresh one per gateway)
 *   webrtcPorts 'LOW-HIGH': a port per viewer instead
 *   extraArgs   more flags
 *   apiToken    bearer token the test's own API calls carry (an admin token, when tokens are on)
 *   logDir      where its log goes (default target/e2e/logs)
 */
export class Gateway {
  constructor(opts) {
    this.opts = { port: 0, webrtcBind: '127.0.0.1', streams: [], extraArgs: [], ...opts };
    if (!this.opts.webrtcPorts && !this.opts.webrtcPort) this.opts.webrtcPort = webrtcPortBase++;
    this.proc = null;
    this.origin = null;
    this.logLines = [];
    this.starts = 0;
  }

  args() {
    const o = this.opts;
    const args = [
      '--listen', `127.0.0.1:${o.port}`,
      '--webrtc-bind', o.webrtcBind,
      ...(o.webrtcPorts ? ['--webrtc-ports', o.webrtcPorts] : ['--webrtc-port', String(o.webrtcPort)]),
      '--state-dir', o.stateDir,
      '--log-format', 'json',
      '--encoder', 'x264',
    ];
    for (const s of o.streams) args.push('--stream', s);
    // Development only: serve web/ from disk instead of the copy built into the binary.
    if (process.env.LIVEGATE_E2E_WEB_DIR) args.push('--web-dir', path.resolve(ROOT, process.env.LIVEGATE_E2E_WEB_DIR));
    return args.concat(o.extraArgs);
  }

  /** Starts the process and waits until it listens and every stream plays with an HLS playlist. */
  async start({ timeoutMs = 20000 } = {}) {
    if (this.proc) throw new Error('gateway already running');
    this.starts++;
    const logDir = this.opts.logDir || path.join(OUT_DIR, 'logs');
    fs.mkdirSync(logDir, { recursive: true });
    const logPath = path.join(logDir, `${this.opts.name}${this.starts > 1 ? `-${this.starts}` : ''}.log`);
    this.logPath = logPath;
    const log = fs.createWriteStream(logPath);
    const proc = spawn(gatewayBinary(), this.args(), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    proc.stdout.pipe(log, { end: false });

    const listening = new Promise((resolve, reject) => {
      let buf = '';
      proc.stderr.on('data', (chunk) => {
        log.write(chunk);
        buf += chunk.toString();
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          let rec = null;
          try { rec = JSON.parse(line); } catch (_) { /* not JSON */ }
          this.logLines.push(rec || { message: line });
          if (rec && rec.local_addr) resolve(rec.local_addr);
        }
      });
      this.exited.then(({ code, signal }) => reject(new Error(
        `gateway exited early (code ${code}, signal ${signal}); log: ${logPath}`)));
    });
    this.exited.then(() => log.end());

    const deadline = Date.now() + timeoutMs;
    const addr = await Promise.race([listening, sleep(timeoutMs).then(() => {
      throw new Error(`gateway did not log local_addr within ${timeoutMs} ms; log: ${logPath}`);
    })]);
    this.port = Number(addr.split(':').pop());
    this.opts.port = this.port; // a restart reuses the port
    this.origin = `https://127.0.0.1:${this.port}`;
    this.ca = fs.readFileSync(path.join(this.opts.stateDir, 'selfsigned.crt'));

    // Ready = every stream playing and its HLS playlist lists a segment.
    for (;;) {
      try {
        const streams = await this.streams();
        if (streams.length && streams.every((s) => s.state === 'playing')) {
          let ok = true;
          for (const s of streams) {
            const pl = await this.get(s.hls || `/hls/${s.name}/index.m3u8`);
            if (pl.status !== 200 || !/#EXTINF/.test(pl.body)) ok = false;
          }
          if (ok) return this;
        }
      } catch (_) { /* not up yet */ }
      if (Date.now() > deadline) throw new Error(`gateway not ready within ${timeoutMs} ms; log: ${logPath}`);
      await sleep(200);
    }
  }

  /** GET over HTTPS, trusting the gateway's self-signed certificate (and nothing else). */
  get(pathname) {
    return new Promise((resolve, reject) => {
      const headers = this.opts.apiToken ? { Authorization: `Bearer ${this.opts.apiToken}` } : {};
      const req = https.get(this.origin + pathname, { ca: this.ca, timeout: 5000, headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on('timeout', () => req.destroy(new Error(`GET ${pathname}: timeout`)));
      req.on('error', reject);
    });
  }

  async streams() {
    const res = await this.get('/api/streams');
    if (res.status !== 200) throw new Error(`/api/streams: HTTP ${res.status}`);
    return JSON.parse(res.body);
  }

  async viewers() {
    const out = {};
    for (const s of await this.streams()) out[s.name] = s.viewers;
    return out;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. */
  async stop({ graceMs = 5000 } = {}) {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(t);
    }
  }
}
