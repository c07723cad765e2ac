// Injected (as an init script, beside tests/e2e/lib/probe.js) into the bench's pages: marks, on
// the page's clock (ms since the navigation started), when each step towards the first frame
// happened, and keeps the page's RTCPeerConnections for getStats(), so the bench can say where
// the time goes. Wraps RTCPeerConnection and WebSocket without changing what they do.
(() => {
  const marks = {};
  const mark = (k) => { if (!(k in marks)) marks[k] = Math.round(performance.now()); };
  const pcs = []; // for getStats() from the bench
  window.__bench = { marks, pcs };
  document.addEventListener('DOMContentLoaded', () => mark('domContentLoaded'));
  for (const ev of ['loadedmetadata', 'playing']) document.addEventListener(ev, () => mark(`video_${ev}`), true);

  const PC = window.RTCPeerConnection;
  if (typeof PC === 'function') {
    const Wrapped = function RTCPeerConnection(...args) {
      mark('pc_created');
      const pc = new PC(...args);
      pcs.push(pc);
      pc.addEventListener('icecandidate', (e) => mark(e.candidate ? 'ice_first_local_candidate' : 'ice_gathering_done'));
      pc.addEventListener('iceconnectionstatechange', () => mark(`ice_${pc.iceConnectionState}`));
      pc.addEventListener('connectionstatechange', () => mark(`pc_${pc.connectionState}`));
      pc.addEventListener('track', () => mark('pc_track'));
      const createOffer = pc.createOffer.bind(pc);
      pc.createOffer = (...a) => createOffer(...a).then((o) => { mark('offer_created'); return o; });
      const setLocal = pc.setLocalDescription.bind(pc);
      pc.setLocalDescription = (...a) => setLocal(...a).then((r) => { mark('offer_applied'); return r; });
      const setRemote = pc.setRemoteDescription.bind(pc);
      pc.setRemoteDescription = (d) => {
        mark('answer_received');
        return setRemote(d).then((r) => { mark('answer_applied'); return r; });
      };
      return pc;
    };
    Wrapped.prototype = PC.prototype;
    window.RTCPeerConnection = Wrapped;
  }
  const WS = window.WebSocket;
  if (typeof WS === 'function') {
    const Wrapped = function WebSocket(...args) {
      mark('ws_created');
      const ws = new WS(...args);
      ws.addEventListener('open', () => mark('ws_open'));
      return ws;
    };
    Wrapped.prototype = WS.prototype;
    for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Wrapped[k] = WS[k];
    window.WebSocket = Wrapped;
  }
})();
