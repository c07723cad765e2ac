//! One UDP socket for the media of every viewer (`--webrtc-port`).
//!
//! webrtc-rs binds a socket per peer connection and has no mux of its own, but it asks its
//! [`Runtime`] to wrap each socket it binds. Every peer therefore gets a [`PeerRuntime`]: it
//! does what `TokioRuntime` does, except that `wrap_udp_socket` closes the socket webrtc-rs just
//! bound (an ephemeral port, used from then on only as a name) and returns a [`PeerSocket`] on
//! the shared one. The gateway advertises the shared port in its candidates instead.
//!
//! One task receives for everyone (`recvmmsg`) and hands each datagram to its peer:
//! - a STUN binding request names its peer in USERNAME (`<our ufrag>:<theirs>`), registered from
//!   the peer's answer, and the address it came from is then that peer's;
//! - anything else (a STUN response, DTLS, SRTCP) goes by the address it came from, learnt from
//!   those requests or from the peer's own checks to an address no other peer has.
//!
//! Sends go straight to the shared socket (UDP GSO where the kernel has it, with the source
//! address of the peer's candidate). A full socket buffer drops the datagram, as a congested
//! link would: a shared socket has one waker, and a viewer must not wait on the others.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime, TokioRuntime,
    Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE,
};

/// Datagrams waiting for one peer's driver. Viewers send us little (STUN, DTLS, RTCP).
const INBOX: usize = 128;
/// Receive buffer per message of a `recvmmsg` batch: room for GRO-coalesced datagrams.
const RECEIVE_BUFFER: usize = 64 * 1024;
/// Kernel buffers of the shared socket (capped by net.core.[rw]mem_max).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A peer's key in the routing table.
type PeerId = u64;

/// What the shared socket saw that no peer could take.
#[derive(Debug, Default)]
pub struct MuxCounters {
    /// Received from an address no peer knows, or for a ufrag no peer has.
    pub unroutable: AtomicU64,
    /// Dropped because the peer's inbox was full.
    pub inbox_full: AtomicU64,
    /// Not sent because the socket's send buffer was full.
    pub send_buffer_full: AtomicU64,
}

/// One received datagram on its way to a peer.
struct Datagram {
    data: Bytes,
    from: SocketAddr,
}

#[derive(Default)]
struct PeerRoutes {
    ufrag: Option<String>,
    remotes: Vec<SocketAddr>,
    /// One per local address the peer gathered on.
    inboxes: Vec<(IpAddr, mpsc::Sender<Datagram>)>,
}

#[derive(Default)]
struct Routes {
    next_peer: PeerId,
    peers: HashMap<PeerId, PeerRoutes>,
    by_ufrag: HashMap<String, PeerId>,
    by_remote: HashMap<SocketAddr, PeerId>,
}

impl Routes {
    fn claim(&mut self, remote: SocketAddr, peer: PeerId) {
        if let Some(previous) = self.by_remote.insert(remote, peer).filter(|p| *p != peer) {
            if let Some(routes) = self.peers.get_mut(&previous) {
                routes.remotes.retain(|r| *r != remote);
            }
        }
        if let Some(routes) = self.peers.get_mut(&peer) {
            if !routes.remotes.contains(&remote) {
                routes.remotes.push(remote);
            }
        }
    }

    fn inbox(&self, peer: PeerId, local: Option<IpAddr>) -> Option<&mpsc::Sender<Datagram>> {
        let inboxes = &self.peers.get(&peer)?.inboxes;
        inboxes.iter().find(|(ip, _)| Some(*ip) == local).or(inboxes.first()).map(|(_, inbox)| inbox)
    }
}

/// The shared socket and who is behind it.
pub struct UdpMux {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    routes: Mutex<Routes>,
    pub counters: MuxCounters,
}

impl std::fmt::Debug for UdpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpMux").field("local", &self.local).finish()
    }
}

impl UdpMux {
    /// Binds the shared socket and starts receiving for every peer until `shutdown`.
    pub fn bind(addr: SocketAddr, shutdown: CancellationToken) -> io::Result<Arc<UdpMux>> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        for (what, result) in [
            ("send", state.set_send_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER)),
            ("receive", state.set_recv_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER)),
        ] {
            if let Err(err) = result {
                tracing::debug!(error = %err, "could not enlarge the shared socket's {what} buffer");
            }
        }
        let local = io.local_addr()?;
        let mux = Arc::new(UdpMux { io, state, local, routes: Default::default(), counters: Default::default() });
        tokio::spawn(mux.clone().receive(shutdown));
        Ok(mux)
    }

    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// A new peer: its runtime, and the lease that forgets its routes when dropped.
    pub fn peer(self: &Arc<Self>) -> (Arc<dyn Runtime>, MuxLease) {
        let mut routes = self.routes.lock().expect("mux routes lock");
        routes.next_peer += 1;
        let peer = routes.next_peer;
        routes.peers.insert(peer, PeerRoutes::default());
        (Arc::new(PeerRuntime { mux: self.clone(), peer }), MuxLease { mux: self.clone(), peer })
    }

    async fn receive(self: Arc<Self>, shutdown: CancellationToken) {
        let mut buffers = vec![vec![0u8; RECEIVE_BUFFER]; BATCH_SIZE];
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.io.async_io(tokio::io::Interest::READABLE, || {
                    let mut slices: Vec<IoSliceMut> = buffers.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                    self.state.recv(UdpSockRef::from(&self.io), &mut slices, &mut meta)
                }) => received,
            };
            let count = match received {
                Ok(count) => count,
                Err(err) => {
                    // ICMP errors of earlier sends surface here; the socket itself is fine.
                    tracing::debug!(error = %err, "shared WebRTC socket receive error");
                    continue;
                }
            };
            for (buffer, meta) in buffers.iter().zip(&meta).take(count) {
                let stride = meta.stride.max(1);
                for datagram in buffer[..meta.len].chunks(stride) {
                    self.dispatch(datagram, meta.addr, meta.dst_ip);
                }
            }
        }
    }

    fn dispatch(&self, datagram: &[u8], from: SocketAddr, to: Option<IpAddr>) {
        let mut routes = self.routes.lock().expect("mux routes lock");
        let peer = match stun_request_local_ufrag(datagram) {
            Some(ufrag) => {
                let peer = routes.by_ufrag.get(ufrag).copied();
                if let Some(peer) = peer {
                    routes.claim(from, peer);
                }
                peer
            }
            None => routes.by_remote.get(&from).copied(),
        };
        let Some(inbox) = peer.and_then(|peer| routes.inbox(peer, to)) else {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if inbox.try_send(Datagram { data: Bytes::copy_from_slice(datagram), from }).is_err() {
            self.counters.inbox_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn register_ufrag(&self, peer: PeerId, ufrag: &str) -> Result<(), String> {
        let mut routes = self.routes.lock().expect("mux routes lock");
        if routes.by_ufrag.contains_key(ufrag) {
            return Err(format!("ICE ufrag {ufrag:?} is already in use on the shared port"));
        }
        routes.by_ufrag.insert(ufrag.to_owned(), peer);
        if let Some(routes) = routes.peers.get_mut(&peer) {
            routes.ufrag = Some(ufrag.to_owned());
        }
        Ok(())
    }

    /// The peer checks `remote`: its answers come back to that peer, unless another peer's
    /// checks (or requests) got there first.
    fn checking(&self, peer: PeerId, remote: SocketAddr) {
        let mut routes = self.routes.lock().expect("mux routes lock");
        if !routes.by_remote.contains_key(&remote) {
            routes.claim(remote, peer);
        }
    }

    fn send(&self, transmit: &Transmit<'_>) -> io::Result<usize> {
        match self.state.try_send(UdpSockRef::from(&self.io), transmit) {
            Ok(()) => Ok(transmit.contents.len()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.counters.send_buffer_full.fetch_add(1, Ordering::Relaxed);
                Ok(transmit.contents.len())
            }
            Err(err) => Err(err),
        }
    }

    fn forget(&self, peer: PeerId) {
        let mut routes = self.routes.lock().expect("mux routes lock");
        let Some(gone) = routes.peers.remove(&peer) else { return };
        if let Some(ufrag) = gone.ufrag {
            routes.by_ufrag.remove(&ufrag);
        }
        for remote in gone.remotes {
            if routes.by_remote.get(&remote) == Some(&peer) {
                routes.by_remote.remove(&remote);
            }
        }
    }

    /// Peers with routes, for tests and diagnostics.
    pub fn peers(&self) -> usize {
        self.routes.lock().expect("mux routes lock").peers.len()
    }
}

/// A peer's place on the shared socket, until dropped.
pub struct MuxLease {
    mux: Arc<UdpMux>,
    peer: PeerId,
}

impl MuxLease {
    pub fn port(&self) -> u16 {
        self.mux.port()
    }

    /// Routes STUN requests for `ufrag` (the `a=ice-ufrag` of the peer's answer) to this peer.
    pub fn register_ufrag(&self, ufrag: &str) -> Result<(), String> {
        self.mux.register_ufrag(self.peer, ufrag)
    }
}

impl Drop for MuxLease {
    fn drop(&mut self) {
        self.mux.forget(self.peer);
    }
}

/// The local ufrag of a STUN binding request (RFC 8445 § 7.2.2: USERNAME is `ours:theirs`).
fn stun_request_local_ufrag(datagram: &[u8]) -> Option<&str> {
    const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    if datagram.len() < 20 || datagram[0..2] != BINDING_REQUEST || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let mut attributes = datagram.get(20..20 + length)?;
    while attributes.len() >= 4 {
        let kind = u16::from_be_bytes([attributes[0], attributes[1]]);
        let size = usize::from(u16::from_be_bytes([attributes[2], attributes[3]]));
        let value = attributes.get(4..4 + size)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        attributes = attributes.get((4 + size).next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// `TokioRuntime`, except that the UDP sockets it wraps are views of the shared one.
#[derive(Debug)]
struct PeerRuntime {
    mux: Arc<UdpMux>,
    peer: PeerId,
}

impl Runtime for PeerRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn spawn_reactor(&self, pool_size: usize, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The address stays the socket's name inside webrtc-rs; the port itself is let go.
        let local = socket.local_addr()?;
        drop(socket);
        let (inbox, received) = mpsc::channel(INBOX);
        let mut routes = self.mux.routes.lock().expect("mux routes lock");
        let peer = routes.peers.get_mut(&self.peer).ok_or_else(|| io::Error::other("peer already left"))?;
        peer.inboxes.push((local.ip(), inbox));
        // A socket bound to one address sends from it anyway; a wildcard one is told which.
        let source = self.mux.local.ip().is_unspecified().then_some(local.ip());
        Ok(Arc::new(PeerSocket {
            mux: self.mux.clone(),
            peer: self.peer,
            local,
            source,
            received: Mutex::new(received),
        }))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.yield_now()
    }

    fn name(&self) -> &'static str {
        "livegate-udp-mux"
    }
}

/// One peer's view of the shared socket, for one of its local addresses.
#[derive(Debug)]
struct PeerSocket {
    mux: Arc<UdpMux>,
    peer: PeerId,
    local: SocketAddr,
    source: Option<IpAddr>,
    received: Mutex<mpsc::Receiver<Datagram>>,
}

impl AsyncUdpSocket for PeerSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // STUN (the two top bits clear) is how a peer starts talking to an address.
        if transmit.contents.first().is_some_and(|b| b & 0xc0 == 0) {
            self.mux.checking(self.peer, transmit.destination);
        }
        let transmit = Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: self.source,
        };
        Poll::Ready(self.mux.send(&transmit))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut received = self.received.lock().expect("peer inbox lock");
        let mut filled = 0;
        while filled < bufs.len().min(meta.len()) {
            let datagram = if filled == 0 {
                match received.poll_recv(cx) {
                    Poll::Ready(Some(datagram)) => datagram,
                    Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match received.try_recv() {
                    Ok(datagram) => datagram,
                    Err(_) => break,
                }
            };
            let len = datagram.data.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&datagram.data[..len]);
            meta[filled].addr = datagram.from;
            meta[filled].len = len;
            meta[filled].stride = len.max(1);
            meta[filled].ecn = None;
            meta[filled].dst_ip = Some(self.local.ip());
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }

    fn max_gso_segments(&self) -> usize {
        self.mux.state.max_gso_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with USERNAME `user` after a PRIORITY attribute.
    fn binding_request(user: &str) -> Vec<u8> {
        let mut attributes = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        attributes.extend_from_slice(&0x0006u16.to_be_bytes());
        attributes.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attributes.extend_from_slice(user.as_bytes());
        attributes.resize(attributes.len().next_multiple_of(4), 0);
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        message.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        message.extend_from_slice(&[7; 12]);
        message.extend_from_slice(&attributes);
        message
    }

    #[test]
    fn finds_our_ufrag_in_binding_requests_only() {
        assert_eq!(stun_request_local_ufrag(&binding_request("ours:theirs")), Some("ours"));
        let mut response = binding_request("ours:theirs");
        response[0..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(stun_request_local_ufrag(&response), None, "responses carry no USERNAME to trust");
        let truncated = binding_request("ours:theirs");
        assert_eq!(stun_request_local_ufrag(&truncated[..truncated.len() - 8]), None);
        assert_eq!(stun_request_local_ufrag(&[0x80; 40]), None, "RTP is not STUN");
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_by_address_and_forgets_a_peer_that_left() {
        let shutdown = CancellationToken::new();
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), shutdown.clone()).unwrap();
        let (runtime_a, lease_a) = mux.peer();
        let (runtime_b, lease_b) = mux.peer();
        let ephemeral = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket_a = runtime_a.wrap_udp_socket(ephemeral()).unwrap();
        let socket_b = runtime_b.wrap_udp_socket(ephemeral()).unwrap();
        lease_a.register_ufrag("aaaa").unwrap();
        lease_b.register_ufrag("bbbb").unwrap();
        assert!(lease_b.register_ufrag("aaaa").is_err(), "a ufrag routes to one peer");

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let receive = |socket: Arc<dyn AsyncUdpSocket>| async move {
            let mut buf = [0u8; 1500];
            let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .expect("delivered")
                .unwrap();
            (buf[..len].to_vec(), from)
        };
        client.send_to(&binding_request("bbbb:client"), mux.local).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await, (binding_request("bbbb:client"), client.local_addr().unwrap()));
        client.send_to(b"\x16dtls", mux.local).await.unwrap();
        assert_eq!(receive(socket_b.clone()).await.0, b"\x16dtls", "then by the address the request came from");

        socket_a.send_to(&binding_request("client:aaaa"), client.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 1500];
        let (_, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(from.port(), mux.port(), "peers send from the shared port");

        drop(lease_b);
        client.send_to(b"\x16dtls", mux.local).await.unwrap();
        client.send_to(&binding_request("aaaa:client"), mux.local).await.unwrap();
        assert_eq!(receive(socket_a).await.0, binding_request("aaaa:client"), "b's address went with b");
        assert_eq!(mux.counters.unroutable.load(Ordering::Relaxed), 1);
        assert_eq!(mux.peers(), 1);
        shutdown.cancel();
    }
}
