// A plain static HTTP server on 127.0.0.1 for the original design's HLS output, plus the player
// page's files from web/ and a one-entry /api/streams pointing the page at that playlist, so
// the unchanged player page (same hls.js, same settings) plays the baseline.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.m3u8': 'application/vnd.apple.mpegurl', '.ts': 'video/mp2t', '.json': 'application/json',
};

/**
 * Serves `webDir` at /, `hlsDir` at /hls/<stream>/, and /api/streams, /api/config.
 * Playlists go out with `Cache-Control: no-cache` (else the browser's heuristic cache could serve
 * a stale one); everything else as a plain file server would (Last-Modified, no Cache-Control).
 */
export function startStaticServer({ webDir, hlsDir, stream = 'baseline', width = 1280, height = 720, fps = 30 }) {
  const streams = [{
    name: stream, source: 'gst-launch baseline', state: 'playing', error: null, width, height, fps, viewers: 0,
    hls: `/hls/${stream}/index.m3u8`, whep: null, ws: null, player: `/?stream=${stream}`,
  }];
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    requests.push({ t: Date.now(), path: url.pathname });
    if (url.pathname === '/api/streams') return send(res, 200, 'application/json', JSON.stringify(streams), true);
    if (url.pathname === '/api/config') return send(res, 200, 'application/json', '{"iceServers":[]}', true);
    let file;
    const prefix = `/hls/${stream}/`;
    if (url.pathname.startsWith(prefix)) file = path.join(hlsDir, path.basename(url.pathname.slice(prefix.length)));
    else file = path.join(webDir, path.normalize(url.pathname === '/' ? '/index.html' : url.pathname));
    if (!file.startsWith(webDir) && !file.startsWith(hlsDir)) return send(res, 403, 'text/plain', 'forbidden');
    fs.readFile(file, (err, body) => {
      if (err) return send(res, 404, 'text/plain', 'not found');
      const ext = path.extname(file);
      let mtime = null;
      try { mtime = fs.statSync(file).mtime.toUTCString(); } catch (_) { /* raced with deletion */ }
      res.writeHead(200, {
        'Content-Type': TYPES[ext] || 'application/octet-stream',
        'Content-Length': body.length,
        ...(mtime ? { 'Last-Modified': mtime } : {}),
        ...(ext === '.m3u8' ? { 'Cache-Control': 'no-cache' } : {}),
      });
      res.end(body);
    });
    return undefined;
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({ origin: `http://127.0.0.1:${port}`, requests, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

function send(res, status, type, body, noStore = false) {
  res.writeHead(status, { 'Content-Type': type, ...(noStore ? { 'Cache-Control': 'no-store' } : {}) });
  res.end(body);
}
