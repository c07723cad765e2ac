//! One port for the media of every viewer: UDP (`--webrtc-port`) and ICE over TCP
//! (`--webrtc-tcp-port`, RFC 6544 passive candidates).
//!
//! webrtc-rs binds a socket (and a TCP listener) per peer connection and has no mux of its own,
//! but it asks its [`Runtime`] to wrap each one it binds. Every peer therefore gets a
//! [`PeerRuntime`]: it does what `TokioRuntime` does, except that `wrap_udp_socket` and
//! `wrap_tcp_listener` close what webrtc-rs just bound (an ephemeral port, used from then on only
//! as a name) and return the peer's view of the shared socket or listener. The gateway advertises
//! the shared ports in its candidates instead (`Advertised`).
//!
//! Who gets what arrives:
//! - a STUN binding request names its peer in USERNAME (`<our ufrag>:<theirs>`), registered from
//!   the peer's answer; on UDP, the address it came from is then that peer's, and on TCP the
//!   connection it opened is;
//! - any other datagram (a STUN response, DTLS, SRTCP) goes by the address it came from, learnt
//!   from those requests or from the peer's own checks to an address no other peer has.

mod tcp;
mod udp;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

/// A peer's key in the routing table.
type PeerId = u64;

/// What arrived on the shared port that no peer could take.
#[derive(Debug, Default)]
pub struct MuxCounters {
    /// Datagrams from an address no peer knows, or for a ufrag no peer has.
    pub unroutable: AtomicU64,
    /// Datagrams dropped because the peer's inbox was full.
    pub inbox_full: AtomicU64,
    /// Datagrams not sent because the socket's send buffer was full.
    pub send_buffer_full: AtomicU64,
    /// TCP connections closed before they named a peer.
    pub tcp_unnamed: AtomicU64,
}

#[derive(Default)]
struct PeerRoutes {
    ufrag: Option<String>,
    remotes: Vec<SocketAddr>,
    /// One per local address the peer gathered on.
    datagrams: Vec<(IpAddr, mpsc::Sender<udp::Datagram>)>,
    connections: Vec<(IpAddr, mpsc::Sender<tcp::Accepted>)>,
}

#[derive(Default)]
struct Routes {
    next_peer: PeerId,
    peers: HashMap<PeerId, PeerRoutes>,
    by_ufrag: HashMap<String, PeerId>,
    by_remote: HashMap<SocketAddr, PeerId>,
}

/// The sender of the peer's inbox for `local`, or its first one.
fn inbox_for<T>(inboxes: &[(IpAddr, mpsc::Sender<T>)], local: Option<IpAddr>) -> Option<&mpsc::Sender<T>> {
    inboxes.iter().find(|(ip, _)| Some(*ip) == local).or(inboxes.first()).map(|(_, inbox)| inbox)
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

    fn peer_of_ufrag(&self, ufrag: &str) -> Option<(PeerId, &PeerRoutes)> {
        let peer = *self.by_ufrag.get(ufrag)?;
        Some((peer, self.peers.get(&peer)?))
    }
}

/// The shared socket and listener, and who is behind them.
pub struct SharedPort {
    udp: udp::Socket,
    tcp: Option<tcp::Listener>,
    routes: Mutex<Routes>,
    pub counters: MuxCounters,
}

impl std::fmt::Debug for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPort").field("udp", &self.udp.local).field("tcp", &self.tcp_port()).finish()
    }
}

impl SharedPort {
    /// Binds UDP `udp` and, if given, TCP `tcp`, and serves every peer on them until `shutdown`.
    pub fn bind(udp: SocketAddr, tcp: Option<SocketAddr>, shutdown: CancellationToken) -> io::Result<Arc<SharedPort>> {
        let port = Arc::new(SharedPort {
            udp: udp::Socket::bind(udp)?,
            tcp: tcp.map(tcp::Listener::bind).transpose()?,
            routes: Default::default(),
            counters: Default::default(),
        });
        tokio::spawn(udp::receive(port.clone(), shutdown.clone()));
        if port.tcp.is_some() {
            tokio::spawn(tcp::accept(port.clone(), shutdown));
        }
        Ok(port)
    }

    pub fn udp_port(&self) -> u16 {
        self.udp.local.port()
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp.as_ref().map(|tcp| tcp.local.port())
    }

    /// A new peer: its runtime, and the lease that forgets its routes when dropped.
    pub fn peer(self: &Arc<Self>) -> (Arc<dyn Runtime>, PeerLease) {
        let mut routes = self.routes.lock().expect("routes lock");
        routes.next_peer += 1;
        let peer = routes.next_peer;
        routes.peers.insert(peer, PeerRoutes::default());
        (Arc::new(PeerRuntime { port: self.clone(), peer }), PeerLease { port: self.clone(), peer })
    }

    fn register_ufrag(&self, peer: PeerId, ufrag: &str) -> Result<(), String> {
        let mut routes = self.routes.lock().expect("routes lock");
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
        let mut routes = self.routes.lock().expect("routes lock");
        if !routes.by_remote.contains_key(&remote) {
            routes.claim(remote, peer);
        }
    }

    fn forget(&self, peer: PeerId) {
        let mut routes = self.routes.lock().expect("routes lock");
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
        self.routes.lock().expect("routes lock").peers.len()
    }
}

/// A peer's place on the shared port, until dropped.
pub struct PeerLease {
    port: Arc<SharedPort>,
    peer: PeerId,
}

impl PeerLease {
    pub fn udp_port(&self) -> u16 {
        self.port.udp_port()
    }

    /// Routes STUN requests for `ufrag` (the `a=ice-ufrag` of the peer's answer) to this peer.
    pub fn register_ufrag(&self, ufrag: &str) -> Result<(), String> {
        self.port.register_ufrag(self.peer, ufrag)
    }
}

impl Drop for PeerLease {
    fn drop(&mut self) {
        self.port.forget(self.peer);
    }
}

/// The local ufrag of a STUN binding request (RFC 8445 § 7.2.2: USERNAME is `ours:theirs`).
fn stun_request_local_ufrag(message: &[u8]) -> Option<&str> {
    const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    if message.len() < 20 || message[0..2] != BINDING_REQUEST || message[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([message[2], message[3]]));
    let mut attributes = message.get(20..20 + length)?;
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

/// `TokioRuntime`, except that the sockets and listeners it wraps are views of the shared ones.
#[derive(Debug)]
struct PeerRuntime {
    port: Arc<SharedPort>,
    peer: PeerId,
}

impl PeerRuntime {
    /// Adds an inbox for `local` to the peer's routes.
    fn add_inbox<T>(
        &self,
        local: SocketAddr,
        inboxes: impl FnOnce(&mut PeerRoutes) -> &mut Vec<(IpAddr, mpsc::Sender<T>)>,
        capacity: usize,
    ) -> io::Result<mpsc::Receiver<T>> {
        let (inbox, received) = mpsc::channel(capacity);
        let mut routes = self.port.routes.lock().expect("routes lock");
        let peer = routes.peers.get_mut(&self.peer).ok_or_else(|| io::Error::other("the peer already left"))?;
        inboxes(peer).push((local.ip(), inbox));
        Ok(received)
    }
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
        let received = self.add_inbox(local, |peer| &mut peer.datagrams, udp::INBOX)?;
        Ok(Arc::new(udp::PeerSocket::new(self.port.clone(), self.peer, local, received)))
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        let local = listener.local_addr()?;
        drop(listener);
        let received = self.add_inbox(local, |peer| &mut peer.connections, tcp::INBOX)?;
        Ok(Arc::new(tcp::PeerListener::new(local, received)))
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
        "livegate-shared-port"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with USERNAME `user` after a PRIORITY attribute.
    pub(super) fn binding_request(user: &str) -> Vec<u8> {
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
}
