// The RTSP test camera (tests/support/rtsp_server.py) for browser scenarios.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './gateway.mjs';

/** Starts a camera on `port` with the server's options; resolves once it serves. */
export function startCamera(port, options = []) {
  const proc = spawn('/usr/bin/python3', [path.join(ROOT, 'tests/support/rtsp_server.py'), String(port), ...options], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`the RTSP camera exited (code ${code})`)));
    proc.stdout.on('data', (chunk) => {
      if (chunk.toString().includes('ready')) {
        resolve({
          url: `rtsp://127.0.0.1:${port}/cam`,
          stop: () => new Promise((done) => { proc.once('exit', done); proc.kill(); }),
        });
      }
    });
  });
}
